"""kvm-backup test-restore without a hypervisor: the isolation edit, the record, the temporary name, the
records prune removes and the bad input refused before connecting."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET

from sensu_kvm.backup import prune, tested, testrestore
from sensu_kvm.backup.catalog import archive_name, scan
from tests.conftest import refuses

XML = """<domain type='kvm'><name>web1</name><devices>
<disk type='file' device='disk'><source file='/srv/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/srv/iso/debian.iso'/><target dev='sda' bus='sata'/></disk>
<disk type='file' device='disk'><source file='/srv/shared.raw'/><target dev='vdb' bus='virtio'/><shareable/></disk>
<interface type='bridge'><source bridge='br0'/><mac address='52:54:00:00:00:01'/></interface>
<interface type='network'><source network='default'/></interface>
<filesystem type='mount'><source dir='/srv/share'/><target dir='share'/></filesystem>
<hostdev mode='subsystem' type='pci'><source><address bus='1' slot='0' function='0'/></source></hostdev>
<redirdev bus='usb' type='spicevmc'/>
<shmem name='ivshmem'/>
<serial type='pty'><target port='0'/></serial>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
</devices></domain>"""
HEADER = {"disks": [{"target": "vda", "copied": True}, {"target": "vdb", "copied": False},
                    {"target": "sda", "copied": False}]}


def test_isolate_keeps_only_the_copied_disks_and_no_network():
    root = ET.fromstring(XML)
    testrestore.isolate(root, HEADER)
    kept = [child.tag for child in root.find("devices")]
    assert kept == ["disk", "serial", "channel"]
    assert [t.get("dev") for t in root.iterfind("devices/disk/target")] == ["vda"]
    assert testrestore.choose_sign("auto", ET.tostring(root, encoding="unicode")) == "agent"
    assert testrestore.choose_sign("auto", "<domain/>") == "disk"
    assert testrestore.choose_sign("console", XML) == "console"


def test_temp_name():
    name = testrestore.temp_name("a very/long domain name")
    assert name.startswith("ktr-a_very_l-") and len(name) == len("ktr-a_very_l-") + 6
    assert testrestore.temp_name("x") != testrestore.temp_name("x")


def test_record_round_trip_and_what_counts_as_none(tmp_path):
    archive = tmp_path / archive_name("web1", time.time(), "zstd")
    archive.write_bytes(b"x")
    assert tested.read(str(archive)) is None and tested.summary(None) == "no"
    record = tested.Record(archive.name, "a" * 64, "passed", "disk", 31.2, time.time(), "ran 30s", "h", "0.1.0")
    tested.write(str(archive), record)
    assert tested.read(str(archive)) == record
    assert oct(os.stat(tested.record_path(str(archive))).st_mode & 0o777) == "0o644"
    assert tested.summary(record) == "passed (disk)"
    assert tested.summary(record._replace(result="failed", message="no ping")) == "FAILED: no ping"
    tested.write(str(archive), record._replace(archive="other.kvmbak.tar.zst"))  # another archive's record
    assert tested.read(str(archive)) is None
    tested.write(str(archive), record._replace(result="maybe"))
    assert tested.read(str(archive)) is None
    assert [e.path for e in scan(str(tmp_path))] == [str(archive)]  # the record is never an archive


def test_prune_deletes_the_record_with_its_archive(tmp_path):
    old = tmp_path / archive_name("web1", time.time() - 3 * 86400, "zstd")
    new = tmp_path / archive_name("web1", time.time(), "zstd")
    for path in (old, new):
        path.write_bytes(b"x")
        tested.write(str(path), tested.Record(path.name, "", "passed", "agent", 1.0, time.time(), "", "h", "v"))
    report = prune.prune(str(tmp_path), 1, 0, 0, False, lambda _line: None, verify=lambda _path: None)
    assert [r["action"] for r in report] == ["keep", "deleted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, new.name + tested.SUFFIX]


def test_bad_input_before_connecting(tmp_path):
    line = refuses("kvm-backup", 2, "test-restore", str(tmp_path / "missing.kvmbak.tar"), "-u", "test:///default")
    assert "does not exist" in line
    archive = tmp_path / "a.kvmbak.tar"
    archive.write_bytes(b"x")
    line = refuses("kvm-backup", 2, "test-restore", str(archive), "--sign", "console", "-u", "test:///default")
    assert "--sign console needs --console-regex" in line
    line = refuses("kvm-backup", 2, "test-restore", str(archive), "--sign", "console", "--console-regex", "(",
                   "-u", "test:///default")
    assert "--console-regex" in line
    refuses("kvm-backup", 2, "test-restore", str(archive), "--alive", "soon", "-u", "test:///default")


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    import json  # noqa: PLC0415

    import libvirt  # noqa: PLC0415

    conn = libvirt.open("test:///default")
    try:
        name = "ktr-web1-abc123"
        conn.defineXML(f"<domain type='test'><name>{name}</name><memory>1024</memory><os><type>hvm</type></os>"
                       "</domain>").create()
        work = tmp_path / "work"
        work.mkdir()
        for file in (f"{name}-vda.qcow2", f"{name}-serial0.log", f".{name}-vda.qcow2.77.kvm-restore-partial",
                     "ktr-other-def456-vda.qcow2"):
            (work / file).write_text("x")
        journals = tmp_path / "test-restore"
        journals.mkdir()
        dead = 2 ** 22 + 12345  # above pid_max's default: no such process
        (journals / f"{name}.json").write_text(json.dumps({"name": name, "work_dir": str(work), "pid": dead}))
        alive = journals / "ktr-other-def456.json"  # a run still going: left alone
        alive.write_text(json.dumps({"name": "ktr-other-def456", "work_dir": str(work), "pid": os.getppid()}))
        logged: list[str] = []
        lines = testrestore.clean_leftovers(conn, str(tmp_path), logged.append)
        assert logged == []
        assert len(lines) == 1 and f"domain {name}" in lines[0]
        assert name not in conn.listDefinedDomains() + [d.name() for d in conn.listAllDomains(0)]
        assert sorted(p.name for p in work.iterdir()) == ["ktr-other-def456-vda.qcow2"]
        assert sorted(p.name for p in journals.iterdir()) == [alive.name]
    finally:
        conn.close()
