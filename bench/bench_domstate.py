#!/usr/bin/env python3
"""Benchmark check-kvm-domstate's whole-process wall time against three references.

For each size (number of domains) it writes a libvirt test-driver node file, serves it through
the running libvirtd as ``test+unix:///ABS/PATH.xml`` and times, as whole processes:

* check  -- the installed ``check-kvm-domstate -u URI`` (its output is verified: the first line
            must name the right number of domains and the perfdata the right count per state);
* floor  -- ``python -c "import libvirt; libvirt.openReadOnly(URI)"``, the least any Python check
            over libvirt can cost (libvirtd parses the node file again on every connection);
* virsh  -- the classic way: one ``virsh -c URI domstate NAME`` process per domain, in sequence;
            above --virsh-full-max domains a fixed random sample is timed and the total is
            extrapolated (sample time x domains / sample size);
* pyloop -- a Python process that calls ``dom.state()`` for every domain of ``listAllDomains()``.

The floor and the Python loop use the venv's interpreter, the one the check's console script
runs on. A table goes to stdout, progress to stderr; ``--json FILE`` also writes the raw figures.
Exit status 0, or 1 with a one-line error when something fails to run. It is not a test: the
targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

PROG = "bench_domstate.py"
HERE = Path(__file__).resolve().parent
VENV_BIN = HERE.parent / ".venv" / "bin"

# test:runstate values and the words virsh prints for them.
RUNNING, PAUSED, SHUTOFF = 1, 3, 5
VIRSH_WORDS = {RUNNING: "running", PAUSED: "paused", SHUTOFF: "shut off"}
PERF_LABELS = {RUNNING: "running", PAUSED: "paused", SHUTOFF: "shutoff"}

TARGET_FLOOR_SIZE, TARGET_FLOOR_RATIO = 1000, 1.5
TARGET_VIRSH_SIZE, TARGET_VIRSH_SPEEDUP = 100, 50.0

FLOOR_CODE = "import sys, libvirt; libvirt.openReadOnly(sys.argv[1])"
PYLOOP_CODE = """\
import sys, libvirt
conn = libvirt.openReadOnly(sys.argv[1])
tally = {}
for dom in conn.listAllDomains(0):
    state, _reason = dom.state()
    tally[state] = tally.get(state, 0) + 1
print(" ".join(f"{k}={v}" for k, v in sorted(tally.items())))
"""

EPILOG = """\
example:
  bash tests/rig/host-setup.sh        # libvirtd must be running
  .venv/bin/python bench/bench_domstate.py --sizes 10,100,1000 --runs 7 --json /tmp/domstate.json

A full run (10, 100, 1000 domains, 7 runs) takes 75-100 s on 2 cores."""


class BenchError(Exception):
    """Something the benchmark needs failed to run; reported in one line, exit 1."""


def progress(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


# --- node files ---------------------------------------------------------------------------------

def state_of(index: int) -> int:
    """The run state of domain ``index``: 5 % paused, 10 % shut off, the rest running."""
    if index % 20 == 7:
        return PAUSED
    if index % 10 == 3:
        return SHUTOFF
    return RUNNING


def domain_names(count: int) -> list[str]:
    width = max(4, len(str(count - 1)))
    return [f"vm{i:0{width}d}" for i in range(count)]


def write_node(path: Path, count: int, extra: str | Callable[[int, str], str] = "",
               fixed_uuids: bool = False) -> dict[str, int]:
    """Write a test-driver node file with ``count`` domains; returns name -> run state.

    ``extra`` is XML added inside every <domain> ("{name}" stands for its name), or a function of
    the domain's index and name that returns it; with ``fixed_uuids`` each domain gets a UUID
    derived from its name (without one the test driver invents a new UUID on every connection).
    """
    states = {name: state_of(i) for i, name in enumerate(domain_names(count))}
    lines = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        "<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>",
        "  <cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>",
        "  <memory>8388608</memory>",
    ]
    for index, (name, state) in enumerate(states.items()):
        ident = f"<uuid>{uuid.uuid5(uuid.NAMESPACE_DNS, name)}</uuid>" if fixed_uuids else ""
        inside = extra(index, name) if callable(extra) else extra.replace("{name}", name)
        lines.append(f"  <domain type='test'><name>{name}</name>{ident}<memory>131072</memory>"
                     f"<os><type>hvm</type></os>{inside}"
                     f"<test:runstate>{state}</test:runstate></domain>")
    lines.append("</node>\n")
    path.write_text("\n".join(lines), encoding="utf-8")
    return states


# --- running and timing -------------------------------------------------------------------------

@dataclass
class Outcome:
    seconds: float
    returncode: int
    stdout: str
    stderr: str


def run_timed(argv: Sequence[str], timeout: float) -> Outcome:
    """Run one process to completion; its wall time from spawn to exit."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except FileNotFoundError as err:
        raise BenchError(f"cannot run {argv[0]}: {err.strerror}") from err
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"{' '.join(argv[:3])} ... took longer than {timeout:g}s") from err
    return Outcome(time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr)


