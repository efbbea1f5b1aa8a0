"""check-kvm-memory: memory used by each domain, in % of what the guest has."""

from __future__ import annotations

import argparse

from sensu_kvm import virt
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, judge_each, read, report
from sensu_kvm.output import Finding, Report, Status
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "CheckKvmMemory"

EXAMPLES = """\
  check-kvm-memory                          every running domain, WARNING above 90%, CRITICAL above 95%
  check-kvm-memory -w 80 -c 90 -d kvm1      one domain, the classic thresholds
  check-kvm-memory --view host              judge the QEMU process's rss against the guest's memory"""

DESCRIPTION = """\
Memory used by each running domain in % of the memory the guest has. The guest view comes from the
balloon driver's statistics (available minus usable, or minus unused) where the guest reports
them (virtio_balloon loaded and a statistics period set on the <memballoon>); otherwise the host
view: the resident size of the QEMU process against the guest's current memory. The output says
which view was used. Defaults: WARNING above 90%, CRITICAL above 95%. Perfdata per domain:
memory_used in % (no maximum: in the host view QEMU's resident size can exceed the guest's
memory); in bytes actual, rss, available, usable, unused, swap in/out; and major faults."""

KIB = 1024
BYTE_FIELDS = ("current", "rss", "available", "usable", "unused", "swap_in", "swap_out")


def contexts(options: argparse.Namespace) -> dict[str, Context]:
    """What the check measures per domain: memory used in %, the balloon's byte fields (perfdata
    ``actual`` is libvirt's ``current``), and major faults. Memory used has no maximum: in the
    host view QEMU's resident size can exceed the guest's memory (measured: 175.8%)."""
    found = {"used": Context("memory_used", "%", options.warning, options.critical, 0, digits=3)}
    found.update({k: Context("actual" if k == "current" else k, "B", minimum=0) for k in BYTE_FIELDS})
    found["major_fault"] = Context("major_faults", "c", minimum=0)
    return found


def judge_domain(record: virt.DomainRecord, options: argparse.Namespace, of: dict[str, Context] | None = None) -> Verdict:
    """The verdict on one running domain from its balloon statistics (pure); ``of`` is
    ``contexts(options)``, made once for all domains."""
    name, shown, stats = record.name, record.text, record.stats
    balloon = {k: stats[f"balloon.{k}"] for k in (*BYTE_FIELDS, "major_fault") if f"balloon.{k}" in stats}
    available = balloon.get("available")
    free = balloon.get("usable", balloon.get("unused"))
    if options.view != "host" and available and free is not None:
        used_kib = available - free
        percent = used_kib / available * 100
        view = f"guest view: {used_kib / KIB:.0f} of {available / KIB:.0f} MiB in use"
    elif balloon.get("rss") and balloon.get("current"):
        percent = balloon["rss"] / balloon["current"] * 100
        view = f"host view: rss {balloon['rss'] / KIB:.0f} of {balloon['current'] / KIB:.0f} MiB"
        if options.view == "guest":
            return Verdict(Finding(name, Status.UNKNOWN, f"{shown}: the guest reports no balloon statistics ({view})"))
    else:
        return Verdict(Finding(name, Status.UNKNOWN, f"{shown}: no balloon statistics"))
    of = of or contexts(options)
    label = record.label
    used = of["used"](percent, label)
    measured = [used, *(of[k](balloon[k] * KIB, label) for k in BYTE_FIELDS if k in balloon)]
    if "major_fault" in balloon:
        measured.append(of["major_fault"](balloon["major_fault"], label))
    return Verdict(Finding(name, used.status, f"{shown} memory {percent:.1f}% used ({view})"), measured)


def check(options: argparse.Namespace) -> Report:
    conn = virt.connect(options.uri)
    try:
        chosen, missing = read(conn, ["state", "balloon"], options)
    finally:
        conn.close()
    of = contexts(options)
    verdicts = judge_each(chosen, lambda r: judge_domain(r, options, of))
    shown = {r.label: r.text for r in chosen}
    used = [(m.reported, shown[m.domain]) for v in verdicts for m in v.of("memory_used")]
    top = max(used, default=None)
    ok_summary = f"{len(used)} domains measured" + (f", highest {top[1]} at {top[0]:.1f}%" if top else "")
    return report(verdicts, missing, options, ok_summary)


def parser() -> CheckParser:
    p = build_parser("check-kvm-memory", DESCRIPTION, EXAMPLES, thresholds="memory used in %",
                     warning="90", critical="95")
    p.add_argument("--view", choices=("auto", "guest", "host"), default="auto",
                   help="auto: the guest's view where it reports one, else the host's (default); "
                        "guest: UNKNOWN where the guest reports none; host: always the host's")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
