"""Statuses, perfdata and the rendering of a check's output (pure, no I/O)."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sensu_kvm.ranges import Range


class Status(enum.IntEnum):
    """Nagios/Sensu exit codes; ``rank`` orders them OK < UNKNOWN < WARNING < CRITICAL."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status, OK for none."""
    return max(statuses, key=lambda s: s.rank, default=Status.OK)


def judge(value: float, warning: Range | None, critical: Range | None) -> Status:
    """The status of one value against optional warning and critical ranges."""
    if critical is not None and critical.violated(value):
        return Status.CRITICAL
    if warning is not None and warning.violated(value):
        return Status.WARNING
    return Status.OK


_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_]+\Z")


def format_number(value: float) -> str:
    """A perfdata number: integers as such, others with at most 3 decimals, never exponents."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return ""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except (TypeError, OverflowError):  # an int too large for a float is still a number
        return isinstance(value, int)


class Perf(NamedTuple):
    """One perfdata item: ``'label'=value[UOM];warn;crit;min;max``."""

    label: str
    value: float
    uom: str = ""
    warning: Range | None = None
    critical: Range | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __str__(self) -> str:
        label = self.label
        if not _PLAIN_LABEL.match(label):
            label = "'" + label.replace("'", "''") + "'"
        fields = [
            format_number(self.value) + self.uom,
            "" if self.warning is None else self.warning.text,
            "" if self.critical is None else self.critical.text,
            "" if self.minimum is None else format_number(self.minimum),
            "" if self.maximum is None else format_number(self.maximum),
        ]
        return f"{label}={';'.join(fields).rstrip(';')}"


class Finding(NamedTuple):
    """The verdict on one subject (usually a domain): a status and one line of text."""

    subject: str
    status: Status
    text: str


class Report(NamedTuple):
    """What a check prints: a status, a summary, perfdata and detail lines.

    ``raw`` reports (metrics) print the summary as it is, without the status prefix; ``findings``
    are the per-domain verdicts that --per-domain sends on.
    """

    status: Status
    summary: str
    perfdata: Sequence[Perf] = ()
    details: Sequence[str] = ()
    raw: bool = False
    findings: Sequence[Finding] = ()  # one per domain, for --per-domain

    def render(self) -> str:
        first = self.summary
        perfdata = [p for p in self.perfdata if _finite(p.value)]  # a NaN or infinity is no measurement
        if perfdata:
            first += " | " + " ".join(str(p) for p in perfdata)
        return "\n".join([first, *self.details])


def summarise(findings: Sequence[Finding], noun: str, verbose: bool, shown: int = 3) -> tuple[Status, str, list[str]]:
    """Worst status, a summary naming the worst findings, and one detail line per finding.

    Detail lines cover the findings that are not OK (every finding with ``verbose``), worst first.
    """
    status = worst(f.status for f in findings)
    ordered = sorted(findings, key=lambda f: (-f.status.rank, f.subject))
    bad = [f for f in ordered if f.status is not Status.OK]
    details = [f"{f.status.name}: {f.text}" for f in (ordered if verbose else bad)]
    if not bad:
        return status, "", details
    head = "; ".join(f.text for f in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    plural = noun if len(findings) == 1 else noun + "s"
    return status, f"{len(bad)} of {len(findings)} {plural} not OK: {head}{more}", details
