"""check-kvm-vcpu: how busy each domain's vCPUs are, and how long they wait for a host CPU."""

from __future__ import annotations

import argparse
from typing import Any

from sensu_kvm import virt
from sensu_kvm.argtypes import count_arg
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, judge_each, report
from sensu_kvm.output import Finding, Report, Status, worst
from sensu_kvm.plugin import CheckParser, add_thresholds, build_parser, run_check
from sensu_kvm.statefile import Rate, add_min_interval, sample_domains

NAME = "CheckKvmVcpu"

EXAMPLES = """\
  check-kvm-vcpu                               usage and steal of every running domain (defaults below)
  check-kvm-vcpu -w 80 -c 95 -d kvm1           thresholds on one domain's vCPU usage in %
  check-kvm-vcpu --steal-warning 5 --steal-critical 20
  check-kvm-vcpu --expect-vcpus 2 --match '^web'
  check-kvm-vcpu --interval 5                  sample twice, 5 s apart, instead of using the last run
  check-kvm-vcpu -v --min-interval 20          rates between runs over at least 20 s"""

DESCRIPTION = """\
vCPU usage of each running domain in % of its vCPUs (vCPU time over elapsed time and vCPU count),
and steal: the time its vCPUs waited for a host CPU (vcpu.N.delay), in %, a sign of host
overcommit. Rates need two samples: the previous run's (kept in --state-dir) or, with --interval,
two taken now. The first run has no rate: it says so and is OK. A domain that restarted starts
a new sample. A rate between runs covers at least --min-interval (5 s): a run that comes sooner
after the last sample (runs that overlap, a retry) reports the previous run's rate, marked so in
its line (see -v), and keeps the older sample for the next run. Defaults: usage WARNING above
95%, steal WARNING above 10% and CRITICAL above 25%. Perfdata per domain: usage %, steal %,
vCPUs current (max: maximum)."""

NS = 1e9
KEYS = ["time", "delay"]


def sample(record: virt.DomainRecord, now: float) -> dict[str, Any]:
    """The counters kept between runs for one domain."""
    stats = record.stats
    vcpus = int(stats.get("vcpu.current", 0))
    times = [stats.get(f"vcpu.{n}.time") for n in range(vcpus)]
    delays = [stats.get(f"vcpu.{n}.delay") for n in range(vcpus)]
    entry: dict[str, Any] = {"t": now, "vcpus": vcpus}
    if vcpus and all(isinstance(t, int) for t in times):
        entry["time"] = sum(times)
    elif "cpu.time" in stats:
        entry["time"] = stats["cpu.time"]
    if vcpus and all(isinstance(d, int) for d in delays):
        entry["delay"] = sum(delays)
    return entry


def contexts(options: argparse.Namespace) -> tuple[Context, Context]:
    """What the check measures per domain: vCPU usage and steal in %; and the vCPU count, whose
    maximum is each domain's own (``VCPUS._replace(maximum=...)``)."""
    return (Context("vcpu_usage", "%", options.warning, options.critical, 0, digits=3),
            Context("vcpu_steal", "%", options.steal_warning, options.steal_critical, 0, digits=3))


VCPUS = Context("vcpus", minimum=0)


def judge_domain(record: virt.DomainRecord, rate: Rate, current: dict[str, Any],
                 options: argparse.Namespace, of: tuple[Context, Context] | None = None) -> Verdict:
    """The verdict on one running domain from its current sample and rates (pure); ``of`` is
    ``contexts(options)``, made once for all domains."""
    name, shown, label = record.name, record.text, record.label
    usage_of, steal_of = of or contexts(options)
    vcpus = current["vcpus"]
    count = VCPUS._replace(maximum=record.stats.get("vcpu.maximum"))(vcpus, label)
    statuses = [Status.OK]
    notes = []
    if options.expect_vcpus is not None and vcpus != options.expect_vcpus:
        statuses.append(Status.WARNING)
        notes.append(f"{vcpus} vCPUs, expected {options.expect_vcpus}")
    if "time" not in current or not vcpus:
        return Verdict(Finding(name, Status.UNKNOWN, f"{shown}: no vCPU statistics"), [count])
    per_second = rate.per_second
    if per_second is None or "time" not in per_second:
        text = f"{shown} {rate.reason}, usage on the next run"
        return Verdict(Finding(name, worst(statuses), "; ".join([text, *notes])), [count])
    usage = usage_of(per_second["time"] / NS / vcpus * 100, label)
    measured = [usage]
    text = f"{shown} vCPU usage {usage.value:.1f}% of {vcpus} vCPU{'s' if vcpus != 1 else ''}"
    if "delay" in per_second:
        steal = steal_of(per_second["delay"] / NS / vcpus * 100, label)
        measured.append(steal)
        text += f", steal {steal.value:.1f}%"
    statuses += [m.status for m in measured]
    text += f" ({rate.over()})"
    return Verdict(Finding(name, worst(statuses), "; ".join([text, *notes])), [*measured, count])


def check(options: argparse.Namespace) -> Report:
    chosen, missing, current, found = sample_domains(
        options, "vcpu", ["state", "vcpu"], lambda records: {r.uuid: sample(r, r.when) for r in records}, KEYS)
    of = contexts(options)
    verdicts = judge_each(chosen, lambda r: judge_domain(r, found[r.uuid], current[r.uuid], options, of))
    usages = [m for v in verdicts for m in v.of("vcpu_usage")]
    busiest = max(usages, key=lambda m: m.reported, default=None)
    if busiest is not None:
        shown = next(r.text for r in chosen if r.label == busiest.domain)
        ok_summary = f"{len(usages)} domains measured, busiest {shown} at {busiest.reported:.1f}%"
        if all(r.note for r in found.values() if r.per_second):
            ok_summary += " (the previous run's rates, see -v)"
    else:
        whys = sorted({r.why for r in found.values() if r.why is not None})
        ok_summary = (f"no usage yet for {len(current)} running domains ({'; '.join(whys)}), usage on the next run"
                      if whys else f"first sample of {len(current)} running domains taken, usage on the next run "
                      "(or use --interval)")
    return report(verdicts, missing, options, ok_summary)


def parser() -> CheckParser:
    p = build_parser("check-kvm-vcpu", DESCRIPTION, EXAMPLES, thresholds="vCPU usage in %", warning="95", rates=True)
    add_thresholds(p, None, "steal", "steal (vCPU wait for a host CPU) in %", "10", "25")
    p.add_argument("--expect-vcpus", type=count_arg, metavar="N", help="WARNING when a domain's current vCPU count is not N")
    add_min_interval(p)
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
