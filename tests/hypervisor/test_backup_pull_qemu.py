"""libvirt's backup API in pull mode, driven through virt.backupjobs and virt.nbd directly (no CLI
yet): a full with a checkpoint, an incremental from it, the end of a job, a job left by a killed run,
and a scratch file whose file system fills up. Real QEMU (TCG) on qemu:///system, a no-OS guest
whose disk is written from outside with HMP ``qemu-io`` (through the block layer, so the bitmaps
see it; complete when the command returns), so every point in time is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]
import pytest

from sensu_kvm.virt import backupjobs, nbd
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-nbd-"
MiB = 1 << 20
conn, images = own_fixtures(PREFIX)


def hmp(dom: libvirt.virDomain, command: str) -> str:
    return str(libvirt_qemu.qemuMonitorCommand(dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))


def qdev(dom: libvirt.virDomain) -> str:
    """vda's qdev path: QEMU 7.2's HMP qemu-io takes it with -d (not 'virtio-disk0', which has no
    block backend of its own)."""
    blocks = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute":"query-block"}', 0))["return"]
    return str(blocks[0]["qdev"])


def qemu_io(dom: libvirt.virDomain, op: str) -> str:
    """Run one qemu-io command on vda. HMP answers only a bad command or device; a failed I/O is
    printed on QEMU's stdout, which is the domain's log file."""
    return hmp(dom, f'qemu-io -d {qdev(dom)} "{op}"')


def write(dom: libvirt.virDomain, op: str) -> None:
    out = qemu_io(dom, op)
    assert out.strip() == "", out


def qemu_log(dom: libvirt.virDomain) -> str:
    return Path(f"/var/log/libvirt/qemu/{dom.name()}.log").read_text(errors="replace")


def reference(dom: libvirt.virDomain, image: Path, out: Path) -> bytes:
    """The guest-visible content of the live image now (flushed first: QEMU caches qcow2 metadata,
    and ``qemu-img -U`` of an unflushed image reads zeros where the guest wrote)."""
    write(dom, "flush")
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(image), str(out)], check=True)
    return out.read_bytes()


def copy_whole(export: nbd.Export, out: Path, data: list[tuple[int, int]] | None = None) -> bytes:
    """A raw file of the export's size holding the ``data`` ranges read over NBD (default: every
    data extent) and holes elsewhere; its bytes."""
    with out.open("wb") as f:
        f.truncate(export.size)
        export.copy(export.extents()[0] if data is None else data, f.fileno())
    return out.read_bytes()


class Run:
    def __init__(self, dom: libvirt.virDomain, folder: Path, scratch_dir: Path) -> None:
        self.dom = dom
        self.socket = str(backupjobs.socket_dir(dom, folder / "sock") / "backup.nbd")
        self.scratch = {"vda": str(scratch_dir / "guest.kvm-backup-scratch-test.vda.qcow2")}

    def begin(self, checkpoint: str, since: str | None = None) -> None:
        backupjobs.begin(self.dom, backupjobs.backup_xml(self.socket, self.scratch, since),
                         backupjobs.checkpoint_xml(checkpoint, ["vda"]))

    def end(self) -> None:
        backupjobs.abort(self.dom)
        assert backupjobs.wait_no_job(self.dom, 30)

    def assert_gone(self) -> None:
        assert not backupjobs.running(self.dom)
        assert backupjobs.current_xml(self.dom) is None
        assert not any(Path(p).exists() for p in self.scratch.values())
        assert not Path(self.socket).exists()


@pytest.fixture(scope="module")
def guest(conn: libvirt.virConnect, images: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    image = rig.make_qcow2(images / "guest.qcow2", "64M")
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}guest", image))
    dom.create()
    yield dom, image
    rig.cleanup(conn, PREFIX)


@pytest.fixture(scope="module")
def guest_boot() -> tuple[Path, Path]:
    """The tiny Linux guest's kernel and initrd (built once, cached)."""
    return rig.ensure_guest()