def first_line(text: str) -> str:
    return text.splitlines()[0] if text.strip() else ""


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def fail(what: str, outcome: Outcome) -> BenchError:
    """The error for a process that failed: the last line of its stderr says why (a traceback's end)."""
    detail = last_line(outcome.stderr) or first_line(outcome.stdout) or "no output"
    return BenchError(f"{what} exited {outcome.returncode}: {detail}")


@dataclass
class Series:
    """Repeated wall times of one method at one size (seconds)."""

    times: list[float] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def minimum(self) -> float:
        return min(self.times)


@dataclass
class Tools:
    python: str
    check: str
    virsh: str
    timeout: float


def perf_counts(line: str) -> dict[str, int]:
    """label -> value of the perfdata after ' | ' on the check's first line."""
    _, _, perf = line.partition(" | ")
    counts = {}
    for item in perf.split():
        label, _, rest = item.partition("=")
        value = rest.split(";", 1)[0]
        if value.isdigit():
            counts[label] = int(value)
    return counts


def perfdata(text: str) -> dict[str, int]:
    """label -> whole-number value of every perfdata item of a check's output: after ' | ' on the
    first line, or, when detail lines follow the first, on a line of its own that starts with '| '."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        if " | " in line or line.startswith("| "):
            found.update(perf_counts(" " + line))
    return found


def run_check(tools: Tools, uri: str, states: dict[str, int]) -> Outcome:
    """One run of the check, its output verified against the node file."""
    out = run_timed([tools.check, "-u", uri], tools.timeout)
    line = first_line(out.stdout)
    count = len(states)
    if not re.search(rf"\b{count} domains?\b", line):
        raise BenchError(f"check-kvm-domstate (exit {out.returncode}) did not report {count} domains: {line[:200]!r}")
    perf = perfdata(out.stdout)
    expected = Counter(states.values())
    for state, label in PERF_LABELS.items():
        if perf.get(label) != expected[state]:
            raise BenchError(f"check-kvm-domstate reported {label}={perf.get(label)}, the node file has {expected[state]}")
    return out


def run_floor(tools: Tools, uri: str) -> Outcome:
    out = run_timed([tools.python, "-c", FLOOR_CODE, uri], tools.timeout)
    if out.returncode != 0:
        raise fail("the floor (openReadOnly)", out)
    return out


def run_pyloop(tools: Tools, uri: str, states: dict[str, int]) -> Outcome:
    out = run_timed([tools.python, "-c", PYLOOP_CODE, uri], tools.timeout)
    if out.returncode != 0:
        raise fail("the Python dom.state() loop", out)
    expected = " ".join(f"{k}={v}" for k, v in sorted(Counter(states.values()).items()))
    if out.stdout.strip() != expected:
        raise BenchError(f"the Python loop saw {out.stdout.strip()!r}, the node file has {expected!r}")
    return out


def run_virsh_loop(tools: Tools, uri: str, names: Sequence[str], states: dict[str, int]) -> float:
    """One virsh domstate process per name, in sequence; the loop's total wall time."""
    start = time.perf_counter()
    for name in names:
        out = run_timed([tools.virsh, "-q", "-c", uri, "domstate", name], tools.timeout)
        if out.returncode != 0:
            raise fail(f"virsh domstate {name}", out)
        word = out.stdout.strip()
        if word != VIRSH_WORDS[states[name]]:
            raise BenchError(f"virsh domstate {name} said {word!r}, the node file has {VIRSH_WORDS[states[name]]!r}")
    return time.perf_counter() - start


