"""Reading qcow2 headers in Python: read only, so safe while QEMU has the image open (nothing is
locked or written, and qemu-img is never run on an image in use). The one reader of the header
fields both engines use: virtual size, backing file, snapshot table, external data file."""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from sensu_kvm.errors import ImageError

MAGIC = b"QFI\xfb"
MAX_SNAPSHOTS = 65536  # QEMU's QCOW_MAX_SNAPSHOTS
SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")  # l1 offset, l1 size, id len, name len, date s, ns, clock, vm state, extra


def backing_offset(head: bytes) -> tuple[int, int]:
    """(offset, length) of the backing file name in a qcow2 header ((0, 0) when none)."""
    return int.from_bytes(head[8:16], "big"), int.from_bytes(head[16:20], "big")


def header_problem(head: bytes) -> str:
    """Why an image starting with ``head`` would have QEMU open another file ("" when it would not,
    or is not qcow2): a backing file or an external data file."""
    if head[:4] != MAGIC:
        return ""
    if len(head) < 104:
        return "is a truncated qcow2 image"
    if int.from_bytes(head[8:16], "big"):
        return "is a qcow2 image with a backing file"
    if int.from_bytes(head[4:8], "big") >= 3 and int.from_bytes(head[72:80], "big") & 0x4:
        return "is a qcow2 image with an external data file"
    return ""


def is_qcow2(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def version(path: str) -> int:
    """The qcow2 header's version (2: compat=0.10, 3: compat=1.1); 0 for raw or unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return 0
    return int.from_bytes(head[4:8], "big") if head[:4] == MAGIC and len(head) == 8 else 0


def virtual_size(path: str) -> int:
    """The guest-visible size: the qcow2 header's, or a raw file's size; 0 when unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
        if head[:4] == MAGIC:
            return int.from_bytes(head[24:32], "big")
        return os.stat(path).st_size
    except OSError:
        return 0


def backing_file(path: str) -> str:
    """The backing file name as the header stores it ("" for none, raw or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:4] != MAGIC:
                return ""
            offset, length = backing_offset(head)
            if not offset or not length:
                return ""
            f.seek(offset)
            return f.read(length).decode(errors="replace")
    except OSError:
        return ""


class ImageInfo(NamedTuple):
    path: str
    format: str
    virtual_size: int | None
    disk_size: int | None
    backing: str | None


def read_image(path: str, fmt: str = "") -> ImageInfo:
    """Format, virtual size, disk size and backing file of an image, from its qcow2 header or, for a
    raw file, its size."""
    try:
        st = os.stat(path)
    except OSError:
        return ImageInfo(path, fmt or "?", None, None, None)
    disk_size = st.st_blocks * 512
    try:
        with open(path, "rb") as f:
            head = f.read(72)
            if head[:4] == MAGIC and len(head) >= 32:
                offset, length = backing_offset(head)
                size = int.from_bytes(head[24:32], "big")
                backing = None
                if offset and length:
                    f.seek(offset)
                    backing = f.read(length).decode(errors="replace")
                return ImageInfo(path, "qcow2", size, disk_size, backing)
    except OSError:
        return ImageInfo(path, fmt or "?", None, disk_size, None)
    return ImageInfo(path, fmt or "raw", st.st_size, disk_size, None)


class ImageSnapshot(NamedTuple):
    """One entry of a qcow2 image's snapshot table (what ``qemu-img snapshot -l`` lists)."""

    id: str
    name: str
    date: int  # seconds since the epoch
    vm_state_size: int  # bytes of saved memory (0 for a disk-only tag)


def image_snapshots(path: str) -> list[ImageSnapshot] | None:
    """The snapshot table of a qcow2 image; None for a file that is not qcow2 (such as raw).

    Raises ImageError for a file that cannot be opened or whose header or table is cut short or
    out of range: a damaged image is never taken for one without snapshots.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(72)
            if head[:4] != MAGIC:
                return None
            if len(head) < 72:
                raise ImageError(f"{path}: truncated qcow2 header ({len(head)} of 72 bytes)")
            count, offset = struct.unpack(">IQ", head[60:72])
            if count == 0:
                return []
            if count > MAX_SNAPSHOTS or offset % 8:
                raise ImageError(f"{path}: corrupt qcow2 header ({count} snapshots at offset {offset})")
            f.seek(offset)
            found = []
            for n in range(count):
                entry = f.read(SNAPSHOT_ENTRY.size)
                if len(entry) < SNAPSHOT_ENTRY.size:
                    raise ImageError(f"{path}: truncated qcow2 snapshot table (entry {n + 1} of {count})")
                _l1, _l1size, id_len, name_len, sec, _nsec, _clock, vm_state, extra_len = SNAPSHOT_ENTRY.unpack(entry)
                rest = f.read(extra_len + id_len + name_len)
                if len(rest) < extra_len + id_len + name_len:
                    raise ImageError(f"{path}: truncated qcow2 snapshot table (entry {n + 1} of {count})")
                if extra_len >= 8:  # version 3: the 64-bit size of the saved memory comes first
                    vm_state = struct.unpack(">Q", rest[:8])[0]
                ident = rest[extra_len:extra_len + id_len].decode(errors="replace")
                name = rest[extra_len + id_len:].decode(errors="replace")
                found.append(ImageSnapshot(ident, name, sec, vm_state))
                f.seek(-(SNAPSHOT_ENTRY.size + len(rest)) % 8, os.SEEK_CUR)  # entries are padded to 8 bytes
            return found
    except OSError as err:
        raise ImageError(f"{path}: cannot read the image ({err.strerror or err})") from err
