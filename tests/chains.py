"""kvm-backup/2 archives and chains written file-only with ArchiveWriter (no QEMU): disks given as
contents, incrementals computed against the previous content at 64 KiB granularity (data extents and
``zeroed`` ranges, as a dirty bitmap gives them), and a ready-made chain (a full, two incrementals
through a grow and zeroed ranges, a raw disk copied whole in each, and a diff) with the expected
image of every point. Used by tests/unit/test_archive_v2.py and tests/testdriver/test_backup_chains.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

from sensu_kvm.backup import archive, catalog, reader
from sensu_kvm.backup.progress import Progress
from tests import crafted

BLK = 64 * 1024
KIB = 1024
MIB = 1024 * KIB
NAME = "web1"
UUID = "7c9f2a4e-1b3d-4e5f-8a6b-0c1d2e3f4a5b"


def merged(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for offset, length in ranges:
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1][1] += length
        else:
            out.append([offset, length])
    return out


def changes(old: bytes | None, new: bytes) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """What a backup of ``new`` stores on top of ``old`` (None: a full), at 64 KiB granularity as a
    dirty bitmap gives it: (data extents, zeroed ranges). A zero block past the old end needs neither:
    a grown file reads zeros there."""
    data, zeroed = [], []
    for offset in range(0, len(new), BLK):
        chunk = new[offset:offset + BLK]
        if old is not None and old[offset:offset + BLK] == chunk:
            continue
        if chunk.count(0) == len(chunk):
            if old is not None and offset < len(old):
                zeroed.append([offset, len(chunk)])
        else:
            data.append([offset, len(chunk)])
    return [(o, n) for o, n in merged(data)], merged(zeroed)


class Disk:
    def __init__(self, target: str, fmt: str, content: bytes, level: str = "full",
                 parts: list[tuple[int, int]] | None = None, zeroed: list[list[int]] | None = None,
                 old: bytes | None = None, size: int | None = None, member: str | None = None) -> None:
        self.target, self.fmt, self.content, self.level = target, fmt, content, level
        found = changes(old if level == "inc" else None, content)
        self.parts = found[0] if parts is None else parts
        self.zeroed = found[1] if zeroed is None else zeroed
        self.size = len(content) if size is None else size
        self.member = member or f"disks/{target}.img"
        self.source = f"/var/lib/libvirt/images/{NAME}-{target}.{fmt}"

    def header(self) -> dict[str, Any]:
        return {**crafted.header_disk(self.target, self.source, self.fmt), "stored": "raw-sparse",
                "level": self.level, "virtual_size": self.size, "zeroed": self.zeroed}

    def read(self, view: memoryview, offset: int) -> int:
        data = self.content[offset:offset + len(view)]
        data += b"\xee" * (len(view) - len(data))  # a crafted extent past the end reads something
        view[:len(data)] = data
        return len(data)


def write(path: Path, disks: list[Disk], chain: dict[str, Any], compress: str = "none",
          header_changes: dict[str, Any] | None = None, strict: bool = True, devices: str = "",
          xml: str | None = None) -> Path:
    """A kvm-backup/2 archive as kvm-backup create will write it; ``strict=False`` writes the
    sparse maps as given (a crafted archive: the writer's own check of the extents is skipped);
    ``devices`` more XML in the domain's <devices> (a crafted domain XML), ``xml`` another domain XML."""
    header = {"format": catalog.FORMAT_V2, "domain": NAME, "uuid": UUID, "created": int(time.time()),
              "mode": "live", "engine": "backup-api-pull", "consistency": "crash-consistent",
              "disks": [d.header() for d in disks], "chain": chain, **(header_changes or {})}
    xml = xml or crafted.domain_xml(NAME, UUID, "".join(crafted.disk_xml(d.target, d.source, d.fmt) for d in disks),
                             devices)
    writer = archive.ArchiveWriter(str(path), compress)
    writer.member(catalog.HEADER, archive.header_json(header))
    raw = xml.encode()
    files: list[dict[str, Any]] = [{"member": catalog.XML_MEMBER, "size": len(raw), "stored": len(raw),
                                    "sha256": writer.member(catalog.XML_MEMBER, raw)}]
    for disk in disks:
        if strict:
            info = writer.extents_member(disk.member, disk.size, disk.parts, disk.read)
        else:
            info = writer._sparse(disk.member, disk.size, disk.parts, disk.read, Progress(1, False))
        files.append({"member": disk.member, "target": disk.target, "source": disk.source, "format": disk.fmt,
                      **info})
    writer.member(catalog.MANIFEST, archive.manifest_json(header, files))
    writer.close()
    return path


def full_chain(checkpoint: str = "cp0") -> dict[str, Any]:
    return catalog.chain_record("full", checkpoint, root=None)


def inc_chain(parent: Path, since: str, checkpoint: str, depth: int) -> dict[str, Any]:
    return catalog.chain_record("inc", checkpoint, since, parent.name, reader.file_sha256(str(parent)),
                                depth=depth)


def pattern(size: int, blocks: dict[int, int]) -> bytearray:
    """``size`` zero bytes with 64 KiB blocks of one byte value each at the given offsets."""
    data = bytearray(size)
    for offset, value in blocks.items():
        data[offset:offset + BLK] = bytes([value]) * BLK
    return data


def stamped(folder: Path, second: int, level: str = "full") -> Path:
    return folder / catalog.archive_name(NAME, 1714615200 + second, "zstd", level)


def as_raw(image: str, fmt: str, tmp: Path) -> bytes:
    if fmt == "raw":
        return Path(image).read_bytes()
    out = tmp / f"check-{os.path.basename(image)}.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, str(out)], check=True)
    return out.read_bytes()


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))




