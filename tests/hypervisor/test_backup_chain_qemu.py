"""kvm-backup create through libvirt's backup API (--engine api): a full of a writing tiny Linux guest,
then a chain full / inc / inc / diff of a no-OS guest written from outside with HMP ``qemu-io``
(exact points in time), each archive rebuilt (restore.restore_files) equal to the image at its point,
and a bitmap removed behind the tool's back making the next --level auto run a full that says why.
Real QEMU (TCG) on qemu:///system; domains spk-ap-*.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]
import pytest

from sensu_kvm.backup import create, pull, restore
from sensu_kvm.virt import backupjobs
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-ap-"
MiB = 1 << 20
conn, images = own_fixtures(PREFIX)
TOOL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kvm-backup")


def hmp(dom: libvirt.virDomain, command: str) -> str:
    return str(libvirt_qemu.qemuMonitorCommand(dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))


def qmp(dom: libvirt.virDomain, command: dict[str, Any]) -> Any:
    return json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(command), 0))


def write(dom: libvirt.virDomain, op: str, disk: int = 0) -> None:
    qdev = qmp(dom, {"execute": "query-block"})["return"][disk]["qdev"]
    out = hmp(dom, f'qemu-io -d {qdev} "{op}"')
    assert out.strip() == "", out


def reference(dom: libvirt.virDomain, image: Path, out: Path, disk: int = 0, fmt: str = "qcow2") -> Path:
    write(dom, "flush", disk)
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(image), str(out)], check=True)
    return out


def same(a: Path, b: Path) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False)
    return done.returncode == 0


def rebuilt(archive: str, folder: Path) -> Path:
    folder.mkdir()
    files = restore.restore_files(archive, str(folder))
    (path,) = files.values()
    return Path(path)


def backup(dest: Path, state: Path, dom: libvirt.virDomain, *args: str) -> dict[str, Any]:
    done = subprocess.run([TOOL, "create", dom.name(), "--dest", str(dest), "--state-dir", str(state),
                           "--engine", "api", "--json", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["backups"]
    assert result["ok"] and result["engine"] == "api", result
    assert not backupjobs.running(dom)
    assert not list(Path("/run/kvm-backup").glob(f"nbd-{dom.UUIDString().replace('-', '')[:8]}"))
    assert not list(dest.parent.glob(".*kvm-backup-scratch*"))
    return dict(result)


@pytest.fixture(scope="module")
def guest(conn: libvirt.virConnect, images: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    image = rig.make_qcow2(images / "noos.qcow2", "64M")
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}noos", image))
    dom.create()
    yield dom, image
    rig.cleanup(conn, f"{PREFIX}noos")


def test_chain_full_inc_inc_diff(guest: tuple[libvirt.virDomain, Path], images: Path) -> None:
    dom, image = guest
    dest, state = images / "dest", images / "state"
    dest.mkdir()
    write(dom, "write -P 0x11 4M 8M")
    refs = [reference(dom, image, images / "ref0.raw")]
    results = [backup(dest, state, dom, "--level", "inc")]  # no chain yet: a full, saying why
    assert results[0]["level"] == "full"
    assert "no chain record" in results[0]["why_full"]
    write(dom, "write -P 0x22 8M 1M")
    write(dom, "write -z 4M 1M")
    refs.append(reference(dom, image, images / "ref1.raw"))
    results.append(backup(dest, state, dom, "--level", "inc"))
    write(dom, "write -P 0x33 40M 512")
    refs.append(reference(dom, image, images / "ref2.raw"))
    results.append(backup(dest, state, dom, "--level", "auto"))
    write(dom, "write -P 0x44 50M 2M")
    refs.append(reference(dom, image, images / "ref3.raw"))
    results.append(backup(dest, state, dom, "--level", "diff"))
    assert [r["level"] for r in results] == ["full", "inc", "inc", "diff"]
    assert results[1]["parent"] == os.path.basename(results[0]["archive"])
    assert results[2]["parent"] == os.path.basename(results[1]["archive"])
    assert results[3]["parent"] == os.path.basename(results[0]["archive"])  # diff: since the full
    assert results[1]["disks"]["vda"]["data"] < 2 * MiB  # only the changes: 1 MiB data, 1 MiB zeroed
    assert results[3]["disks"]["vda"]["data"] < 16 * MiB
    for i, (result, ref) in enumerate(zip(results, refs, strict=True)):
        assert same(rebuilt(result["archive"], images / f"out{i}"), ref), result["archive"]
    # only the checkpoints the record needs are left: the newest and the full's
    assert pull.checkpoint_names(dom) == sorted({results[3]["checkpoint"], results[0]["checkpoint"]})
    # the tool's own readers take what create wrote: verify follows each chain, list shows the levels
    for result in results[2:]:
        done = subprocess.run([TOOL, "verify", result["archive"], "--json"], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([TOOL, "list", str(dest), "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    listed = {os.path.basename(b["archive"]): (b["level"], b["parent"]) for b in json.loads(done.stdout)["backups"]}
    assert listed == {os.path.basename(r["archive"]): (r["level"], r["parent"]) for r in results}


def test_bitmap_removed_gives_a_full(guest: tuple[libvirt.virDomain, Path], images: Path) -> None:
    dom, image = guest
    dest, state = images / "dest2", images / "state2"
    dest.mkdir()
    first = backup(dest, state, dom, "--level", "auto")
    assert first["level"] == "full"
    node = next(n["node-name"] for n in qmp(dom, {"execute": "query-named-block-nodes"})["return"]
                if any(b.get("name") == first["checkpoint"] for b in n.get("dirty-bitmaps", [])))
    qmp(dom, {"execute": "block-dirty-bitmap-remove", "arguments": {"node": node, "name": first["checkpoint"]}})
    write(dom, "write -P 0x55 20M 1M")
    ref = reference(dom, image, images / "ref-bm.raw")
    second = backup(dest, state, dom, "--level", "auto")
    assert second["level"] == "full"
    assert "libvirt could not begin the inc" in second["why_full"], second["why_full"]
    assert same(rebuilt(second["archive"], images / "out-bm"), ref)
    third = backup(dest, state, dom, "--level", "auto")  # the chain goes on from the new full
    assert third["level"] == "inc"


def test_full_of_a_writing_linux_guest(conn: libvirt.virConnect, images: Path) -> None:
    """The tiny Linux guest writes its disk throughout; the backup begins while it is suspended
    (an exact point, taken as the reference), the guest is resumed as soon as the job runs and
    writes on during the copy: the archive is the point in time."""
    kernel, initrd = rig.ensure_guest()
    image = rig.make_qcow2(images / "writer.qcow2", "64M")
    log = images / "writer.log"
    dom = conn.defineXML(rig.linux_guest_xml(f"{PREFIX}writer", image, kernel, initrd, "write", log))
    dom.create()
    try:
        rig.wait_serial(log, "SPK-WRITE-START", timeout=120)
        dest, state = images / "dest3", images / "state3"
        dest.mkdir()
        dom.suspend()
        ref = images / "ref-w.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(image), str(ref)], check=True)
        box: dict[str, Any] = {}
        opts = create.Options(mode=None, dest=str(dest), state_dir=str(state), engine="api")

        def run() -> None:
            try:
                box["result"] = create.create(conn, dom, opts, lambda line: None)
            except BaseException as err:
                box["error"] = err

        worker = threading.Thread(target=run)
        worker.start()
        rig.wait_for(lambda: backupjobs.running(dom) or not worker.is_alive(), timeout=60, what="the job")
        wraps = rig.serial_text(log).count("SPK-WRITE-WRAP")
        dom.resume()
        worker.join(120)
        assert "error" not in box, box.get("error")
        result = box["result"]
        assert result["engine"] == "api" and result["level"] == "full"
        assert same(rebuilt(result["archive"], images / "out-w"), ref)
        assert not backupjobs.running(dom)
        assert not list(images.glob(".*kvm-backup-scratch*"))
        rig.wait_for(lambda: rig.serial_text(log).count("SPK-WRITE-WRAP") > wraps or dom.isActive(), timeout=60,
                     what="the writer still running")
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        rig.cleanup(conn, f"{PREFIX}writer")


def test_backing_file_disk(conn: libvirt.virConnect, images: Path) -> None:
    """A clone of a template (top.qcow2 over base.qcow2) backs up through the API as the guest sees
    it (the overlay engine refuses a backing chain), full then inc, each rebuilt equal."""
    base = rig.make_qcow2(images / "template.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 4M", str(base)], check=True, capture_output=True)
    top = images / "clone.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)], check=True)
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}clone", top))
    dom.create()
    try:
        dest, state = images / "dest4", images / "state4"
        dest.mkdir()
        write(dom, "write -P 0x62 8M 1M")
        ref = reference(dom, top, images / "ref-c0.raw")
        first = backup(dest, state, dom, "--level", "auto")
        assert first["level"] == "full" and first["disks"]["vda"]["data"] >= 5 * MiB  # the template's data too
        assert same(rebuilt(first["archive"], images / "out-c0"), ref)
        write(dom, "write -P 0x63 1M 1M")  # over the template's data
        ref = reference(dom, top, images / "ref-c1.raw")
        second = backup(dest, state, dom, "--level", "inc")
        assert second["level"] == "inc" and second["disks"]["vda"]["data"] <= 2 * MiB
        assert same(rebuilt(second["archive"], images / "out-c1"), ref)
    finally:
        rig.cleanup(conn, f"{PREFIX}clone")


def test_raw_disk_copied_whole_in_an_inc(conn: libvirt.virConnect, images: Path) -> None:
    """A raw second disk has no bitmap: the inc copies it whole and says so; both disks rebuild equal."""
    qcow = rig.make_qcow2(images / "two-a.qcow2", "64M")
    raw = images / "two-b.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    xml = rig.noos_domain_xml(f"{PREFIX}two", qcow).replace(
        "</disk>", f"</disk><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{raw}'/>"
        "<target dev='vdb' bus='virtio'/></disk>", 1)
    dom = conn.defineXML(xml)
    dom.create()
    try:
        dest, state = images / "dest5", images / "state5"
        dest.mkdir()
        write(dom, "write -P 0x71 0 2M", 1)
        first = backup(dest, state, dom, "--level", "auto")
        assert first["level"] == "full"
        write(dom, "write -P 0x72 4M 1M", 0)
        write(dom, "write -P 0x73 8M 1M", 1)
        refs = {"vda": reference(dom, qcow, images / "ref-t-a.raw", 0),
                "vdb": reference(dom, raw, images / "ref-t-b.raw", 1, "raw")}
        done = subprocess.run([TOOL, "create", dom.name(), "--dest", str(dest), "--state-dir", str(state),
                               "--engine", "api", "--level", "inc"], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert ", inc, " in done.stdout and "vdb copied whole (a raw disk has no dirty bitmap)" in done.stdout, done.stdout
        archive = done.stdout.split(": ", 1)[1].split(" (", 1)[0]
        out = images / "out-t"
        out.mkdir()
        files = restore.restore_files(archive, str(out))
        assert set(files) == {"vda", "vdb"}
        for target, path in files.items():
            assert same(Path(path), refs[target]), target
    finally:
        rig.cleanup(conn, f"{PREFIX}two")


def test_resize_gives_a_full_then_inc(guest: tuple[libvirt.virDomain, Path], images: Path) -> None:
    dom, image = guest
    dest, state = images / "dest6", images / "state6"
    dest.mkdir()
    first = backup(dest, state, dom, "--level", "auto")
    assert first["level"] == "full"
    dom.blockResize("vda", 96 * MiB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    write(dom, "write -P 0x81 80M 1M")
    ref = reference(dom, image, images / "ref-r0.raw")
    second = backup(dest, state, dom, "--level", "auto")
    assert second["level"] == "full" and "vda was resized (67108864 -> 100663296 bytes)" in second["why_full"]
    assert same(rebuilt(second["archive"], images / "out-r0"), ref)
    write(dom, "write -P 0x82 90M 1M")
    ref = reference(dom, image, images / "ref-r1.raw")
    third = backup(dest, state, dom, "--level", "auto")
    assert third["level"] == "inc"
    assert same(rebuilt(third["archive"], images / "out-r1"), ref)
