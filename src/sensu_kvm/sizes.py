"""Byte counts for a person."""

from __future__ import annotations


def size_text(value: float) -> str:
    """Bytes in binary units, one decimal: '5.0 GiB', '15.2 MiB', '0 B' (check-kvm-pool and
    check-kvm-domstate's job progress)."""
    for unit, power in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 2**power:
            return f"{value / 2**power:.1f} {unit}"
    return f"{value:.0f} B"
