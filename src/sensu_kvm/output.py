"""Statuses, perfdata and the rendering of a check's output (pure, no I/O).

The layout every consumer takes whole (Nagios 3+/4, Icinga 2, Sensu Go's nagios_perfdata; the
rules are in docs/decisions.md, "Issue 13: check output"):

* the status line, at most ``FIRST_LINE_BYTES`` bytes whatever the number of domains;
* then the detail lines (one per domain that is not OK, every domain with -v);
* then the perfdata, every item on one line after the output's only ``|``: on the status line
  itself when the output is that one line and still fits the budget (``TEXT | PERF``), else on
  a line of its own at the end (``TEXT\nDETAILS...\n| PERF``).

With ``--max-output BYTES`` (the shipped Nagios definitions: nagios4 4.4.6 cuts an output above
8 KB in some runs) an output that would be longer keeps its status line, the worst detail lines
that fit, a line saying what was left out, and only the check's aggregate perfdata (``Report.
aggregates``: the counts, and ``<metric>_max`` over the domains), never a part of the per-domain
items: what a scheduler reads is then whole, and the same items from run to run.

Sensu Go splits the whole output on ``|`` and wants exactly two parts, then splits the rest on
single spaces: so no text holds a ``|`` (every line is made visible by ``names.visible``), and
the perfdata is never cut by a line break. Labels never need quoting (``names.label``), so
Sensu Go, which keeps quotes, gets them as Nagios and Icinga 2 do.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sensu_kvm.names import perf_label, visible
from sensu_kvm.ranges import Range

FIRST_LINE_BYTES = 480  # the status line after "<Check> <STATE>: " (the whole line stays under 512 bytes)
SUMMARY_ITEM_BYTES = 100  # one finding's text in the summary
NAME_CHARS = 40  # a domain name longer than this is shortened in the summary (kept whole in details)


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
        label = perf_label(self.label)  # already safe when made by names.label; never quoted
        fields = [
            format_number(self.value) + self.uom,
            "" if self.warning is None else self.warning.text,
            "" if self.critical is None else self.critical.text,
            "" if self.minimum is None else format_number(self.minimum),
            "" if self.maximum is None else format_number(self.maximum),
        ]
        return f"{label}={';'.join(fields).rstrip(';')}"


class Finding(NamedTuple):
    """The verdict on one subject (usually a domain): a status and one line of text.

    ``subject`` is the domain's name as libvirt has it; ``entity`` its Sensu entity name, for
    --per-domain (empty: ``names.entity_name(subject)``).
    """

    subject: str
    status: Status
    text: str
    entity: str = ""


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
    aggregates: Sequence[Perf] | None = None  # what --max-output keeps of the perfdata (None: all of it)

    def render(self, limit: int | None = None, reserve: int = 0) -> str:
        """The output after the ``<Check> <STATE>: `` prefix (see the module's docstring); with
        ``limit``, at most that many bytes with the ``reserve`` bytes of that prefix."""
        if self.raw:
            return self.summary
        first = clip(visible(self.summary), FIRST_LINE_BYTES)
        details = [visible(line) for line in self.details]
        items = [p for p in self.perfdata if _finite(p.value)]  # NaN, infinity: no measurement
        whole = _layout(first, details, items)
        if limit is None or len(whole.encode()) + reserve <= limit:
            return whole
        kept = list(self.perfdata if self.aggregates is None else self.aggregates)
        kept = [p for p in kept if _finite(p.value)]
        room = limit - reserve - len(_layout(first, [], kept).encode()) - NOTE_BYTES
        shown = []
        for line in details:
            room -= len(line.encode()) + 1
            if room < 0:
                break
            shown.append(line)
        left = [f"{len(details) - len(shown)} detail lines"] if len(shown) < len(details) else []
        left += [f"{len(items) - len(kept)} per-domain perfdata items"] if len(kept) < len(items) else []
        note = f"({' and '.join(left)} left out to stay within --max-output {limit} bytes; see -v without it)"
        return _layout(first, [*shown, note], kept)


NOTE_BYTES = 140  # the line --max-output adds, with its newline


def _layout(first: str, details: Sequence[str], items: Sequence[Perf]) -> str:
    perfdata = " ".join(str(p) for p in items)
    if not perfdata:
        return "\n".join([first, *details])
    if not details and len(f"{first} | {perfdata}".encode()) <= FIRST_LINE_BYTES:
        return f"{first} | {perfdata}"
    return "\n".join([first, *details, f"| {perfdata}"])


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary, marked with '…'."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode(errors="ignore") + "…"


def shorten(text: str, name: str) -> str:
    """A finding's text for the summary: a very long domain name shortened, the text cut to
    ``SUMMARY_ITEM_BYTES``."""
    if len(name) > NAME_CHARS and name in text:
        text = text.replace(name, name[:NAME_CHARS - 1] + "…", 1)
    return clip(text, SUMMARY_ITEM_BYTES)


def summarise(findings: Sequence[Finding], noun: str, verbose: bool, shown: int = 3) -> tuple[Status, str, list[str]]:
    """Worst status, a summary naming the worst findings, and one detail line per finding.

    The summary stays short whatever the number of findings: the ``shown`` worst, each cut to
    ``SUMMARY_ITEM_BYTES`` (a very long domain name shortened), then "and N more". Detail lines
    cover the findings that are not OK (every finding with ``verbose``), worst first, whole.
    """
    status = worst(f.status for f in findings)
    ordered = sorted(findings, key=lambda f: (-f.status.rank, f.subject))
    bad = [f for f in ordered if f.status is not Status.OK]
    details = [f"{f.status.name}: {f.text}" for f in (ordered if verbose else bad)]
    if not bad:
        return status, "", details
    head = "; ".join(shorten(visible(f.text), visible(f.subject)) for f in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    plural = noun if len(findings) == 1 else noun + "s"
    return status, f"{len(bad)} of {len(findings)} {plural} not OK: {head}{more}", details
