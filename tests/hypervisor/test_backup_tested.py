"""kvm-backup test-restore on real libvirtd + QEMU (TCG), with archives made here by `kvm-backup create` of
shut off guests (kvm-backup/1): a good archive passes (agent ping) and check-kvm-backup-age --require-tested
is OK; a flipped byte in the image member is refused by verify with nothing defined; a guest that cannot
boot (SeaBIOS before an empty disk: its agent never answers) fails; a test-restore killed with SIGKILL
leaves its copy, which `kvm-backup recover` removes. Domains are spk-tr-*, the copies ktr-spk-tr-*."""

from __future__ import annotations

import json
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import libvirt
import pytest

from tests.conftest import BIN, run
from tests.hypervisor.conftest import no_copies_left_fixture, own_fixtures, restore_copies
from tests.rig import rig

PREFIX = "spk-tr-"
COPIES = "ktr-spk-tr-"  # testrestore.temp_name of a spk-tr-* domain
URI = ["-u", rig.URI]

conn, images = own_fixtures(PREFIX)


def copies(conn: libvirt.virConnect) -> list[str]:
    return restore_copies(conn, COPIES)


no_copies_left = no_copies_left_fixture(COPIES)  # they are not named spk-tr-*


@pytest.fixture(scope="module")
def archives(conn: libvirt.virConnect, images: Path, guest: tuple[Path, Path],
             no_copies_left: None) -> dict[str, Path]:
    """Uncompressed archives of a tiny Linux guest with a guest agent, and of a no-OS guest with an
    agent channel and an empty disk; both backed up shut off."""
    kernel, initrd = guest
    made = {}
    for role in ("good", "noboot"):
        name = f"{PREFIX}{role}"
        disk = rig.make_qcow2(images / f"{name}.qcow2")
        if role == "good":
            xml = rig.linux_guest_xml(name, disk, kernel, initrd, "agent", images / f"{name}.log", agent_channel=True)
        else:
            xml = rig.noos_domain_xml(name, disk).replace(
                "<controller type='usb'", "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
                "</channel><controller type='usb'")
        conn.defineXML(xml)
        dest = images / f"bk-{role}"
        dest.mkdir()
        result = run("kvm-backup", "create", name, "--dest", str(dest), "--compress", "none", "--json",
                     "--state-dir", str(images / "state"), *URI, timeout=300)
        assert result.returncode == 0, result.stderr
        made[role] = Path(json.loads(result.stdout)["backups"][0]["archive"])
    return made


def test_restore(archive: Path, images: Path, guest: tuple[Path, Path], *args: str,
                 timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return run("kvm-backup", "test-restore", str(archive), "--work-dir", str(images / "work"),
               "--state-dir", str(images / "state"), "--allow-readonly", str(guest[0].parent), "--json", *args, *URI,
               timeout=timeout)


test_restore.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def record(archive: Path) -> dict:
    return json.loads(Path(str(archive) + ".tested.json").read_text())


def work_files(images: Path) -> list[str]:
    work = images / "work"
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


def test_good_archive_passes(conn, images, guest, archives):
    started = time.monotonic()
    result = test_restore(archives["good"], images, guest)
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["result"] == "passed" and out["sign"] == "agent", out
    assert "guest agent answered guest-ping" in out["message"]
    saved = record(archives["good"])
    assert saved == out and saved["archive"] == archives["good"].name and len(saved["sha256"]) == 64
    assert saved["seconds"] <= time.monotonic() - started
    assert copies(conn) == [] and work_files(images) == []
    assert list((images / "state" / "test-restore").iterdir()) == []
    check = run("check-kvm-backup-age", "--backup-dir", str(archives["good"].parent), "--state-dir",
                str(images / "state"), "-d", f"{PREFIX}good", "--require-tested", "1d", *URI)
    assert check.returncode == 0, check.stdout
    assert "last test restore passed" in check.stdout and f"{PREFIX}good_tested_age=" in check.stdout
    listing = run("kvm-backup", "list", str(archives["good"].parent))
    assert listing.returncode == 0 and "passed (agent)" in listing.stdout, listing.stdout


def test_flipped_byte_is_refused(conn, images, guest, archives):
    bad_dir = images / "bk-bad"
    bad_dir.mkdir()
    bad = bad_dir / archives["good"].name
    data = bytearray(archives["good"].read_bytes())
    with tarfile.open(archives["good"]) as tar:
        member = tar.getmember("disks/vda.img")
    data[member.offset_data + 1000] ^= 0x01
    bad.write_bytes(bytes(data))
    defined_before = sorted(d.name() for d in conn.listAllDomains(0))
    result = test_restore(bad, images, guest)
    assert result.returncode == 2, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["result"] == "refused" and out["message"].startswith("verify:"), out
    assert "sha256" in out["message"] or "checksum" in out["message"], out
    assert record(bad)["result"] == "refused"
    assert sorted(d.name() for d in conn.listAllDomains(0)) == defined_before
    assert work_files(images) == []
    check = run("check-kvm-backup-age", "--backup-dir", str(bad_dir), "--state-dir", str(images / "state"),
                "-d", f"{PREFIX}good", "--require-tested", "1d", *URI)
    assert check.returncode == 1 and "the latest test restore refused" in check.stdout, check.stdout


def test_guest_that_does_not_boot_fails(conn, images, guest, archives):
    result = test_restore(archives["noboot"], images, guest, "--boot-timeout", "15")
    assert result.returncode == 1, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["result"] == "failed" and out["sign"] == "agent", out
    assert out["message"] == "the guest agent did not answer guest-ping within 15s", out
    assert copies(conn) == [] and work_files(images) == []


def test_killed_run_is_cleaned_by_recover(conn, images, guest, archives):
    argv = [str(BIN / "kvm-backup"), "test-restore", str(archives["good"]), "--work-dir", str(images / "work"),
            "--state-dir", str(images / "state"), "--allow-readonly", str(guest[0].parent), "--sign", "disk",
            "--alive", "300", *URI]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def running_copy() -> str:
            for name in copies(conn):
                if conn.lookupByName(name).isActive():
                    return name
            return ""

        name = rig.wait_for(running_copy, timeout=120, what="the test copy to run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert copies(conn) == [name]
    assert any(f.startswith(name + "-") for f in work_files(images))
    assert (images / "state" / "test-restore" / f"{name}.json").exists()
    result = run("kvm-backup", "recover", "--all", "--state-dir", str(images / "state"), *URI, timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "removed what a killed test-restore left" in result.stdout and name in result.stdout
    assert copies(conn) == [] and work_files(images) == []
    assert list((images / "state" / "test-restore").iterdir()) == []


def test_console_and_disk_signs(conn, images, guest, archives):
    result = test_restore(archives["good"], images, guest, "--sign", "console", "--console-regex", rig.READY_MARKER)
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["sign"] == "console" and f"matched '{rig.READY_MARKER}'" in out["message"], out
    result = test_restore(archives["good"], images, guest, "--sign", "disk", "--alive", "3")
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["sign"] == "disk" and out["message"] == "ran 3s with vda readable", out
    assert copies(conn) == [] and work_files(images) == []
