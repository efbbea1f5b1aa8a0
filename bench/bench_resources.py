#!/usr/bin/env python3
"""Benchmark: check-kvm-vcpu, check-kvm-blkstat and metrics-kvm against the floor.

Whole-process wall time of each installed command over all domains of a libvirt test-driver node
file served by libvirtd (``test+unix:///path/node.xml``), at 10, 100 and 1,000 domains, against the
floor ``python -c "import libvirt; libvirt.openReadOnly(URI)"`` in the same run. Target: each at
most 2x the floor at 1,000 domains. Not a test: it prints a table and exits 0 (1 when a command
fails or its output is wrong).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench_domstate import (
    SHUTOFF,
    VENV_BIN,
    BenchError,
    Outcome,
    Series,
    Tools,
    fail,
    first_line,
    progress,
    run_floor,
    run_timed,
    write_node,
)

PROG = "bench_resources.py"
COMMANDS = ("check-kvm-vcpu", "check-kvm-blkstat", "metrics-kvm", "metrics-kvm --fill")
TARGETED = COMMANDS[:3]  # --fill is shown for its cost: it reads per domain what the bulk call lacks
EPILOG = """\
example:
  bash tests/rig/host-setup.sh        # libvirtd must be running
  .venv/bin/python bench/bench_resources.py --sizes 10,100,1000 --runs 7 --json /tmp/resources.json"""


DOMAIN_EXTRA = ("<vcpu>2</vcpu><devices><disk type='file' device='disk'><source file='/guest/{name}.img'/>"
                "<target dev='vda' bus='virtio'/></disk></devices>")


def verify(command: str, out: Outcome, states: dict[str, int]) -> None:
    """The output must cover every domain it should: the benchmark proves the command read them all."""
    if command.startswith("metrics-kvm"):
        if out.returncode != 0:
            raise fail(command, out)
        seen = sum(1 for line in out.stdout.splitlines() if line.startswith("kvm_domain,"))
        expected = len(states)
        what = "kvm_domain lines"
    else:
        label = "_vcpu_usage=" if command == "check-kvm-vcpu" else "_allocation_vda="
        seen = out.stdout.count(label)  # the perfdata: on the first line, or on a line of its own after the details
        expected = sum(1 for s in states.values() if s != SHUTOFF)
        what = f"'{label}' perfdata items"
    if seen != expected:
        raise BenchError(f"{command} (exit {out.returncode}) gave {seen} {what}, expected {expected}: "
                         f"{first_line(out.stdout)[:160]!r}")


def measure(tools: Tools, workdir: Path, count: int, runs: int) -> dict[str, Series]:
    node = workdir / f"node-{count}.xml"
    states = write_node(node, count, DOMAIN_EXTRA, fixed_uuids=True)
    uri = f"test+unix://{node}"
    state_dir = workdir / f"state-{count}"
    # The runs follow each other within a second: --min-interval (default 5 s, for runs that overlap)
    # would report the previous run's rates instead of computing each run's own.
    floor = ["--min-interval", "0.01"]
    argv: dict[str, list[str]] = {
        "check-kvm-vcpu": [str(VENV_BIN / "check-kvm-vcpu"), "-u", uri, "--state-dir", str(state_dir), *floor],
        "check-kvm-blkstat": [str(VENV_BIN / "check-kvm-blkstat"), "-u", uri, "--state-dir", str(state_dir),
                              "-m", "write_iops", *floor],
        "metrics-kvm": [str(VENV_BIN / "metrics-kvm"), "-u", uri, "--format", "influxdb"],
        "metrics-kvm --fill": [str(VENV_BIN / "metrics-kvm"), "-u", uri, "--format", "influxdb", "--fill"],
    }
    series = {name: Series() for name in ("floor", *COMMANDS)}
    progress(f"{count} domains: warm-up (the first check runs take their first sample)")
    run_floor(tools, uri)
    for command in COMMANDS:
        run_timed(argv[command], tools.timeout)
    for n in range(1, runs + 1):
        out = run_floor(tools, uri)
        series["floor"].times.append(out.seconds)
        for command in COMMANDS:
            out = run_timed(argv[command], tools.timeout)
            verify(command, out, states)
            series[command].times.append(out.seconds)
            series[command].exit_codes.append(out.returncode)
        progress(f"{count} domains: run {n}/{runs}: " +
                 ", ".join(f"{k} {1000 * v.times[-1]:.0f} ms" for k, v in series.items()))
    return series


def table(results: dict[int, dict[str, Series]]) -> str:
    head = f"{'domains':>7}  {'floor':>14}" + "".join(f"  {c:>26}" for c in COMMANDS)
    rows = [head, "-" * len(head)]
    for count, series in results.items():
        floor = series["floor"].median
        cells = [f"{count:>7}", f"{1000 * floor:>8.0f} ms    "]
        for command in COMMANDS:
            med = series[command].median
            cells.append(f"{1000 * med:>10.0f} ms ({med / floor:4.2f}x floor)")
        rows.append("  ".join(cells))
    return "\n".join(rows)


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' needs whole numbers of at least 1")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_ints, default=[10, 100, 1000], help="domain counts (default 10,100,1000)")
    parser.add_argument("--runs", type=lambda t: positive_ints(t)[0], default=7, help="timed runs per size (default 7)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one process may take (default 120)")
    options = parser.parse_args(argv)
    tools = Tools(python=str(VENV_BIN / "python"), check="", virsh="virsh", timeout=options.timeout)
    workdir = Path(tempfile.mkdtemp(prefix="bench-resources-"))
    workdir.chmod(0o755)
    try:
        results = {count: measure(tools, workdir, count, options.runs) for count in options.sizes}
    except BenchError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"whole-process wall time, median of {options.runs} runs, libvirtd test driver (test+unix://.../node.xml)")
    print(table(results))
    largest = max(results)
    for command in TARGETED:
        ratio = results[largest][command].median / results[largest]["floor"].median
        verdict = "MET" if ratio <= 2 else "NOT MET"
        print(f"target: {command} <= 2x floor at {largest} domains: {ratio:.2f}x -> {verdict}")
    if options.json:
        Path(options.json).write_text(json.dumps(
            {str(c): {k: s.times for k, s in series.items()} for c, series in results.items()}, indent=1))
    return 0



if __name__ == "__main__":
    sys.exit(main())
