"""Durations as people type them (``90m``, ``12h``, ``3d``, ``1w``, ``1d12h``) and ages as people read
them (``3d 4h``). Hand-written: the grammar is five units, not worth a dependency."""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# patterns, not compiled objects: re compiles each on first use (its cache), not at every check's import
_PART = r"(\d+(?:\.\d+)?)([smhdw])"
_BARE = r"\d+(?:\.\d+)?"
HINT = "a number with a unit s, m, h, d or w, such as 30s, 90m, 12h, 3d, 1w or 1d12h"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: one or more number+unit parts (``1d12h``), or a bare number of seconds.

    Raises ValueError with a message fit for one line."""
    words = text.strip().lower().replace(" ", "")
    if not words:
        raise ValueError(f"empty duration: use {HINT}")
    if re.fullmatch(_BARE, words):
        return float(words)
    total = 0.0
    pos = 0
    for match in re.finditer(_PART, words):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if pos != len(words):
        raise ValueError(f"invalid duration '{text}': use {HINT}")
    return total


def format_age(seconds: float) -> str:
    """The two largest units of an age: ``3d 4h``, ``5h 12m``, ``2m 5s``, ``42s`` (a negative age,
    from a clock that went back, reads ``0s``)."""
    left = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            count, left = divmod(left, size)
            parts.append(f"{count}{unit}")
        elif parts:
            parts.append("")  # keep the second slot for the next unit: '3d 0h' reads as '3d'
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if p)
