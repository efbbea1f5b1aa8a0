"""check-memory-percent: memory (or swap) used in %, run inside a guest by its Sensu client."""

from __future__ import annotations

import argparse

import psutil

from sensu_kvm.contexts import Context
from sensu_kvm.output import Report
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "MEM"

EXAMPLES = """\
  check-memory-percent -w 80 -c 90     as the classic check-memory-percent.rb -w 80 -c 90
  check-memory-percent --swap -w 50 -c 80"""

DESCRIPTION = """\
Memory used in % of the guest's memory (total minus available, as the kernel's MemAvailable
counts it), or with --swap the swap used in %. For the Sensu client inside each guest; it needs
no libvirt. Defaults: WARNING above 80%, CRITICAL above 90%. Perfdata in bytes."""


def evaluate(kind: str, total: int, used: int, options: argparse.Namespace) -> Report:
    """The verdict on memory or swap figures in bytes (pure)."""
    percent = Context(f"{kind}_used_percent", "%", options.warning, options.critical, 0, 100,
                      digits=3)(used / total * 100 if total else 0.0)
    word = "swap" if kind == "swap" else "system memory"
    summary = f"{word} usage: {percent.value:.0f}%" if total else f"no {word} configured"
    measured = [percent, Context(f"{kind}_used", "B", minimum=0, maximum=total)(used),
                Context(f"{kind}_total", "B", minimum=0)(total)]
    return Report(percent.status, summary, [m.perf() for m in measured])


def check(options: argparse.Namespace) -> Report:
    if options.swap:
        swap = psutil.swap_memory()
        return evaluate("swap", swap.total, swap.used, options)
    mem = psutil.virtual_memory()
    return evaluate("memory", mem.total, mem.total - mem.available, options)


def parser() -> CheckParser:
    p = build_parser("check-memory-percent", DESCRIPTION, EXAMPLES, thresholds="memory used in %",
                     warning="80", critical="90", domains=False)
    p.add_argument("--swap", action="store_true", help="judge swap instead of memory")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
