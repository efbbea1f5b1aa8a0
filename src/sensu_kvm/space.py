"""Free space, one rule for both engines (decision "one free-space rule", docs/decisions.md).

A temporary or external qcow2 overlay needs its metadata when fully mapped (an L2 entry of 8 bytes
and a refcount of 2 bytes per 64 KiB cluster) plus OVERLAY_WRITES of guest writes; every file
system keeps RESERVE free on top of what is planned on it."""

from __future__ import annotations

import os
from collections.abc import Callable

MIB = 1024 * 1024
OVERLAY_WRITES = 256 * MIB  # guest writes an overlay must be able to take before anyone can act
RESERVE = 16 * MIB  # left free on each file system after what is planned on it


def overlay_need(virtual_size: int) -> int:
    """Room for one overlay of an image of ``virtual_size`` bytes."""
    clusters = max(1, virtual_size // (64 * 1024))
    return clusters * 10 + OVERLAY_WRITES


def space_problems(needs: list[tuple[str, int, str]], free_of: Callable[[str], tuple[int, int]]) -> list[str]:
    """``needs`` is (folder, bytes, what for); the file systems that lack room (RESERVE included),
    one line each. Pure but for ``free_of(folder) -> (device, free bytes)``."""
    total: dict[int, int] = {}
    free: dict[int, int] = {}
    where: dict[int, str] = {}
    what: dict[int, list[str]] = {}
    for folder, count, label in needs:
        device, avail = free_of(folder)
        total[device] = total.get(device, RESERVE) + count
        free[device] = avail
        where.setdefault(device, folder)
        what.setdefault(device, [])
        if label not in what[device]:
            what[device].append(label)
    return [f"not enough free space in {where[d]} for the {' and '.join(what[d])}: {free[d] // MIB} MiB free, "
            f"{-(-total[d] // MIB)} MiB needed" for d in total if free[d] < total[d]]


def statvfs_free(folder: str) -> tuple[int, int]:
    """(device, bytes free to unprivileged users) of the file system of ``folder``."""
    info = os.statvfs(folder)
    return os.stat(folder).st_dev, info.f_bavail * info.f_frsize


def data_bytes(path: str) -> int:
    """Bytes a copy of a file reads: its allocated blocks, at most its size (0 when unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return min(st.st_size, st.st_blocks * 512)
