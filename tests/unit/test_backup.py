"""The backup engine's pure parts and its archive format, without libvirt: disks chosen from XML, XML
rewritten for a restore, sparse members written and read back, damage found, prune and space choices,
and check-kvm-backup-age's verdicts."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from sensu_kvm import domxml, space
from sensu_kvm.backup import archive as archives
from sensu_kvm.backup import catalog, dest, disks, progress, prune, reader, restore
from sensu_kvm.checks.backup_age import duration_range, judge_domain
from sensu_kvm.errors import BadRequest, Corrupt
from sensu_kvm.output import Status
from sensu_kvm.virt import DomainRecord


def domain(name: str) -> DomainRecord:
    """A domain's record without statistics, for the pure judge functions."""
    return DomainRecord(name, name, {})

XML = """<domain type='qemu'><name>web1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/img/web1.qcow2'/>
<backingStore/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/img/web1-data.img'/>
<target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/iso/debian.iso'/>
<target dev='sda' bus='sata'/><readonly/></disk>
<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>
<disk type='file' device='disk'><source file='/srv/img/shared.img'/><target dev='vdc'/><shareable/></disk>
<disk type='file' device='disk'><source file='/srv/img/ro.img'/><target dev='vdd'/><readonly/></disk>
<disk type='block' device='disk'><source dev='/dev/vg/web1'/><target dev='vde'/></disk>
<interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
</devices></domain>"""


def test_disks_copied_and_recorded():
    found = {d.target: d for d in disks.disks_of(XML)}
    assert [t for t, d in found.items() if d.copy] == ["vda", "vdb"]
    assert found["vda"].format == "qcow2" and found["vdb"].format == "raw"
    assert found["sda"].why == "a cdrom" and found["sdb"].why == "a cdrom"
    assert found["vdc"].why == "shareable" and found["vdd"].why == "read-only"
    assert found["vde"].why.startswith("a block disk")


def test_rewrite_xml_for_a_copy_beside_the_original():
    paths = restore.restore_paths({"disks": [{"target": "vda", "copied": True, "source": "/srv/img/web1.qcow2"},
                                            {"target": "sda", "copied": False, "source": "/srv/iso/debian.iso"}]},
                                 None, "web1-copy")
    assert paths == {"vda": "/srv/img/web1-copy-vda.qcow2"}
    assert restore.restore_paths({"disks": [{"target": "vda", "copied": True, "source": "/srv/img/web1.qcow2"}]},
                                "/scratch", None) == {"vda": "/scratch/web1.qcow2"}
    out = domxml.rewrite_xml(XML, paths, "web1-copy")
    assert domxml.name_and_uuid(out) == ("web1-copy", "")
    assert "/srv/img/web1-copy-vda.qcow2" in out and "/srv/img/web1.qcow2" not in out
    assert "52:54:00:aa:bb:cc" not in out and "<backingStore" not in out
    assert "/srv/iso/debian.iso" in out  # the CD-ROM keeps its medium
    same = domxml.rewrite_xml(XML, {}, None)
    assert domxml.name_and_uuid(same) == ("web1", "11111111-2222-3333-4444-555555555555")
    assert "52:54:00:aa:bb:cc" in same


def sparse_image(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)
    return path


def write_archive(tmp_path: Path, image: Path, compress: str = "none", name: str = "a") -> Path:
    path = tmp_path / f"{name}.kvmbak{catalog.SUFFIX[compress]}"
    writer = archives.ArchiveWriter(str(path), compress)
    header = {"format": catalog.FORMAT, "domain": "web1", "uuid": "u", "created": 1, "mode": "offline",
              "consistency": "shut off", "disks": [{"target": "vda", "copied": True, "source": str(image)}]}
    writer.member(catalog.HEADER, archives.header_json(header))
    xml = XML.encode()
    files = [{"member": catalog.XML_MEMBER, "size": len(xml), "sha256": writer.member(catalog.XML_MEMBER, xml)}]
    info = writer.image("disks/vda.img", str(image), progress.Progress(1, False))
    files.append({"member": "disks/vda.img", "target": "vda", **info})
    writer.member(catalog.MANIFEST, archives.manifest_json(header, files))
    writer.close()
    return path


