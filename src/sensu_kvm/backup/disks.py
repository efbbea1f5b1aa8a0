"""Which disks of a domain a backup copies, and why the others are left out (pure, on domxml)."""

from __future__ import annotations

from typing import NamedTuple

from sensu_kvm import domxml


class Disk(NamedTuple):
    target: str
    device: str  # disk, cdrom, floppy, lun
    kind: str  # file, block, network, volume
    source: str  # "" when none
    format: str  # raw, qcow2, ...
    copy: bool
    why: str  # why it is not copied ("" when copied)


def why_not_copied(disk: domxml.Disk) -> str:
    if disk.device != "disk":
        return f"a {disk.device}"
    if not disk.source:
        return "no source"
    if disk.readonly:
        return "read-only"
    if disk.shareable:
        return "shareable"
    if disk.kind != "file":
        return f"a {disk.kind} disk (only file images are copied)"
    return ""


def disks_of(xml: str) -> list[Disk]:
    """Every disk of a domain XML, and whether a backup copies it."""
    found = []
    for disk in domxml.disks(xml):
        why = why_not_copied(disk)
        found.append(Disk(disk.target, disk.device, disk.kind, disk.source, disk.format or "raw", not why, why))
    return found
