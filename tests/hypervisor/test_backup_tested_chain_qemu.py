"""kvm-backup test-restore of a kvm-backup/2 chain on real libvirtd + QEMU (TCG): the tiny Linux guest
(qemu-ga, writing its disk) backed up live through the backup API, a full then an inc; test-restore of
the inc rebuilds the chain, boots it (the agent answers), records INC.tested.json, and
check-kvm-backup-age --require-tested is OK; then a flipped byte in the full (the inc's parent) makes
test-restore of the inc refuse, naming the full. Domains spk-q7-tr-*, the copies ktr-spk-q7-t-*."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from pathlib import Path

import libvirt

from tests.conftest import run
from tests.hypervisor.conftest import api_backup, no_copies_left_fixture, own_fixtures, restore_copies
from tests.rig import rig

PREFIX = "spk-q7-tr-"
COPIES = "ktr-spk-q7-t-"  # testrestore.temp_name of a spk-q7-tr-* domain
URI = ["-u", rig.URI]
conn, images = own_fixtures(PREFIX)


no_copies_left = no_copies_left_fixture(COPIES)
create = api_backup


def test_restore(archive: str, images: Path, kernel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("kvm-backup", "test-restore", archive, "--work-dir", str(images / "work"), "--state-dir",
               str(images / "state"), "--allow-readonly", str(kernel.parent), "--json", *args, *URI, timeout=400)


test_restore.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def test_restore_of_an_inc_rebuilds_the_chain_and_a_bad_parent_is_named(conn: libvirt.virConnect, images: Path,
                                                                      no_copies_left: None) -> None:
    kernel, initrd = rig.ensure_guest()
    image = rig.make_qcow2(images / "chain.qcow2", "64M")
    log = images / "chain.log"
    name = f"{PREFIX}chain"
    dom = conn.defineXML(rig.linux_guest_xml(name, image, kernel, initrd, "agent,write", log, agent_channel=True))
    dom.create()
    dest, state = images / "dest", images / "state"
    dest.mkdir()
    rig.wait_serial(log, "SPK-WRITE-START", timeout=120)
    full = create(dom, dest, state, "--level", "full")
    assert full["level"] == "full"
    written = log.read_text(errors="replace").count("SPK-WRITE ")
    rig.wait_for(lambda: log.read_text(errors="replace").count("SPK-WRITE ") >= written + 2, timeout=120,
                 what="32 MiB more written by the guest")
    inc = create(dom, dest, state, "--level", "inc")
    assert inc["level"] == "inc" and inc["parent"] == Path(full["archive"]).name, inc
    assert inc["disks"]["vda"]["data"] > 0
    dom.destroy()  # stays defined (check-kvm-backup-age judges it); its copies boot alone

    started = time.monotonic()
    result = test_restore(inc["archive"], images, kernel)
    seconds = time.monotonic() - started
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["result"] == "passed" and out["sign"] == "agent", out
    assert out["archive"] == Path(inc["archive"]).name
    print(f"\ntest-restore of the inc (full + inc rebuilt, booted, agent ping): {seconds:.1f}s; {out['message']}")
    saved = json.loads(Path(inc["archive"] + ".tested.json").read_text())
    assert saved == out and len(saved["sha256"]) == 64 and saved["sha256"] == inc["sha256"]
    assert restore_copies(conn, COPIES) == [] and not any((images / "work").iterdir())
    check = run("check-kvm-backup-age", "--backup-dir", str(dest), "--state-dir", str(state), "-d", name,
                "--require-tested", "1d", *URI)
    assert check.returncode == 0, (check.stdout, check.stderr)
    assert "last test restore passed" in check.stdout and f"{name}_tested_age=" in check.stdout, check.stdout

    with tarfile.open(full["archive"]) as tar:
        member = tar.getmember("disks/vda.img")
    assert member.size > 4096
    with open(full["archive"], "r+b") as f:
        f.seek(member.offset_data + 1000)
        byte = f.read(1)
        f.seek(member.offset_data + 1000)
        f.write(bytes([byte[0] ^ 0x01]))
    defined = sorted(d.name() for d in conn.listAllDomains(0))
    started = time.monotonic()
    result = test_restore(inc["archive"], images, kernel)
    assert result.returncode == 2, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    print(f"test-restore of the inc over a damaged full: {time.monotonic() - started:.1f}s; {out['message']}")
    assert out["result"] == "refused" and out["message"].startswith("verify:"), out
    assert Path(full["archive"]).name in out["message"], out
    assert json.loads(Path(inc["archive"] + ".tested.json").read_text())["result"] == "refused"
    assert sorted(d.name() for d in conn.listAllDomains(0)) == defined and restore_copies(conn, COPIES) == []
    assert not any((images / "work").iterdir())
    check = run("check-kvm-backup-age", "--backup-dir", str(dest), "--state-dir", str(state), "-d", name,
                "--require-tested", "1d", *URI)
    assert check.returncode == 1 and "the latest test restore refused" in check.stdout, check.stdout
