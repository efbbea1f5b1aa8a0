"""What the per-device rate checks share (check-kvm-blkstat's disks, check-kvm-netstat's
interfaces): metrics chosen with -m and judged with -w/-c, rates per domain and device between
runs (sensu_kvm.statefile), a device option whose unknown names are UNKNOWN, and the report.

A check describes its devices with a :class:`Kind`; the functions here do the rest, so the two
checks judge, word and label their devices the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sensu_kvm import virt
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, is_active, judge_each, report
from sensu_kvm.output import Finding, Report, Status, worst
from sensu_kvm.plugin import CheckParser, build_parser
from sensu_kvm.ranges import Range
from sensu_kvm.statefile import Rate, add_min_interval, sample_domains


class Metric(NamedTuple):
    name: str
    uom: str
    text: str
    rate: bool = True


Devices = list[tuple[str, dict[str, Any]]]


class Kind(NamedTuple):
    """One kind of device: what the check keeps, reads and judges of it."""

    check: str  # the state file's name
    group: str  # the statistics group read (virt.GROUPS)
    noun: str  # "disk", "interface"
    option: str  # the option that names devices: "--device"
    dest: str  # its attribute in the options
    metrics: Mapping[str, Metric]
    counters: tuple[str, ...]  # the counters kept between runs
    find: Callable[[virt.DomainRecord], Devices]  # (name, its statistics) of each device measured
    values: Callable[[Rate, dict[str, Any]], dict[str, float]]  # every metric of one device
    defaults: Mapping[str, tuple[str, str]] = {}  # default -w/-c of a metric
    skipped: Callable[[virt.DomainRecord], str] | None = None  # what is not measured, said in the line
    counted: str | None = None  # a perfdata item with the number of devices measured, on every run


def contexts(kind: Kind, options: argparse.Namespace) -> dict[str, Context]:
    """Every metric's context; -w/-c are the thresholds of the one chosen with -m."""
    return {m.name: Context(m.name, m.uom, options.warning if m.name == options.metric else None,
                            options.critical if m.name == options.metric else None, 0,
                            digits=3)
            for m in kind.metrics.values()}


def judge_domain(kind: Kind, record: virt.DomainRecord, found: Mapping[str, Rate], options: argparse.Namespace,
                 of: dict[str, Context] | None = None) -> Verdict:
    """The verdict on one domain's devices from each device's rates, keyed UUID/device (pure);
    ``of`` is ``contexts(kind, options)``, made once for all domains."""
    shown, chosen = record.text, options.metric
    of = of or contexts(kind, options)
    wanted = getattr(options, kind.dest)
    statuses, parts, measured = [Status.OK], [], []
    whys, overs, noted = [], [], False
    for device, stats in kind.find(record):
        if wanted and device not in wanted:
            continue
        rate = found.get(f"{record.uuid}/{device}", Rate(None))
        values_of = kind.values(rate, stats)
        if rate.per_second is None:
            whys.append(rate.reason)
        else:
            overs.append(rate.over())
            noted = noted or bool(rate.note)
        measured += [of[metric](values_of[metric], record.label, device) for metric in kind.metrics if metric in values_of]
        if chosen in values_of:
            judged = of[chosen](values_of[chosen], record.label, device)
            statuses.append(judged.status)
            parts.append(f"{device} {chosen} {judged.value:.1f}{judged.uom}")
    skipped = kind.skipped(record) if kind.skipped else ""
    if not parts and not whys:
        text = f"{shown}: no {kind.noun}s measured" + (f" ({skipped})" if skipped else "")
        return Verdict(Finding(record.name, Status.OK, text), measured)
    text = f"{shown}: " + ", ".join(parts) if parts else f"{shown}:"
    if overs and kind.metrics[chosen].rate:
        text += f" ({'; '.join(dict.fromkeys(overs))})"
    elif noted:  # perfdata of rates that are not new
        text += f" (rates: {'; '.join(dict.fromkeys(overs))})"
    if whys:
        text += ("; " if parts else " ") + f"{'; '.join(dict.fromkeys(whys))}, rates on the next run"
    if skipped:
        text += f"; {skipped}"
    return Verdict(Finding(record.name, worst(statuses), text), measured, pending=bool(whys))


