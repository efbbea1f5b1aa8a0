"""kvm-backup restore --start of a kvm-backup/2 chain (a full and an inc written file-only by
tests/chains.py) on real libvirtd: the rebuilt standalone qcow2 is the disk QEMU opens, and the tiny
Linux guest (direct kernel boot) reaches SPK-READY. Domains spk-ch-*."""

from __future__ import annotations

import json
import uuid as uuids

from tests import chains
from tests.conftest import succeeds
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-ch-"
conn, images = own_fixtures(PREFIX)


def test_restore_start_of_an_inc_boots_the_guest_on_the_rebuilt_qcow2(conn, images, guest, tmp_path):
    kernel, initrd = guest
    name, uuid = f"{PREFIX}orig", str(uuids.uuid4())
    source = images / f"{name}-vda.qcow2"
    xml = rig.linux_guest_xml(name, source, kernel, initrd, "idle", images / f"{name}.serial.log")
    xml = xml.replace(f"<name>{name}</name>", f"<name>{name}</name><uuid>{uuid}</uuid>", 1)
    old = bytes(chains.pattern(8 * chains.MIB, {0: 0x5A, 2 * chains.MIB: 0x6B}))
    new = bytearray(old)
    new[2 * chains.MIB:2 * chains.MIB + chains.BLK] = bytes(chains.BLK)
    new[5 * chains.MIB:5 * chains.MIB + chains.BLK] = b"\x7c" * chains.BLK
    full_disk = chains.Disk("vda", "qcow2", old)
    inc_disk = chains.Disk("vda", "qcow2", bytes(new), "inc", old=old)
    for disk in (full_disk, inc_disk):
        disk.source = str(source)
    who = {"domain": name, "uuid": uuid}
    archives = tmp_path / "archives"
    archives.mkdir()
    full = chains.write(archives / f"{name}-20240502T020000Z.kvmbak.tar.zst", [full_disk], chains.full_chain("cp0"),
                        "zstd", header_changes=who, xml=xml)
    inc = chains.write(archives / f"{name}-20240502T030000Z.inc.kvmbak.tar.zst", [inc_disk],
                       chains.inc_chain(full, "cp0", "cp1", 1), "zstd", header_changes=who, xml=xml)
    copy = f"{PREFIX}copy"
    out = json.loads(succeeds("kvm-backup", "-u", rig.URI, "restore", str(inc), "--name", copy, "--image-dir",
                              str(images), "--allow-readonly", str(kernel), "--allow-readonly", str(initrd),
                              "--start", "--json"))
    assert out["images"] == {"vda": str(images / f"{copy}-vda.qcow2")} and out["started"]
    dom = conn.lookupByName(copy)
    assert dom.isActive()
    assert str(images / f"{copy}-vda.qcow2") in dom.XMLDesc(0)
    rig.wait_serial(images / f"{copy}-serial0.log", timeout=120)
    dom.destroy()
    assert chains.as_raw(out["images"]["vda"], "qcow2", tmp_path) == bytes(new)