@pytest.mark.parametrize("compress", ["none", "zstd", "bzip2"])
def test_archive_round_trip_keeps_holes(tmp_path, compress):
    image = sparse_image(tmp_path / "disk.img", 64 << 20, {0: b"boot" * 1024, 40 << 20: os.urandom(1 << 20)})
    archive = write_archive(tmp_path, image, compress)
    assert archive.stat().st_mode & 0o777 == 0o600
    assert archive.stat().st_size < 2 << 20  # the holes cost nothing
    manifest, digest = reader.verify(str(archive))
    assert digest == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert [f["member"] for f in manifest["files"]] == ["domain.xml", "disks/vda.img"]
    assert reader.read_header(str(archive))["domain"] == "web1"
    out = tmp_path / "restored.img"
    sinks = []

    def sink(member, _header):
        s = reader.ImageSink(str(out), int(member.pax["GNU.sparse.realsize"]))
        sinks.append(s)
        return s

    _manifest, xml, _digest = reader.scan_archive(str(archive), sink)
    assert "web1" in xml
    assert out.read_bytes() == image.read_bytes()
    assert out.stat().st_blocks * 512 <= 2 << 20


def test_gnu_tar_extracts_an_archive_with_its_holes(tmp_path):
    image = sparse_image(tmp_path / "disk.img", 32 << 20, {8 << 20: b"x" * 65536})
    archive = write_archive(tmp_path, image, "zstd")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(out)], check=True)
    assert sorted(os.listdir(out)) == ["disks", "domain.xml", "kvm-backup.json", "manifest.json"]
    assert (out / "disks" / "vda.img").read_bytes() == image.read_bytes()
    assert json.loads((out / "manifest.json").read_text())["header"]["domain"] == "web1"


def test_python_tarfile_reads_it_too(tmp_path):
    image = sparse_image(tmp_path / "disk.img", 16 << 20, {4 << 20: b"y" * 4096})
    archive = write_archive(tmp_path, image, "none")
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["kvm-backup.json", "domain.xml", "disks/vda.img", "manifest.json"]
        member = tar.extractfile("disks/vda.img")
        assert member is not None and member.read() == image.read_bytes()


def test_flipped_bytes_and_truncation_are_found(tmp_path):
    image = sparse_image(tmp_path / "disk.img", 8 << 20, {1 << 20: b"\x5a" * (1 << 20)})
    archive = write_archive(tmp_path, image)
    data = bytearray(archive.read_bytes())
    at = data.index(b"\x5a" * 1024) + 10
    data[at] ^= 1
    bad = tmp_path / "bad.kvmbak.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(Corrupt, match=r"disks/vda\.img does not match its checksum"):
        reader.verify(str(bad))
    cut = tmp_path / "cut.kvmbak.tar"
    cut.write_bytes(archive.read_bytes()[:4096])
    with pytest.raises(Corrupt, match="truncated"):
        reader.verify(str(cut))
    head = bytearray(archive.read_bytes())
    head[600] ^= 0x20  # inside the header member: the header no longer matches the manifest
    flip = tmp_path / "head.kvmbak.tar"
    flip.write_bytes(bytes(head))
    with pytest.raises(Corrupt):
        reader.verify(str(flip))
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("hello")
    with pytest.raises(Corrupt, match="not a kvm-backup archive"):
        reader.verify(str(foreign))


def test_a_writer_that_cannot_write_leaves_nothing(tmp_path):
    path = tmp_path / "x.kvmbak.tar.zst"
    writer = archives.ArchiveWriter(str(path), "zstd")
    writer.member(catalog.HEADER, b"{}")
    writer.abort()
    assert not path.exists()


def test_sparse_map_round_trip():
    parts = [(0, 4096), (1 << 20, 512), (5 << 30, 1)]
    block = archives.sparse_map_block(parts)
    assert len(block) % 512 == 0
    assert archives.parse_sparse_map(block + b"data") == (parts, len(block))


def test_names_scan_and_markers(tmp_path):
    when = time.time() - 3600
    for name in (catalog.archive_name("web-1", when, "zstd"), catalog.archive_name("db", when - 86400, "bzip2"),
                 ".web-1-20240101T000000Z.kvmbak.tar.zst.partial", "notes.txt"):
        (tmp_path / name).write_bytes(b"x" * 10)
    found = catalog.scan(str(tmp_path))
    assert [(e.domain, e.size) for e in found] == [("db", 10), ("web-1", 10)]
    assert abs(found[1].created - int(when)) <= 1
    catalog.write_marker(str(tmp_path), "web-1", "disk full", 123.0)
    assert catalog.read_markers(str(tmp_path)) == {"web-1": {"time": 123.0, "error": "disk full"}}
    assert [e.domain for e in catalog.scan(str(tmp_path))] == ["db", "web-1"]
    catalog.clear_marker(str(tmp_path), "web-1")
    assert catalog.read_markers(str(tmp_path)) == {}


def entry(domain: str, days_ago: float, now: float) -> catalog.Entry:
    return catalog.Entry(f"/b/{domain}-{days_ago}", domain, now - days_ago * 86400, 1)


