"""kvm-backup against real libvirtd + QEMU (TCG), through the installed command: live backups of the tiny
Linux guest while it writes, restored beside the original and compared with the base image as it was at
the snapshot; stop and suspend; two disks and a CD-ROM; kill -9 in the copy and in the commit; a full
destination; a flipped byte; a remote destination on a terminal; bad input. The live tests of the overlay
engine's mechanics say --engine overlay; progress, SIGTERM and quiesce run under the default engine (auto:
the backup API on the rig). Domains are spk-bak-*."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from tests.conftest import BIN, refuses, run, succeeds
from tests.hypervisor.conftest import own_fixtures
from tests.hypervisor.test_backup_chain_kill import left_over
from tests.rig import rig

PREFIX = "spk-bak-"
URI = ["-u", rig.URI]
OVERLAY = ("--engine", "overlay")  # the tests of the overlay engine's mechanics (the default is auto: api here)


def kb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run("kvm-backup", *args, timeout=timeout)


def ok(*args: str) -> str:
    return succeeds("kvm-backup", *args)


def refused(code: int, *args: str) -> str:
    return refuses("kvm-backup", code, *args)


def started(*args: str) -> subprocess.Popen[str]:
    """kvm-backup running in the background (to be killed, signalled or raced by the test)."""
    return subprocess.Popen([str(BIN / "kvm-backup"), *args, *URI], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def sources(dom: libvirt.virDomain, flags: int = 0) -> dict[str, str]:
    root = ET.fromstring(dom.XMLDesc(flags))
    found = {}
    for disk in root.iterfind("devices/disk"):
        src, target = disk.find("source"), disk.find("target")
        if src is not None and target is not None and src.get("file"):
            found[target.get("dev", "")] = src.get("file", "")
    return found


def archives(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".tar.zst", ".tar.bz2", ".tar"))
                  and not p.name.startswith("."))


def compare(a: Path, b: Path) -> None:
    result = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, (a, b, result.stdout, result.stderr)


conn, images = own_fixtures(PREFIX)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "dest"
    folder.mkdir()
    return folder


@pytest.fixture
def state(tmp_path: Path) -> list[str]:
    return ["--state-dir", str(tmp_path / "state")]


@pytest.fixture(scope="module")
def writer(conn: libvirt.virConnect, images: Path) -> libvirt.virDomain:
    """The tiny Linux guest writing its 48 MiB disk over and over."""
    kernel, initrd = rig.ensure_guest()
    disk = rig.make_qcow2(images / "spk-bak-writer.qcow2", "48M")
    log = images / "writer.log"
    dom = conn.defineXML(rig.linux_guest_xml("spk-bak-writer", disk, kernel, initrd, "write", log))
    dom.create()
    rig.wait_serial(log, "SPK-WRITE 32", timeout=120)  # written once: the image has data
    return dom


def noos(conn: libvirt.virConnect, images: Path, name: str, fill_mib: int = 8, start: bool = True) -> libvirt.virDomain:
    disk = rig.make_qcow2(images / f"{name}.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {fill_mib}M", str(disk)], check=True,
                   capture_output=True)
    dom = conn.defineXML(rig.noos_domain_xml(name, disk))
    if start:
        dom.create()
    return dom


def journal_phase(state_dir: Path) -> str:
    for path in state_dir.glob("*.journal.json"):
        try:
            return json.loads(path.read_text()).get("phase", "")
        except ValueError:
            return ""
    return ""


def test_live_backup_of_a_writing_guest_restores_the_snapshot_image(conn, images, writer, dest, state, tmp_path):
    base = Path(sources(writer)["vda"])
    frozen = tmp_path / "base-at-snapshot.qcow2"
    proc = started("create", "spk-bak-writer", "--dest", str(dest), "--bwlimit", "8", "--json", *OVERLAY, *state)
    # while the guest writes to the overlay, the base is read-only: copy it as it is at the snapshot
    rig.wait_for(lambda: sources(writer)["vda"] != str(base), timeout=30, interval=0.02, what="the overlay")
    subprocess.run(["cp", "--sparse=always", str(base), str(frozen)], check=True)
    assert sources(writer)["vda"] != str(base), "the copy of the base outlasted the backup: raise the bwlimit margin"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, err)
    summary = json.loads(out)["backups"][0]
    assert summary["mode"] == "live" and summary["consistency"] == "crash-consistent (no guest agent answered)"
    # the guest is back on its own image, still running, no overlay left
    assert sources(writer) == {"vda": str(base)}
    assert sources(writer, libvirt.VIR_DOMAIN_XML_INACTIVE) == {"vda": str(base)}
    assert writer.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert not [p for p in base.parent.iterdir() if "kvm-backup-overlay" in p.name]
    archive = Path(summary["archive"])
    assert archives(dest) == [archive]
    assert archive.stat().st_mode & 0o777 == 0o600
    assert "OK" in ok("verify", str(archive))
    listing = ok("list", str(dest))
    assert "spk-bak-writer" in listing and "live" in listing and "crash-consistent" in listing

    # restore beside the original: new name, UUID, images; equal to the base at the snapshot
    out = ok("restore", str(archive), "--name", "spk-bak-writer-copy", *URI)
    copy = conn.lookupByName("spk-bak-writer-copy")
    assert copy.UUIDString() != writer.UUIDString()
    restored = Path(sources(copy)["vda"])
    assert restored != base and restored.parent == base.parent
    compare(restored, frozen)
    assert restored.stat().st_blocks * 512 <= frozen.stat().st_blocks * 512 + (1 << 20)  # holes stayed holes
    # once more without --force: refused, nothing changed
    line = refused(2, "restore", str(archive), "--name", "spk-bak-writer-copy", *URI)
    assert "exists already" in line
    copy.undefine()
    restored.unlink()


def test_stop_and_suspend_modes(conn, images, dest, state):
    dom = noos(conn, images, "spk-bak-modes")
    # SeaBIOS without an OS ignores ACPI shutdown: refused without --force, still running, marked failed
    line = refused(1, "create", "spk-bak-modes", "--mode", "stop", "--shutdown-timeout", "1", "--dest", str(dest),
                   *state, *URI)
    assert "did not shut down within 1s" in line and "--force" in line
    assert dom.isActive() and archives(dest) == []
    age = run("check-kvm-backup-age", "--backup-dir", str(dest), "-d", "spk-bak-modes", *URI)
    assert age.returncode == 2 and "no backup" in age.stdout and "did not shut down" in age.stdout

    out = json.loads(ok("create", "spk-bak-modes", "--mode", "stop", "--force", "--shutdown-timeout", "1", "--dest",
                        str(dest), "--json", *state, *URI))
    # destroyed after the timeout: crash-consistent, never "shut down", in the summary, the manifest and list
    forced = "crash-consistent (forced off after 1s)"
    assert out["backups"][0]["mode"] == "stop" and out["backups"][0]["consistency"] == forced
    manifest = json.loads(subprocess.run(["tar", "-xOf", out["backups"][0]["archive"], "manifest.json"],
                                         capture_output=True, text=True, check=True).stdout)
    assert manifest["header"]["consistency"] == forced
    listed = json.loads(ok("list", str(dest), "--json"))
    assert [r["consistency"] for r in listed["backups"]] == [forced], listed
    assert forced in ok("list", str(dest))
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # started again
    out = json.loads(ok("create", "spk-bak-modes", "--mode", "suspend", "--compress", "bzip2", "--dest", str(dest),
                        "--json", *state, *URI))
    assert out["backups"][0]["mode"] == "suspend" and out["backups"][0]["archive"].endswith(".tar.bz2")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # resumed
    dom.destroy()
    out = json.loads(ok("create", "spk-bak-modes", "--dest", str(dest), "--compress", "none", "--json", *state, *URI))
    assert out["backups"][0]["mode"] == "offline" and not dom.isActive()
    assert len(archives(dest)) == 3
    for archive in archives(dest):
        ok("verify", str(archive))
    age = run("check-kvm-backup-age", "--backup-dir", str(dest), "-d", "spk-bak-modes", *URI)
    assert age.returncode == 0, age.stdout
    assert "'spk-bak-modes_age'=" in age.stdout or "spk-bak-modes_age=" in age.stdout


def test_two_disks_raw_and_qcow2_and_a_cdrom(conn, images, dest, state):
    qcow = rig.make_qcow2(images / "spk-bak-two-a.qcow2", "32M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 3M", str(qcow)], check=True, capture_output=True)
    raw = images / "spk-bak-two-b.img"
    with raw.open("wb") as f:
        f.truncate(32 << 20)
        f.seek(20 << 20)
        f.write(b"\x22" * (2 << 20))
    iso = images / "spk-bak-two.iso"
    iso.write_bytes(b"\x33" * (1 << 20))
    xml = rig.noos_domain_xml("spk-bak-two", qcow).replace(
        "</devices>",
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{raw}'/>"
        "<target dev='vdb' bus='virtio'/></disk>"
        f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{iso}'/>"
        "<target dev='sda' bus='sata'/><readonly/></disk></devices>")
    dom = conn.defineXML(xml)
    dom.create()
    out = ok("create", "spk-bak-two", "--dest", str(dest), *OVERLAY, *state, *URI)
    assert "sda not copied (a cdrom)" in out
    assert sources(dom) == {"vda": str(qcow), "vdb": str(raw), "sda": str(iso)}
    archive = archives(dest)[0]
    target = images / "restored-two"
    target.mkdir()
    ok("restore", str(archive), "--name", "spk-bak-two-copy", "--image-dir", str(target), *URI)
    copy = conn.lookupByName("spk-bak-two-copy")
    got = sources(copy)
    assert got["sda"] == str(iso)  # recorded, not copied: the drive keeps its medium
    compare(Path(got["vda"]), qcow)
    compare(Path(got["vdb"]), raw)
    assert Path(got["vdb"]).stat().st_blocks * 512 <= 3 << 20  # 2 MiB of data in a 32 MiB raw image
    dom.destroy()


def _kill_when(proc: subprocess.Popen, state_dir: Path, phase: str, timeout: float = 60) -> None:
    rig.wait_for(lambda: journal_phase(state_dir) == phase or proc.poll() is not None, timeout=timeout,
                 interval=0.02, what=f"phase {phase}")
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_in_the_copy_then_the_next_run_recovers(conn, images, dest, tmp_path):
    dom = noos(conn, images, "spk-bak-kill", fill_mib=24)
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    proc = started("create", "spk-bak-kill", "--dest", str(dest), "--bwlimit", "4", "--state-dir", str(state_dir),
                   *OVERLAY)
    _kill_when(proc, state_dir, "copy")
    time.sleep(0.5)
    assert sources(dom)["vda"] != base  # killed on the overlay
    assert archives(dest) == []  # nothing published
    out = ok("recover", "spk-bak-kill", "--state-dir", str(state_dir), *URI)
    assert "committed back" in out and "unfinished archive" in out
    assert sources(dom) == {"vda": base}
    assert os.listdir(dest) == []
    assert not [p for p in Path(base).parent.iterdir() if "kvm-backup-overlay" in p.name and "kill" in p.name]
    ok("create", "spk-bak-kill", "--dest", str(dest), "--state-dir", str(state_dir), *OVERLAY, *URI)
    assert len(archives(dest)) == 1 and sources(dom) == {"vda": base}


def test_kill_9_in_the_commit_then_the_next_run_recovers(conn, images, writer, dest, tmp_path):
    base = sources(writer)["vda"]
    state_dir = tmp_path / "state"
    # a commit limited to 1 MiB/s while the guest writes faster never gets ready: kill -9 it there
    proc = started("create", "spk-bak-writer", "--dest", str(dest), "--commit-bwlimit", "1",
                   "--state-dir", str(state_dir), *OVERLAY)
    _kill_when(proc, state_dir, "commit")
    time.sleep(0.3)
    assert sources(writer)["vda"] != base
    assert archives(dest) == []
    result = kb("create", "spk-bak-writer", "--dest", str(dest), "--state-dir", str(state_dir), *OVERLAY, *URI)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "committed back" in result.stderr and "unfinished archive" in result.stderr
    assert sources(writer) == {"vda": base}
    assert len(archives(dest)) == 1
    assert not [p for p in Path(base).parent.iterdir() if "kvm-backup-overlay" in p.name]


def test_a_destination_that_fills_up(conn, images, tmp_path, state):
    dom = noos(conn, images, "spk-bak-full", fill_mib=40)
    base = sources(dom)["vda"]
    # random data does not compress: 40 MiB of it into an 8 MiB file system
    subprocess.run(["qemu-io", "-U", "-f", "qcow2", "-c", "write -s /dev/urandom 0 1M", base], capture_output=True)
    small = tmp_path / "small"
    with rig.small_fs(small, 8):
        line = refused(1, "create", "spk-bak-full", "--dest", str(small), *OVERLAY, *state, *URI)
        assert "not enough free space" in line
        assert os.listdir(small) == [".kvm-backup-failed.spk-bak-full.json"]
        assert sources(dom) == {"vda": base}
    # room enough at the start, filled by someone else in the middle of the copy
    state_dir = tmp_path / "state2"
    with rig.small_fs(tmp_path / "small2", 64) as small2:
        proc = started("create", "spk-bak-full", "--dest", str(small2), "--bwlimit", "8", "--compress", "none",
                       "--state-dir", str(state_dir), *OVERLAY)
        rig.wait_for(lambda: journal_phase(state_dir) == "copy", timeout=60, interval=0.02, what="the copy")
        # The backup is held, once its partial archive holds 1 MiB, while the filler takes all the
        # room; it meets the full file system after the filler is done. Met while dd still ran, the
        # space its partial archive freed went to dd, and then not even the failure marker fitted (a
        # whole make test saw it); the space the partial frees is where the marker goes.
        rig.wait_for(lambda: any(p.name.endswith(".partial") and p.stat().st_size >= 2**20 for p in small2.iterdir()),
                     timeout=60, interval=0.02, what="1 MiB of the partial archive")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            subprocess.run(["dd", "if=/dev/zero", f"of={small2}/filler", "bs=1M", "count=64"], capture_output=True)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert len(err.strip().splitlines()) == 1 and "No space left on device" in err
        assert sorted(os.listdir(small2)) == [".kvm-backup-failed.spk-bak-full.json", "filler"]
        assert sources(dom) == {"vda": base}
    dom.destroy()


def test_flipped_byte_and_foreign_archives_are_refused(conn, images, dest, state, tmp_path):
    noos(conn, images, "spk-bak-flip", start=False)
    ok("create", "spk-bak-flip", "--dest", str(dest), "--compress", "none", *state, *URI)
    archive = archives(dest)[0]
    data = bytearray(archive.read_bytes())
    at = data.index(b"\x5a" * 64) + 100  # inside the image data
    data[at] ^= 0x01
    bad = tmp_path / archive.name
    bad.write_bytes(bytes(data))
    line = refused(1, "verify", str(bad))
    assert "disks/vda.img does not match its checksum" in line
    image_dir = tmp_path / "restore"
    image_dir.mkdir()
    line = refused(1, "restore", str(bad), "--name", "spk-bak-flip-copy", "--image-dir", str(image_dir), *URI)
    assert "does not match its checksum" in line
    assert os.listdir(image_dir) == []
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("spk-bak-flip-copy")
    # a compressed archive with a flipped byte
    ok("create", "spk-bak-flip", "--dest", str(dest), *state, *URI)
    zst = next(a for a in archives(dest) if a.name.endswith(".zst"))
    data = bytearray(zst.read_bytes())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / zst.name
    bad.write_bytes(bytes(data))
    refused(1, "verify", str(bad))
    # a foreign archive and a truncated one
    foreign = tmp_path / "foreign.tar"
    subprocess.run(["tar", "cf", str(foreign), "-C", str(images), "spk-bak-flip.qcow2"], check=True)
    assert "not a kvm-backup archive" in refused(1, "verify", str(foreign))
    assert "not a kvm-backup archive" in refused(1, "restore", str(foreign), *URI)
    cut = tmp_path / "cut.kvmbak.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "truncated" in refused(1, "verify", str(cut))


def test_bad_input_changes_nothing(conn, images, dest, state, tmp_path):
    line = refused(2, "create", "spk-bak-nosuch", "--dest", str(dest), *state, *URI)
    assert "no domain named 'spk-bak-nosuch'" in line
    noos(conn, images, "spk-bak-input", start=False)
    line = refused(2, "create", "spk-bak-input", "--dest", str(tmp_path / "missing"), *state, *URI)
    assert "does not exist" in line
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    result = run("kvm-backup", "create", "spk-bak-input", "--dest", str(locked), *state, *URI, user="nobody")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    line = refused(2, "create", "--dest", str(dest), *state, *URI)
    assert "DOMAIN" in line
    assert os.listdir(dest) == []
    line = refused(2, "verify", str(tmp_path / "nothing.tar.zst"))
    assert "cannot read" in line


def on_a_terminal(*args: str) -> tuple[int, str, str]:
    """kvm-backup with stderr on a pseudo-terminal (stdout a pipe): exit code, stdout, what the terminal got."""
    import pty  # noqa: PLC0415

    master, slave = pty.openpty()
    proc = subprocess.Popen([str(BIN / "kvm-backup"), *args], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read() if proc.stdout else ""
    os.close(master)
    return proc.wait(timeout=120), out, seen.decode(errors="replace")


def test_progress_on_a_terminal_status_on_stdout(conn, images, tmp_path, state):
    sshd, rsh = rig.start_sshd(tmp_path / "ssh")
    try:
        remote = tmp_path / "remote"
        remote.mkdir()
        noos(conn, images, "spk-bak-tty", fill_mib=16)
        code, out, terminal = on_a_terminal("create", "spk-bak-tty", "--dest", f"root@127.0.0.1:{remote}",
                                            "--rsh", rsh, *state, *URI)
        assert code == 0, terminal
        assert re.search(r"spk-bak-tty vda: [\d,]+ of [\d,]+ MiB, [\d.,]+ MiB/s, ETA \d+s", terminal), terminal
        assert out.startswith("spk-bak-tty: root@127.0.0.1:") and out.count("\n") == 1, out  # status only
        assert ", live, api, full, " in out, out
        # not on a terminal (cron): nothing on stderr
        result = kb("create", "spk-bak-tty", "--dest", f"root@127.0.0.1:{remote}", "--rsh", rsh, *state, *URI)
        assert result.returncode == 0 and result.stderr == "", result.stderr
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def test_sigterm_in_the_copy_undoes_everything(conn, images, dest, tmp_path):
    dom = noos(conn, images, "spk-bak-term", fill_mib=24)
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    proc = started("create", "spk-bak-term", "--dest", str(dest), "--bwlimit", "4", "--state-dir", str(state_dir))
    rig.wait_for(lambda: journal_phase(state_dir) == "copy", timeout=60, interval=0.02, what="the copy")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted by SIGTERM" in err and "back on its own images" in err
    assert sources(dom) == {"vda": base}
    assert os.listdir(dest) == [".kvm-backup-failed.spk-bak-term.json"]
    assert list(state_dir.glob("*.journal.json")) == []
    # the default engine here is api: its job ended, its scratch file and checkpoint gone
    assert left_over(dom, images, dest) == []
    assert [c.getName() for c in dom.listAllCheckpoints()] == []
    age = run("check-kvm-backup-age", "--backup-dir", str(dest), "-d", "spk-bak-term", *URI)
    assert age.returncode == 2 and "SIGTERM" in age.stdout
    dom.destroy()


def test_live_backup_is_quiesced_when_the_agent_answers(conn, images, dest, state):
    kernel, initrd = rig.ensure_guest()
    disk = rig.make_qcow2(images / "spk-bak-agent.qcow2", "32M")
    log = images / "agent.log"
    dom = conn.defineXML(rig.linux_guest_xml("spk-bak-agent", disk, kernel, initrd, "agent", log, agent_channel=True))
    dom.create()
    import libvirt_qemu  # type: ignore[import-untyped]  # noqa: PLC0415

    def pong() -> bool:
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 2, 0)
            return True
        except libvirt.libvirtError:
            return False

    rig.wait_for(pong, timeout=90, interval=0.5, what="the guest agent")
    out = json.loads(ok("create", "spk-bak-agent", "--dest", str(dest), "--json", *state, *URI))
    assert out["backups"][0]["consistency"] == "quiesced" and out["backups"][0]["engine"] == "api"
    out = json.loads(ok("create", "spk-bak-agent", "--dest", str(dest), "--no-quiesce", "--json", *state, *URI))
    assert out["backups"][0]["consistency"] == "crash-consistent (--no-quiesce)"
    assert "quiesced" in ok("list", str(dest))
    dom.destroy()


def test_kill_9_then_the_guest_shut_down_on_the_overlay(conn, images, dest, tmp_path):
    dom = noos(conn, images, "spk-bak-off", fill_mib=24)
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    proc = started("create", "spk-bak-off", "--dest", str(dest), "--bwlimit", "4", "--state-dir", str(state_dir),
                   *OVERLAY)
    _kill_when(proc, state_dir, "copy")
    overlay = sources(dom)["vda"]
    assert overlay != base
    dom.destroy()  # the guest stopped while it ran on the overlay: its definition points at the overlay
    out = ok("recover", "spk-bak-off", "--state-dir", str(state_dir), *URI)
    assert "(shut off) committed back" in out
    assert sources(dom) == {"vda": base}
    assert not Path(overlay).exists()
    assert 'type="qcow2"' in dom.XMLDesc(0) or "type='qcow2'" in dom.XMLDesc(0)
    dom.create()
    assert sources(dom) == {"vda": base}
    dom.destroy()


def test_kill_9_in_stop_mode_then_recover_starts_the_guest(conn, images, dest, tmp_path):
    dom = noos(conn, images, "spk-bak-stopkill", fill_mib=24)
    state_dir = tmp_path / "state"
    proc = started("create", "spk-bak-stopkill", "--mode", "stop", "--force", "--shutdown-timeout", "1",
                   "--dest", str(dest), "--bwlimit", "4", "--state-dir", str(state_dir))
    _kill_when(proc, state_dir, "copy")
    assert not dom.isActive()
    out = ok("recover", "spk-bak-stopkill", "--state-dir", str(state_dir), *URI)
    assert "spk-bak-stopkill: started again" in out
    assert dom.isActive() and os.listdir(dest) == []
    dom.destroy()