def unmatched(kind: Kind, records: list[virt.DomainRecord], wanted: list[str], shown: int = 8) -> str:
    """Why the device option is wrong, when a device it names is on none of the running domains
    selected (a typo would otherwise be OK, "no disks measured"); "" when each names a device of
    one of them, or when no domain selected is running (then nothing is measured, and nothing to
    compare)."""
    running = [r for r in records if not r.error and is_active(r)]
    if not wanted or not running:
        return ""
    seen = sorted({device for r in running for device, _stats in kind.find(r)})
    missing = [device for device in dict.fromkeys(wanted) if device not in seen]
    if not missing:
        return ""
    there = ", ".join(seen[:shown]) + (f" and {len(seen) - shown} more" if len(seen) > shown else "")
    listed = f"{kind.noun}s there: {there}" if seen else f"no {kind.noun}s there"
    return (f"{kind.option} {', '.join(missing)}: no such {kind.noun} on the {len(running)} running domain"
            f"{'s' if len(running) > 1 else ''} selected ({listed})")


def samples(kind: Kind, records: list[virt.DomainRecord]) -> dict[str, dict[str, Any]]:
    """The counters kept between runs, per domain UUID and device, with when they were read."""
    return {f"{r.uuid}/{device}": {"t": r.when, **{k: stats[k] for k in kind.counters if k in stats}}
            for r in records for device, stats in kind.find(r)}


def check(kind: Kind, options: argparse.Namespace) -> Report:
    default = kind.defaults.get(options.metric)
    if default and options.warning is None and options.critical is None:
        options.warning, options.critical = Range.parse(default[0]), Range.parse(default[1])
    chosen, missing, _current, found = sample_domains(
        options, kind.check, ["state", kind.group], lambda records: samples(kind, records), list(kind.counters))
    mistaken = unmatched(kind, chosen, getattr(options, kind.dest))
    if mistaken:
        return Report(Status.CRITICAL if missing else Status.UNKNOWN,
                      "; ".join([*(f"{name} not found" for name in missing), mistaken]))
    of = contexts(kind, options)
    verdicts = judge_each(chosen, lambda r: judge_domain(kind, r, found, options, of))
    judged = [m for v in verdicts for m in v.measurements if m.context.judges]
    top = max(judged, key=lambda m: m.reported, default=None)
    ok_summary = f"{len(judged)} {kind.noun}s measured" + (f", highest {top.label} {top.reported:g}{top.uom}" if top else "")
    rated = [r for r in found.values() if r.per_second is not None]
    if judged and kind.metrics[options.metric].rate and rated and all(r.note for r in rated):
        ok_summary += " (the previous run's rates, see -v)"
    if not judged and any(v.pending for v in verdicts):
        whys = sorted({r.why for r in found.values() if r.why is not None})
        ok_summary = (f"no rates yet ({'; '.join(whys)}), rates on the next run" if whys
                      else "first sample taken, rates on the next run (or use --interval)")
    extra = []
    if kind.counted:  # perfdata even on a first run (Sensu Go's nagios_perfdata wants one item)
        wanted = getattr(options, kind.dest)
        count = sum(1 for r in chosen if not r.error and is_active(r)
                    for device, _stats in kind.find(r) if not wanted or device in wanted)
        extra.append(Context(kind.counted, minimum=0)(count).perf())
    return report(verdicts, missing, options, ok_summary, extra)


def parser(kind: Kind, prog: str, description: str, examples: str, default: str, metavar: str,
           device_help: str) -> CheckParser:
    """The options of a per-device rate check: -m (default ``default``), -w/-c on it, the
    repeatable device option and --min-interval, with the rate options every rate check has."""
    p = build_parser(prog, description, examples, thresholds="the metric chosen with -m", rates=True)
    p.add_argument("-m", "--metric", choices=list(kind.metrics), default=default, metavar="NAME",
                   help=f"what -w/-c judge: {', '.join(kind.metrics)} (default: {default})")
    p.add_argument(kind.option, dest=kind.dest, action="append", default=[], metavar=metavar, help=device_help)
    add_min_interval(p)
    return p