class Point(NamedTuple):
    """One archive of a built chain and the disks a restore of it must give back."""

    path: Path
    level: str
    images: dict[str, bytes]  # target -> the guest-visible content at that point


def build_chain(folder: Path, compress: str = "zstd") -> list[Point]:
    """A full, two incrementals and a diff of one domain in ``folder``, oldest first.

    vda (qcow2): data at the full; inc1 zeroes a block, writes another and grows the disk 2 -> 3 MiB;
    inc2 writes one block; the diff holds everything since the full. vdb (raw): a whole copy in each
    archive (level full inside an incremental: a raw disk has no bitmap)."""
    vda0 = pattern(2 * MIB, {0: 0xA0, 5 * BLK: 0xA1, 20 * BLK: 0xA2})
    vda1 = pattern(3 * MIB, {0: 0xA0, 20 * BLK: 0xB2, 40 * BLK: 0xB1})  # block 5 zeroed, grown
    vda2 = bytearray(vda1)
    vda2[3 * BLK:4 * BLK] = b"\xc0" * BLK
    vdb = [pattern(MIB, {0: 0x10}), pattern(MIB, {BLK: 0x20}), pattern(MIB, {2 * BLK: 0x30}),
           pattern(MIB, {3 * BLK: 0x40})]
    vda3 = bytearray(vda2)
    vda3[6 * BLK:7 * BLK] = b"\xd0" * BLK
    points: list[Point] = []

    def add(second: int, level: str, vda: bytes, old: bytes | None, raw: bytes, chain: dict[str, Any]) -> None:
        disks = [Disk("vda", "qcow2", vda, "full" if old is None else "inc", old=old), Disk("vdb", "raw", raw)]
        path = write(stamped(folder, second, level), disks, chain, compress)
        points.append(Point(path, level, {"vda": vda, "vdb": raw}))

    add(0, "full", bytes(vda0), None, bytes(vdb[0]), full_chain("cp0"))
    add(60, "inc", bytes(vda1), bytes(vda0), bytes(vdb[1]), inc_chain(points[0].path, "cp0", "cp1", 1))
    add(120, "inc", bytes(vda2), bytes(vda1), bytes(vdb[2]), inc_chain(points[1].path, "cp1", "cp2", 2))
    diff = catalog.chain_record("diff", "cp3", "cp0", points[0].path.name, reader.file_sha256(str(points[0].path)),
                                depth=1)
    add(180, "diff", bytes(vda3), bytes(vda0), bytes(vdb[3]), diff)
    return points


def flip_byte(path: Path) -> None:
    """Damage an archive in the middle of its file (a compressed block: decompression or a checksum fails)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
