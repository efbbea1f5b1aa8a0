"""What every per-domain check shares: choosing the domains, and turning verdicts into a report."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from sensu_kvm import activity, states, virt
from sensu_kvm.contexts import Measurement
from sensu_kvm.names import Names, entity_name, perf_label, visible
from sensu_kvm.output import Finding, Perf, Report, Status, summarise
from sensu_kvm.plugin import select
from sensu_kvm.virt import DomainRecord


class Verdict(NamedTuple):
    """One domain's finding and its measurements (which give its perfdata)."""

    finding: Finding
    measurements: Sequence[Measurement] = ()
    pending: bool = False  # a rate check: some of its rates come only with the next sample

    @property
    def perfdata(self) -> list[Perf]:
        return [m.perf() for m in self.measurements]

    def of(self, metric: str) -> list[Measurement]:
        """The measurements of one metric."""
        return [m for m in self.measurements if m.metric == metric]


def choose(records: Sequence[DomainRecord], options: argparse.Namespace,
           names: Names | None = None) -> tuple[list[DomainRecord], list[str]]:
    """The records that -d/--match/--exclude select, and the names given with -d that do not exist.

    Every record first gets the host's :class:`Names` (``names``, else made here), made from all
    of them, so that a domain's label, text and entity never depend on which domains a run selects.
    """
    names = names if names is not None else Names.of(records)
    for record in records:
        record.names = names
    by_name = {r.name: r for r in records}
    chosen = [by_name[n] for n in select(list(by_name), options)]
    missing = [n for n in dict.fromkeys(options.domain) if n not in names]
    return chosen, missing


def read(conn: Any, groups: Sequence[str], options: argparse.Namespace,
         fill: bool = True, extra: int = 0) -> tuple[list[DomainRecord], list[str]]:
    """The records, with their statistics, of the domains that -d/--match/--exclude select, and
    the names given with -d that do not exist (as ``choose``).

    With a selection only the selected domains' statistics are read: one listing gives every
    name and UUID, for the host's :class:`Names`, and the statistics calls ask for the chosen
    domains alone (``-d web1`` on a host of 10,000 reads one domain, not 10,000).
    """
    if not (options.domain or options.match or options.exclude):
        return choose(virt.gather(conn, groups, fill, extra=extra), options)
    activity.doing("listing the domains")
    try:
        doms = conn.listAllDomains(0)
    except virt.libvirtError as err:
        raise virt.translate(err, "cannot list domains") from err
    names = Names((d.name(), d.UUIDString()) for d in doms)
    keep = set(select([d.name() for d in doms], options))
    return choose(virt.gather(conn, groups, fill, [d for d in doms if d.name() in keep], extra), options, names)


def is_active(record: DomainRecord) -> bool:
    """Whether the domain has a running QEMU (running, blocked, paused, shutting down, pmsuspended)."""
    return record.stats.get("state.state") not in (states.SHUTOFF, states.CRASHED, states.NOSTATE, None)


def not_running(record: DomainRecord) -> Verdict:
    state = record.stats.get("state.state")
    word = states.state_name(state) if isinstance(state, int) else "in no known state"
    return Verdict(Finding(record.name, Status.OK, f"{record.text} {word}: not measured"))


def unreadable(record: DomainRecord) -> Verdict:
    return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {record.error}"))


def late(record: DomainRecord, phase: str) -> Verdict:
    """UNKNOWN: the domain was not read before the time budget ran out, during ``phase``."""
    return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {virt.late_error(phase)}"))


def with_entity(record: DomainRecord, verdict: Verdict) -> Verdict:
    """The verdict with the record's Sensu entity name in its finding (for --per-domain)."""
    return verdict._replace(finding=verdict.finding._replace(entity=record.entity))


def judge_each(records: Iterable[DomainRecord], judge: Callable[[DomainRecord], Verdict],
               active_only: bool = True, phase: str | None = None) -> list[Verdict]:
    """Judge every record; unreadable ones are UNKNOWN, inactive ones are not measured.

    With a ``phase`` (what the judging reads per domain: "reading disk errors") ``judge`` makes
    libvirt calls: it runs on concurrent calls (virt.in_parallel) within the time budget, and a
    domain not judged when the budget runs out is UNKNOWN, not read. ``judge`` must not raise.
    """
    given = list(records)
    verdicts: list[Verdict | None] = []
    asked: list[int] = []
    for record in given:
        if record.error:
            verdicts.append(unreadable(record))
        elif active_only and not is_active(record):
            verdicts.append(not_running(record))
        elif phase is None:
            verdicts.append(judge(record))
        else:
            asked.append(len(verdicts))
            verdicts.append(None)
    if asked:
        text = f"{phase} of {len(asked)} domain{'s' if len(asked) != 1 else ''}"
        answers = virt.in_parallel(judge, [given[i] for i in asked], virt.concurrency(), text)
        for i, answer in zip(asked, answers):
            verdicts[i] = late(given[i], text) if answer is virt.LATE else answer
    return [with_entity(r, v) for r, v in zip(given, verdicts) if v is not None]


def in_order(measurements: Iterable[Measurement]) -> list[Measurement]:
    """Measurements in a fixed order whatever the order of the domains: by domain (its label),
    then metric (in the order the check measures a domain's metrics), then device."""
    given = list(measurements)
    rank: dict[tuple[str, str], int] = {}
    for m in given:
        rank.setdefault((m.domain, m.metric), len(rank))
    return sorted(given, key=lambda m: (m.domain, rank[(m.domain, m.metric)], m.device))


def report(verdicts: Sequence[Verdict], missing: Sequence[str], options: argparse.Namespace, ok_summary: str,
           extra_perf: Sequence[Perf] = ()) -> Report:
    """The check's report: worst status, the summary, a line per domain not OK, all perfdata."""
    findings = [v.finding for v in verdicts] + [Finding(n, Status.CRITICAL, f"{visible(n)} not found", entity_name(n))
                                                for n in missing]
    status, problems, details = summarise(findings, "domain", options.verbose)
    late = activity.late_phases()
    if late:  # the time budget ran out: what was measured is judged, the rest named UNKNOWN
        unread = sum(1 for f in findings if virt.LATE_MARK in f.text)
        problems = (f"time ran out while {late[0]} ({unread} of {len(findings)} domains not read within "
                    f"-t {options.timeout:g}s); " + problems).rstrip("; ")
    if len(findings) == 1 and not late:
        summary = findings[0].text
    elif problems:
        summary = problems
    elif not findings and (options.match or options.exclude):
        return Report(Status.UNKNOWN, "no domain matches --match/--exclude")
    elif not findings:
        summary = "no domains defined"
    else:
        summary = ok_summary
    measured = in_order(m for v in verdicts for m in v.measurements)
    perf = [m.perf() for m in measured]
    return Report(status, summary, [*perf, *extra_perf], details, findings=findings,
                  aggregates=[*extra_perf, *highest(measured)])


def highest(measurements: Sequence[Measurement]) -> list[Perf]:
    """``<metric>_max``: each metric's highest value over the domains, with its thresholds and
    bounds, in the order the metrics were measured (the perfdata --max-output keeps)."""
    top: dict[str, Measurement] = {}
    for m in measurements:
        if math.isfinite(m.value) and (m.metric not in top or m.reported > top[m.metric].reported):
            top[m.metric] = m
    return [m.perf()._replace(label=perf_label(f"{metric}_max")) for metric, m in top.items()]