def test_full_then_incremental(guest: tuple[libvirt.virDomain, Path], images: Path) -> None:
    dom, image = guest
    run = Run(dom, images, images)
    write(dom, "write -P 0x11 4M 8M")
    write(dom, "write -P 0x12 30M 1M")
    ref1 = reference(dom, image, images / "ref1.raw")

    # (a) full: the export is the whole virtual disk; its data extents are what was written
    run.begin("spk-cp1")
    assert Path(run.scratch["vda"]).exists()
    assert backupjobs.running(dom)
    with nbd.Export(run.socket, "vda") as export:
        assert export.size == 64 * MiB
        data, zeroed = export.extents()
        assert data == [(4 * MiB, 8 * MiB), (30 * MiB, 1 * MiB)]
        assert zeroed == []
        write(dom, "write -P 0x99 4M 1M")  # after the point in time: the export still shows the old data
        restored = images / "full.raw"
        assert copy_whole(export, restored, data) == ref1
    run.end()
    run.assert_gone()
    assert backupjobs.checkpoint_names(dom, "spk-") == ["spk-cp1"]

    # (b) incremental from spk-cp1: exactly what changed, at the bitmap's 64 KiB granularity
    write(dom, "write -P 0x22 4M 8M")
    write(dom, "write -P 0x23 40M 512")  # one sector: a whole 64 KiB granule is dirty
    write(dom, "write -z 30M 1M")         # written to zero: recorded as zeroed, not as a hole
    ref2 = reference(dom, image, images / "ref2.raw")
    run.begin("spk-cp2", since="spk-cp1")
    assert "incremental='spk-cp1'" in (backupjobs.current_xml(dom) or "")
    with nbd.Export(run.socket, "vda", bitmap="backup-vda") as export:
        data, zeroed = export.extents()
        assert data == [(4 * MiB, 8 * MiB), (40 * MiB, 64 * 1024)]
        assert zeroed == [(30 * MiB, 1 * MiB)]
        with restored.open("r+b") as f:
            export.copy(data, f.fileno())
            for start, length in zeroed:
                os.pwrite(f.fileno(), bytes(length), start)
    assert restored.read_bytes() == ref2
    run.end()
    run.assert_gone()
    assert backupjobs.checkpoint_names(dom, "spk-") == ["spk-cp1", "spk-cp2"]
    for name in ("spk-cp1", "spk-cp2"):
        backupjobs.delete_checkpoint(dom, name)
    assert backupjobs.checkpoint_names(dom, "spk-") == []


def test_leftover_job_is_found_and_ended(guest: tuple[libvirt.virDomain, Path], images: Path) -> None:
    """(c) a job a killed run left: another job's marks leave it alone, ours end it and its files."""
    dom, _ = guest
    run = Run(dom, images, images)
    assert backupjobs.abort_leftover(dom, [run.socket]) is None
    backupjobs.begin(dom, backupjobs.backup_xml(run.socket, run.scratch))
    assert Path(run.socket).exists()
    assert backupjobs.abort_leftover(dom, [str(images / "someone-else.nbd")]) is False
    assert backupjobs.running(dom)
    assert backupjobs.abort_leftover(dom, ["kvm-backup-scratch-test"]) is True
    run.assert_gone()


def test_scratch_full(conn: libvirt.virConnect, images: Path) -> None:
    """(d) the scratch's file system fills while the guest writes during a pull backup: QEMU 7.2's
    copy-before-write filter fails the guest's write with ENOSPC (on-cbw-error=break-guest-write;
    libvirt 9.0 does not change it), the guest sees the write fail; the domain keeps running,
    the job and the export stay, and the export still reads the data of the point in time. The file
    system is mounted before the domain starts: QEMU runs in its own mount namespace and does not
    see a mount made after its start ("Could not open ...: No such file or directory")."""
    image = rig.make_qcow2(images / "tiny.qcow2", "64M")
    with rig.small_fs(images / "tiny", 16) as tiny:
        dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}tiny", image))
        dom.create()
        try:
            write(dom, "write -P 0x31 0 40M")
            ref = reference(dom, image, images / "ref3.raw")
            run = Run(dom, images, tiny)
            run.begin("spk-cp3")
            write(dom, "write -P 0x32 0 40M")
            assert "write failed: No space left on device" in qemu_log(dom)
            stats = dom.jobStats(0)
            assert stats["disk_temp_used"] <= 16 * MiB < 40 * MiB
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert backupjobs.running(dom)
            write(dom, "flush")
            after = reference(dom, image, images / "live3.raw")
            assert after[:40 * MiB] != b"\x32" * (40 * MiB)  # the guest's write failed
            with nbd.Export(run.socket, "vda") as export:
                assert copy_whole(export, images / "tiny.raw") == ref
            run.end()
            run.assert_gone()
        finally:
            rig.cleanup(conn, f"{PREFIX}tiny")  # before the file system is unmounted


