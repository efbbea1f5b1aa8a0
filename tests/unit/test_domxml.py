"""domxml: the one model of a domain's XML, and its editors; atomic, qcow2 and space, shared by both engines."""

from __future__ import annotations

import os
import struct

import pytest

from sensu_kvm import atomic, domxml, qcow2, space

XML = """<domain type='qemu'><name>web1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<os><type>hvm</type><kernel>/boot/vmlinuz</kernel><nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram></os>
<devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/web1.snap'/>
    <backingStore type='file'><format type='qcow2'/><source file='/img/web1.qcow2'/>
      <backingStore type='file'><format type='raw'/><source file='/img/base.raw'/><backingStore/></backingStore>
    </backingStore><target dev='vda' bus='virtio'/></disk>
  <disk type='block' device='disk'><source dev='/dev/vg/data'/><target dev='vdb'/><shareable/></disk>
  <disk type='network' device='disk'><driver type='raw'/><source protocol='rbd' name='pool/img'/><target dev='vdc'/></disk>
  <disk type='volume' device='disk'><source pool='default' volume='v1'/><target dev='vdd'/></disk>
  <disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='sda'/><readonly/></disk>
  <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><target dev='vnet3'/></interface>
  <interface type='bridge'><source bridge='br0'/></interface>
  <serial type='file'><source path='/var/log/web1.serial'/><target port='0'/></serial>
  <console type='pty'><target type='serial'/><log file='/var/log/web1.console'/></console>
</devices></domain>"""


def test_disks_with_their_source_kind_format_flags_and_chain():
    found = {d.target: d for d in domxml.disks(XML)}
    vda = found["vda"]
    assert (vda.kind, vda.device, vda.path, vda.format, vda.readonly, vda.shareable) == \
        ("file", "disk", "/img/web1.snap", "qcow2", False, False)
    assert vda.chain == [domxml.Layer("/img/web1.snap", "qcow2"), domxml.Layer("/img/web1.qcow2", "qcow2"),
                         domxml.Layer("/img/base.raw", "raw")]
    vdb = found["vdb"]
    assert (vdb.kind, vdb.path, vdb.format, vdb.shareable) == ("block", "/dev/vg/data", "", True)
    assert (found["vdc"].path, found["vdc"].source, found["vdc"].chain) == ("", "pool/img", [])
    assert (found["vdd"].kind, found["vdd"].source) == ("volume", "")
    assert found["sda"].readonly and found["sda"].device == "cdrom"


def test_chains_only_of_disks_with_a_local_path():
    assert list(domxml.chains(XML)) == ["vda", "vdb"]
    assert domxml.chains(XML)["vdb"] == [domxml.Layer("/dev/vg/data", "")]


def test_interfaces_and_files():
    assert domxml.interfaces(XML) == [domxml.Interface("network", "52:54:00:aa:bb:cc", "default", "vnet3"),
                                      domxml.Interface("bridge", "", "br0", "")]
    assert domxml.files(XML) == ["/var/log/web1.serial", "/var/log/web1.console",
                                 "/var/lib/libvirt/qemu/nvram/web1_VARS.fd", "/boot/vmlinuz"]
    model = domxml.domain(XML)
    assert (model.name, model.uuid, len(model.disks), len(model.interfaces)) == \
        ("web1", "11111111-2222-3333-4444-555555555555", 5, 2)


def test_editors():
    out = domxml.rewrite_xml(XML, {"vda": "/new/web1.qcow2"}, None)
    assert domxml.chains(out)["vda"] == [domxml.Layer("/new/web1.qcow2", "qcow2")]
    assert domxml.name_and_uuid(out) == ("web1", "11111111-2222-3333-4444-555555555555")
    copy = domxml.rewrite_xml(XML, {}, "web1-copy")
    assert domxml.name_and_uuid(copy) == ("web1-copy", "")
    assert [i.mac for i in domxml.interfaces(copy)] == ["", ""]
    raw = domxml.set_format(XML, "vda", "raw")
    assert {d.target: d.format for d in domxml.disks(raw)}["vda"] == "raw"


def qcow2_header(size: int, backing: bytes = b"", version: int = 3, features: int = 0) -> bytes:
    head = bytearray(112)
    head[0:4] = qcow2.MAGIC
    struct.pack_into(">I", head, 4, version)
    if backing:
        struct.pack_into(">QI", head, 8, 112, len(backing))
    struct.pack_into(">Q", head, 24, size)
    struct.pack_into(">Q", head, 72, features)
    return bytes(head) + backing


def test_qcow2_header_fields(tmp_path):
    image = tmp_path / "a.qcow2"
    image.write_bytes(qcow2_header(10 << 30, b"/img/base.qcow2"))
    raw = tmp_path / "b.raw"
    raw.write_bytes(b"\0" * 4096)
    assert qcow2.is_qcow2(str(image)) and not qcow2.is_qcow2(str(raw)) and not qcow2.is_qcow2(str(tmp_path / "gone"))
    assert qcow2.virtual_size(str(image)) == 10 << 30 and qcow2.virtual_size(str(raw)) == 4096
    assert qcow2.backing_file(str(image)) == "/img/base.qcow2" and qcow2.backing_file(str(raw)) == ""
    info = qcow2.read_image(str(image))
    assert (info.format, info.virtual_size, info.backing) == ("qcow2", 10 << 30, "/img/base.qcow2")
    assert qcow2.header_problem(image.read_bytes()) == "is a qcow2 image with a backing file"
    assert qcow2.header_problem(qcow2_header(1 << 20, features=4)) == "is a qcow2 image with an external data file"
    assert qcow2.header_problem(qcow2_header(1 << 20)) == "" and qcow2.header_problem(b"\0" * 512) == ""
    assert qcow2.image_snapshots(str(raw)) is None


def test_atomic_write_replaces_never_follows_and_keeps_the_mode(tmp_path):
    target = tmp_path / "j.json"
    atomic.write_atomic(str(target), "one", 0o644)
    assert target.read_text() == "one" and (target.stat().st_mode & 0o777) == 0o644
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, atomic.temp_name(str(target)))  # planted where the temporary goes
    atomic.write_atomic(str(target), b"two")
    assert target.read_text() == "two" and victim.read_text() == "keep"
    assert (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json", "victim"]
    with pytest.raises(OSError):
        atomic.write_atomic(str(tmp_path / "no" / "such"), "x")


def test_one_free_space_rule_for_overlays():
    need = space.overlay_need(64 << 20)
    assert need == (64 << 20) // 65536 * 10 + space.OVERLAY_WRITES
    free = {"/a": (1, space.RESERVE + need - 1)}
    assert space.space_problems([("/a", need, "overlays")], free.__getitem__)
    assert not space.space_problems([("/a", need, "overlays")], {"/a": (1, space.RESERVE + need)}.__getitem__)


@pytest.mark.parametrize("text", ["", "web1", "a&b<c>d", "it's", 'say "hi"', "both ' and \"", "tab\there\nline\rcr",
                                  "&amp; already", "\u00e9\u4e2d|=", "'\"&<>\t"])
def test_xml_escaping_is_the_standard_librarys(text: str) -> None:
    from xml.sax.saxutils import escape, quoteattr  # noqa: PLC0415 (the reference only)

    assert domxml.xml_escape(text) == escape(text)
    assert domxml.xml_quoteattr(text) == quoteattr(text)
