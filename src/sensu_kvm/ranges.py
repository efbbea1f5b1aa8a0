"""Threshold ranges in the monitoring-plugins grammar: ``[@][start:][end]``.

``10`` alerts outside 0..10, ``10:`` below 10, ``~:10`` above 10, ``10:20`` outside 10..20,
``@10:20`` inside 10..20.  ``~`` stands for minus infinity, an empty end for plus infinity.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class RangeError(ValueError):
    """A range that does not follow the grammar."""


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RangeError(f"invalid range '{whole}': '{text}' is not a number") from None
    if math.isnan(value):
        raise RangeError(f"invalid range '{whole}': '{text}' is not a number")
    return value


class Range(NamedTuple):
    """A parsed threshold range; ``violated(value)`` says whether the value alerts."""

    start: float
    end: float
    inside: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Range:
        spec = text.strip()
        if not spec:
            raise RangeError("invalid range '': empty")
        inside = spec.startswith("@")
        if inside:
            spec = spec[1:]
        if ":" in spec:
            low, _, high = spec.partition(":")
            if ":" in high:
                raise RangeError(f"invalid range '{text}': more than one ':'")
            if low == "~":
                start = -math.inf
            elif low == "":
                start = 0.0
            else:
                start = _number(low, text)
            end = math.inf if high == "" else _number(high, text)
        else:
            start = 0.0
            end = _number(spec, text)
        if start > end:
            raise RangeError(f"invalid range '{text}': start {start:g} is above end {end:g}")
        return cls(start, end, inside, text.strip())

    def violated(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __str__(self) -> str:
        return self.text