def test_scratch_full_pauses_a_writing_guest(conn: libvirt.virConnect, images: Path, guest_boot: tuple[Path, Path]) -> None:
    """(d) with the guest itself writing: the failed write takes the disk's error_policy, so a
    guest with error_policy='stop' pauses (I/O error) while the job and the export stay right;
    once the job ends (its scratch gone) the guest resumes and writes on."""
    kernel, initrd = guest_boot
    image = rig.make_qcow2(images / "writer.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 64M", str(image)], check=True, capture_output=True)
    log = images / "writer.log"
    with rig.small_fs(images / "tiny-w", 16) as tiny:
        dom = conn.defineXML(rig.linux_guest_xml(f"{PREFIX}writer", image, kernel, initrd, "write", log))
        dom.create()
        try:
            rig.wait_serial(log, "SPK-WRITE-START", timeout=60)
            run = Run(dom, images, tiny)
            dom.suspend()  # an exact point in time: the writer stands still while it is taken
            ref = reference(dom, image, images / "ref4.raw")
            run.begin("spk-cp4")
            dom.resume()
            rig.wait_for(lambda: dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR],
                         timeout=60, what="the writer paused by an I/O error")
            assert backupjobs.running(dom)
            assert dom.jobStats(0)["disk_temp_used"] <= 16 * MiB
            with nbd.Export(run.socket, "vda") as export:
                assert copy_whole(export, images / "writer.raw") == ref
            run.end()
            run.assert_gone()
            dom.resume()
            wraps = rig.serial_text(log).count("SPK-WRITE-WRAP")
            rig.wait_for(lambda: rig.serial_text(log).count("SPK-WRITE-WRAP") > wraps, timeout=60,
                         what="the writer writing on after the job")
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        finally:
            rig.cleanup(conn, f"{PREFIX}writer")


def test_backing_chain_and_external_snapshot(conn: libvirt.virConnect, images: Path) -> None:
    """A disk with a backing file is exported as the guest sees it (the chain's data), and a
    checkpoint survives an external snapshot libvirt makes on top (libvirt 9.0 carries the
    bitmaps into the new overlay): the incremental after it holds exactly the write made since."""
    base = rig.make_qcow2(images / "base.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x51 0 4M", str(base)], check=True, capture_output=True)
    top = images / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)], check=True)
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}chain", top))
    dom.create()
    try:
        run = Run(dom, images, images)
        write(dom, "write -P 0x52 8M 1M")
        ref = reference(dom, top, images / "ref5.raw")
        run.begin("spk-cp5")
        with nbd.Export(run.socket, "vda") as export:
            data, _ = export.extents()
            assert data == [(0, 4 * MiB), (8 * MiB, 1 * MiB)]
            restored = images / "chain.raw"
            assert copy_whole(export, restored, data) == ref
        run.end()
        run.assert_gone()

        snap = images / "top.snap1.qcow2"
        dom.snapshotCreateXML(
            f"<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='{snap}'/></disk>"
            "</disks></domainsnapshot>",
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        write(dom, "write -P 0x53 20M 1M")
        ref = reference(dom, snap, images / "ref6.raw")
        run.begin("spk-cp6", since="spk-cp5")
        with nbd.Export(run.socket, "vda", bitmap="backup-vda") as export:
            data, zeroed = export.extents()
            assert (data, zeroed) == ([(20 * MiB, 1 * MiB)], [])
            with restored.open("r+b") as f:
                export.copy(data, f.fileno())
        assert restored.read_bytes() == ref
        run.end()
        run.assert_gone()
    finally:
        rig.cleanup(conn, f"{PREFIX}chain")
