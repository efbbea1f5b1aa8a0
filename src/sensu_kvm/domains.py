"""What every per-domain check shares: choosing the domains, and turning verdicts into a report."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from sensu_kvm import states
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
    missing = [n for n in dict.fromkeys(options.domain) if n not in by_name]
    return chosen, missing


def is_active(record: DomainRecord) -> bool:
    """Whether the domain has a running QEMU (running, blocked, paused, shutting down, pmsuspended)."""
    return record.stats.get("state.state") not in (states.SHUTOFF, states.CRASHED, states.NOSTATE, None)


def not_running(record: DomainRecord) -> Verdict:
    state = record.stats.get("state.state")
    word = states.state_name(state) if isinstance(state, int) else "in no known state"
    return Verdict(Finding(record.name, Status.OK, f"{record.text} {word}: not measured"))


def unreadable(record: DomainRecord) -> Verdict:
    return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {record.error}"))


def with_entity(record: DomainRecord, verdict: Verdict) -> Verdict:
    """The verdict with the record's Sensu entity name in its finding (for --per-domain)."""
    return verdict._replace(finding=verdict.finding._replace(entity=record.entity))


def judge_each(records: Iterable[DomainRecord], judge: Callable[[DomainRecord], Verdict],
               active_only: bool = True) -> list[Verdict]:
    """Judge every record; unreadable ones are UNKNOWN, inactive ones are not measured."""
    verdicts = []
    for record in records:
        if record.error:
            verdict = unreadable(record)
        elif active_only and not is_active(record):
            verdict = not_running(record)
        else:
            verdict = judge(record)
        verdicts.append(with_entity(record, verdict))
    return verdicts


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
    if len(findings) == 1:
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