def test_prune_keeps_the_newest_and_the_policy():
    now = 1_700_000_000.0
    entries = [entry("web", d, now) for d in (0, 0.1, 1, 2, 3, 8, 15, 30)] + [entry("db", 40, now)]
    plan = prune.prune_plan(entries, 2, 0, 0)
    kept = {e.path for e, keep, _ in plan if keep}
    assert kept == {"/b/web-0", "/b/web-0.1", "/b/db-40"}
    plan = prune.prune_plan(entries, 1, 3, 0)
    kept = {e.path for e, keep, _ in plan if keep}
    assert {"/b/web-0", "/b/web-1", "/b/web-2", "/b/db-40"} <= kept and "/b/web-30" not in kept
    plan = prune.prune_plan(entries, 0, 0, 3)
    kept = {e.path for e, keep, _ in plan if keep}
    assert "/b/web-0" in kept and "/b/db-40" in kept and len([k for k in kept if "web" in k]) == 3
    why = {e.path: w for e, _k, w in plan}
    assert why["/b/web-0"] == "the newest"


def test_prune_never_deletes_the_newest_verified_archive(tmp_path):
    """The engine owns the rule: when the newest archive of a domain does not verify, the next one
    must, and nothing older than the newest one that verifies is deleted."""
    names = [catalog.archive_name("web1", 1_700_000_000 + n * 86400, "none") for n in range(4)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    bad = {str(tmp_path / names[3])}  # the newest is damaged

    def verify(path: str) -> None:
        if path in bad:
            raise Corrupt(f"{path}: damaged")

    logged: list[str] = []
    dry = prune.prune(str(tmp_path), 1, 0, 0, True, logged.append, verify)  # a dry run reads nothing
    assert [r["action"] for r in dry] == ["keep", "would delete", "would delete", "would delete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    kept = prune.prune(str(tmp_path), 1, 0, 0, False, logged.append, verify)
    assert [r["action"] for r in kept] == ["keep"] * 4
    assert kept[1]["why"] == "no newer archive of this domain verifies" and "does not verify" in logged[0]
    report = prune.prune(str(tmp_path), 2, 0, 0, False, logged.append, verify)
    assert [(os.path.basename(r["archive"]), r["action"]) for r in report] == \
        [(names[3], "keep"), (names[2], "keep"), (names[1], "deleted"), (names[0], "deleted")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    with pytest.raises(BadRequest):
        prune.prune(str(tmp_path), 0, 0, 0, False, logged.append, verify)


def test_space_problems_per_file_system():
    def free_of(folder):
        return (1, 100 << 20) if folder.startswith("/a") else (2, 10 << 30)

    assert space.space_problems([("/a/dest", 50 << 20, "archive"), ("/b/img", 1 << 20, "overlays")], free_of) == []
    problems = space.space_problems([("/a/dest", 80 << 20, "archive"), ("/a/img", 30 << 20, "overlays")], free_of)
    assert problems == ["not enough free space in /a/dest for the archive and overlays: 100 MiB free, 126 MiB needed"]


def test_split_remote():
    assert dest.split_remote("/srv/backup") is None
    assert dest.split_remote("./a:b") is None
    assert dest.split_remote("backup@vault:/srv/backup") == ("backup@vault", "/srv/backup")
    assert dest.split_remote("vault:") == ("vault", ".")


def options(**kw):
    base = {"warning": duration_range("26h"), "critical": duration_range("50h"), "backup_dir": "/b", "verbose": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_backup_age_verdicts():
    now = 1_700_000_000.0
    fresh = [catalog.Entry("/b/a", "web", now - 3600, 1000), catalog.Entry("/b/b", "web", now - 90000, 900)]
    v = judge_domain(domain("web"), fresh, None, now, options())
    assert v.finding.status is Status.OK and "1h old (2 kept)" in v.finding.text
    assert [str(p) for p in v.perfdata] == ["web_age=3600s;93600;180000;0", "web_size=1000B;;;0"]
    v = judge_domain(domain("web"), [catalog.Entry("/b/a", "web", now - 30 * 3600, 1)], None, now, options())
    assert v.finding.status is Status.WARNING
    v = judge_domain(domain("web"), [catalog.Entry("/b/a", "web", now - 60 * 3600, 1)], None, now, options())
    assert v.finding.status is Status.CRITICAL
    v = judge_domain(domain("web"), [], None, now, options())
    assert v.finding.status is Status.CRITICAL and "no backup" in v.finding.text
    v = judge_domain(domain("web"), fresh, {"time": now - 60, "error": "disk full"}, now, options())
    assert v.finding.status is Status.CRITICAL and "disk full" in v.finding.text
    v = judge_domain(domain("web"), fresh, {"time": now - 7200, "error": "old failure"}, now, options())
    assert v.finding.status is Status.OK