@dataclass
class SizeResult:
    domains: int
    uri: str
    check: Series
    floor: Series
    pyloop: Series
    virsh_loop: list[float]          # measured loop totals (sample or all)
    virsh_names: list[str]
    check_first_line: str

    @property
    def virsh_sampled(self) -> bool:
        return len(self.virsh_names) < self.domains

    @property
    def virsh_scale(self) -> float:
        return self.domains / len(self.virsh_names)

    @property
    def virsh_totals(self) -> list[float]:
        """Loop totals for all domains (extrapolated when sampled)."""
        return [t * self.virsh_scale for t in self.virsh_loop]

    @property
    def virsh_median(self) -> float:
        return statistics.median(self.virsh_totals)

    @property
    def paired_ratio(self) -> float:
        """Median of check/floor within each run: runs are interleaved, so this cancels drift."""
        return statistics.median(c / f for c, f in zip(self.check.times, self.floor.times))

    def as_json(self) -> dict[str, Any]:
        def series(s: Series) -> dict[str, Any]:
            return {"times_s": s.times, "median_s": s.median, "min_s": s.minimum, "exit_codes": s.exit_codes}

        return {
            "domains": self.domains,
            "uri": self.uri,
            "check": series(self.check) | {"first_line": self.check_first_line},
            "floor": series(self.floor),
            "pyloop": series(self.pyloop),
            "virsh_loop": {
                "sampled": self.virsh_sampled,
                "processes_per_run": len(self.virsh_names),
                "names": self.virsh_names,
                "measured_loop_s": self.virsh_loop,
                "scale": self.virsh_scale,
                "total_s": self.virsh_totals,
                "median_total_s": self.virsh_median,
                "min_total_s": min(self.virsh_totals),
                "median_per_process_s": statistics.median(self.virsh_loop) / len(self.virsh_names),
            },
            "ratio_check_floor": self.check.median / self.floor.median,
            "ratio_check_floor_paired_median": self.paired_ratio,
            "ratio_check_floor_min_min": self.check.minimum / self.floor.minimum,
            "speedup_check_vs_virsh": self.virsh_median / self.check.median,
            "ratio_check_pyloop": self.check.median / self.pyloop.median,
        }


def measure(tools: Tools, workdir: Path, count: int, runs: int, sample: int, full_max: int) -> SizeResult:
    node = workdir / f"node-{count}.xml"
    states = write_node(node, count)
    uri = f"test+unix://{node}"
    names = list(states)
    sampled = count > full_max
    virsh_names = sorted(random.Random(count).sample(names, min(sample, count))) if sampled else names
    what = f"{len(virsh_names)} of {count} (sampled)" if len(virsh_names) < count else f"all {count}"
    progress(f"{count} domains: {uri}; virsh loop over {what} domains")

    # Warm up once: each method, and one virsh process (page cache, libvirtd's first parse).
    # The floor first: when libvirtd cannot be reached, its error is the plainest.
    run_floor(tools, uri)
    check_out = run_check(tools, uri, states)
    run_pyloop(tools, uri, states)
    run_virsh_loop(tools, uri, virsh_names[:1], states)

    check, floor, pyloop = Series(), Series(), Series()
    virsh_loop: list[float] = []
    for r in range(1, runs + 1):
        # Interleaved so that drift on the machine hits every method alike.
        check_out = run_check(tools, uri, states)
        check.times.append(check_out.seconds)
        check.exit_codes.append(check_out.returncode)
        for series, outcome in ((floor, run_floor(tools, uri)), (pyloop, run_pyloop(tools, uri, states))):
            series.times.append(outcome.seconds)
            series.exit_codes.append(outcome.returncode)
        virsh_loop.append(run_virsh_loop(tools, uri, virsh_names, states))
        progress(f"{count} domains: run {r}/{runs}: check {check.times[-1] * 1000:.0f} ms (exit {check_out.returncode}), "
                 f"floor {floor.times[-1] * 1000:.0f} ms, pyloop {pyloop.times[-1] * 1000:.0f} ms, "
                 f"virsh loop {virsh_loop[-1]:.2f} s")
    return SizeResult(count, uri, check, floor, pyloop, virsh_loop, virsh_names, first_line(check_out.stdout))


# --- report -------------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def speed(factor: float) -> str:
    return f"{factor:.1f}x" if factor < 10 else f"{factor:.0f}x"


def table(results: Sequence[SizeResult]) -> str:
    header = ["domains", "check med (min)", "floor med (min)", "check/floor",
              "virsh loop", "speedup vs virsh", "pyloop med (min)", "check/pyloop"]
    rows = []
    for r in results:
        virsh = (f"{r.virsh_median:.2f} s*" if r.virsh_sampled else f"{r.virsh_median:.2f} s")
        rows.append([
            str(r.domains),
            f"{ms(r.check.median)} ({ms(r.check.minimum)})",
            f"{ms(r.floor.median)} ({ms(r.floor.minimum)})",
            f"{r.check.median / r.floor.median:.2f}x",
            virsh,
            speed(r.virsh_median / r.check.median),
            f"{ms(r.pyloop.median)} ({ms(r.pyloop.minimum)})",
            f"{r.check.median / r.pyloop.median:.2f}x",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def notes(results: Sequence[SizeResult], runs: int) -> list[str]:
    out = [f"median and min of {runs} run{'s' if runs != 1 else ''} after one warm-up; whole-process wall time, "
           "runs interleaved."]
    out.append("check/floor is the ratio of the medians; the same ratio taken within each run, then the median: "
               + ", ".join(f"{r.paired_ratio:.2f}x at {r.domains}" for r in results) + ".")
    for r in results:
        if r.virsh_sampled:
            per = statistics.median(r.virsh_loop) / len(r.virsh_names)
            out.append(f"* virsh at {r.domains} domains: EXTRAPOLATED. {len(r.virsh_names)} of {r.domains} domains "
                       f"timed (fixed random sample), loop time x {r.virsh_scale:g}; "
                       f"{per * 1000:.0f} ms per virsh process.")
        else:
            per = statistics.median(r.virsh_loop) / r.domains
            out.append(f"  virsh at {r.domains} domains: all {r.domains} processes run, {per * 1000:.0f} ms each.")
    codes = sorted({c for r in results for c in r.check.exit_codes})
    out.append(f"check exit codes seen: {codes} (1 = WARNING: the node files hold paused domains, by design).")
    return out


def targets(results: Sequence[SizeResult]) -> list[dict[str, Any]]:
    by_size = {r.domains: r for r in results}
    found = []
    if TARGET_FLOOR_SIZE in by_size:
        r = by_size[TARGET_FLOOR_SIZE]
        value = r.check.median / r.floor.median
        found.append({"target": f"check <= {TARGET_FLOOR_RATIO}x floor at {TARGET_FLOOR_SIZE} domains",
                      "value": round(value, 3), "met": value <= TARGET_FLOOR_RATIO,
                      "text": f"{value:.2f}x (paired {r.paired_ratio:.2f}x, min/min {r.check.minimum / r.floor.minimum:.2f}x)"})
    if TARGET_VIRSH_SIZE in by_size:
        r = by_size[TARGET_VIRSH_SIZE]
        value = r.virsh_median / r.check.median
        sampled = " (virsh extrapolated)" if r.virsh_sampled else ""
        found.append({"target": f"check >= {TARGET_VIRSH_SPEEDUP:g}x faster than the virsh loop at {TARGET_VIRSH_SIZE} domains",
                      "value": round(value, 1), "met": value >= TARGET_VIRSH_SPEEDUP, "text": f"{speed(value)}{sampled}"})
    return found


def machine(tools: Tools) -> dict[str, Any]:
    def output(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    os_name = "?"
    try:
        fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        os_name = fields.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        pass
    return {
        "os": os_name,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": output([tools.python, "-c", "import sys; print(sys.version.split()[0])"]),
        "libvirt_python": output([tools.python, "-c",
                                  "import importlib.metadata as m; print(m.version('libvirt-python'))"]),
        "virsh": output([tools.virsh, "--version"]),
        "libvirtd": output(["libvirtd", "--version"]),
        "check": output([tools.check, "--version"]),
        "project_head": output(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"]),
    }


# --- command line -------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': sizes must be at least 1")
    return sizes


class Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr and exit 1, like any other failure."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
        sys.exit(1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    default_python = VENV_BIN / "python"
    default_check = VENV_BIN / "check-kvm-domstate"
    p = Parser(
        prog=PROG,
        description="Whole-process wall time of check-kvm-domstate over all domains of a libvirt test-driver "
                    "node file served by libvirtd, against the floor (python: import libvirt; openReadOnly), "
                    "one 'virsh domstate NAME' process per domain, and a Python dom.state() loop.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=sizes_arg, default=[10, 100, 1000], metavar="N,N,...",
                   help="numbers of domains (default: 10,100,1000)")
    p.add_argument("--runs", type=positive_int, default=7, metavar="N", help="timed runs per method and size (default: 7)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the raw figures as JSON to FILE")
    p.add_argument("--virsh-full-max", type=positive_int, default=100, metavar="N",
                   help="run virsh for every domain up to N domains; above, time a sample (default: 100)")
    p.add_argument("--virsh-sample", type=positive_int, default=20, metavar="N",
                   help="domains timed with virsh above --virsh-full-max, then extrapolated (default: 20)")
    p.add_argument("--python", default=str(default_python if default_python.exists() else sys.executable),
                   help=f"interpreter for the floor and the Python loop (default: {default_python})")
    p.add_argument("--check", default=str(default_check),
                   help=f"the check's console script (default: {default_check})")
    p.add_argument("--virsh", default=shutil.which("virsh") or "virsh", help="virsh binary (default: from PATH)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up on any one process after this long (default: 300)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = Tools(args.python, args.check, args.virsh, args.timeout)
    for path, what in ((tools.python, "--python"), (tools.check, "--check")):
        if not os.access(path, os.X_OK):
            raise BenchError(f"{what} {path} is not an executable file (run: make -C {HERE.parent} setup)")
    if shutil.which(tools.virsh) is None:
        raise BenchError(f"virsh not found ({tools.virsh}); install libvirt-clients")

    if args.json is not None and not os.access(args.json.parent, os.W_OK):
        raise BenchError(f"--json {args.json}: cannot write in {args.json.parent}")

    started = time.time()
    info = machine(tools)
    progress(f"{info['os']}, {info['cpus']} CPUs, {info['libvirtd']}, libvirt-python {info['libvirt_python']}, "
             f"Python {info['python']}")
    results: list[SizeResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-domstate-"))
    try:
        os.chmod(workdir, 0o755)  # libvirtd reads the node files (it runs as root: belt and braces)
        for count in args.sizes:
            results.append(measure(tools, workdir, count, args.runs, args.virsh_sample, args.virsh_full_max))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.time() - started

    print(f"check-kvm-domstate over all domains, libvirtd test driver (test+unix://.../node.xml); "
          f"{info['os']}, {info['cpus']} CPUs, {info['libvirtd']}, Python {info['python']}")
    print(table(results))
    for line in notes(results, args.runs):
        print(line)
    found = targets(results)
    for t in found:
        print(f"target: {t['target']}: {t['text']} -> {'MET' if t['met'] else 'NOT MET'}")
    print(f"total benchmark time {elapsed:.0f} s")

    if args.json is not None:
        document = {
            "benchmark": "check-kvm-domstate whole-process wall time",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "runs": args.runs,
            "machine": info,
            "commands": {
                "check": [tools.check, "-u", "URI"],
                "floor": [tools.python, "-c", FLOOR_CODE, "URI"],
                "pyloop": [tools.python, "-c", PYLOOP_CODE, "URI"],
                "virsh": [tools.virsh, "-q", "-c", "URI", "domstate", "NAME"],
            },
            "results": [r.as_json() for r in results],
            "targets": found,
            "elapsed_s": elapsed,
        }
        write_json(args.json, document, 2)
    return 0


def write_json(path: Path, document: dict[str, Any], indent: int) -> None:
    """The raw figures, to --json."""
    try:
        path.write_text(json.dumps(document, indent=indent) + "\n", encoding="utf-8")
    except OSError as err:
        raise BenchError(f"cannot write {path}: {err.strerror}") from err
    progress(f"raw figures written to {path}")


def run_main(main: Callable[[], int], prog: str) -> NoReturn:
    """Run a benchmark's main: its exit code; one line and exit 1 on an error or Ctrl-C."""
    try:
        sys.exit(main())
    except BenchError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: error: interrupted\n")
        sys.exit(1)


if __name__ == "__main__":
    run_main(main, PROG)
