#!/usr/bin/env python3
"""What one libvirtd can serve: every check and metrics-kvm against the number of domains.

Three parts, each a whole-process wall-time measurement in interleaved rounds against the floor
``python -c "import sys, libvirt; libvirt.openReadOnly(sys.argv[1]).listAllDomains()" URI``:

1. libvirt's test driver, served by the running libvirtd from node files of 10 to 10,000 domains
   (--sizes), with one storage pool of two volumes per POOL_EVERY domains and one interface per
   domain: every check (domstate, memory, vcpu, blkstat, netstat, host, blkerror, guest-agent,
   snapshot-age, backup-age, pool) and metrics-kvm (graphite, its default, and --format
   prometheus) over all domains, each round running every command once and the floor once.
2. With --baseline BIN_DIR, the same commands of another installation (an older commit) in the
   same rounds at 10 and 100 domains: current/baseline per command.
3. With --guests N[,N...], N real no-OS TCG guests on qemu:///system, started by the benchmark
   and always destroyed and undefined at the end (also on Ctrl-C or SIGTERM): the checks, one
   whole metrics-kvm --format prometheus process, one scrape of Debian's
   prometheus-libvirt-exporter (installed if missing) and, when the installed metrics-kvm has
   --listen, one scrape of `metrics-kvm --listen`.

Every output is verified (it must cover the domains it should), and a run that ended in
UNKNOWN because of its timeout ("timed out after") is counted and flagged. A table goes to
stdout, short progress lines to stderr, --json FILE writes the raw figures. Not a test: the
targets are reported as MET / NOT MET; the exit status is 1 (one line on stderr) only when a
command failed to run or gave wrong output.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bench_domstate import (
    PAUSED,
    RUNNING,
    VENV_BIN,
    BenchError,
    Outcome,
    Series,
    Tools,
    first_line,
    last_line,
    machine,
    perfdata,
    positive_int,
    progress,
    run_main,
    run_timed,
    sizes_arg,
    write_json,
    write_node,
)

PROG = "bench_scale.py"
HERE = Path(__file__).resolve().parent
TOP = HERE.parent

FLOOR_CODE = "import sys, libvirt; libvirt.openReadOnly(sys.argv[1]).listAllDomains()"
TIMED_OUT = "timed out after"  # the watchdog's one UNKNOWN line: nothing judged
RAN_OUT = "time ran out"  # a time budget (issue 15): what was read is judged, the rest named UNKNOWN
FLOOR = "floor"

CHECKS = ("check-kvm-domstate", "check-kvm-memory", "check-kvm-vcpu", "check-kvm-blkstat", "check-kvm-netstat",
          "check-kvm-host", "check-kvm-blkerror", "check-kvm-guest-agent", "check-kvm-snapshot-age",
          "check-kvm-backup-age", "check-kvm-pool", "check-kvm-blockjob")
METRICS = ("metrics-kvm", "metrics-kvm --format prometheus", "metrics-kvm --block-jobs")
COMMANDS = CHECKS + METRICS
ONE_SHOT = "metrics-kvm --format prometheus"
EXPORTER = "exporter scrape"
LISTEN = "--listen scrape"

# the targets (issue 15)
TARGET_SIZE = 10_000
TARGET_RATIO, TARGET_RATIO_FAST = 2.0, 1.3
FAST = ("check-kvm-domstate", *METRICS)
TARGET_BASELINE = 1.05  # domstate within 5 % of the baseline at 10 and 100 domains
TARGET_EXPORTER = 1.0  # one whole metrics-kvm process no slower than one exporter scrape
TARGET_LISTEN = 3.0  # one --listen scrape at least 3x faster than the one-shot process

GUEST_PREFIX = "spk-bench-"  # the rig's cleanups of the test suites (spk-test-) leave these alone
HV_URI = "qemu:///system"
HV_LOCK = "/tmp/spk-hv.lock"
SMALL = 100  # sizes up to this many domains get --small-runs rounds
SETTLE = 5.0  # seconds after the guests start, before the first measurement
EXPORTER_BIN = "/usr/bin/prometheus-libvirt-exporter"
EXPORTER_PACKAGE = "prometheus-libvirt-exporter"
SNAPSHOT_EVERY = 10  # one domain in ten has two snapshots (an old one and a recent one)
BACKUP_MISSING_EVERY = 25  # one domain in 25 has no backup
POOL_EVERY = 10  # one storage pool per ten domains (100 at 1,000), each with POOL_VOLUMES volumes
POOL_VOLUMES = 2

EPILOG = f"""\
examples:
  bash tests/rig/host-setup.sh        # libvirtd must be running
  .venv/bin/python bench/bench_scale.py                               # 10 ... 10,000 test-driver domains
  .venv/bin/python bench/bench_scale.py --sizes 10,100,1000 --runs 3 --json /tmp/scale.json
  .venv/bin/python bench/bench_scale.py --sizes 10,100 --baseline /tmp/base/bin
  .venv/bin/python bench/bench_scale.py --sizes none --runs 3 --guests 20,50,100     # real guests only

A baseline installation (the package of an older commit, in a venv of its own), in the checkout:
  git worktree add --detach /tmp/base-src OLD_COMMIT
  python3 -m venv /tmp/base && /tmp/base/bin/pip install -q /tmp/base-src
  git worktree remove /tmp/base-src                   # the venv stays usable
  .venv/bin/python bench/bench_scale.py --sizes 10,100 --baseline /tmp/base/bin

Real guests (--guests) need libvirtd with QEMU (tests/rig/host-setup.sh) and 128 MiB per guest.
The benchmark holds {HV_LOCK} (flock; see --lock) while its guests exist, one guest count at a
time, and releases it between counts. Their names start with {GUEST_PREFIX}; leftovers of a
killed run are removed at the next start.

Time on 2 cores: 10 ... 10,000 domains with --runs 3 about 6 minutes (10,000 domains alone about
5); --guests 20,50 with --runs 3 about 3 minutes more. The floor at 10,000 domains is ~3.6 s here:
libvirtd parses the node file again on every connection."""


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def paired(numer: Sequence[float], denom: Sequence[float]) -> float:
    """The median of the ratios within each round: the rounds are interleaved, so this cancels
    the drift of a shared machine."""
    return statistics.median(n / d for n, d in zip(numer, denom))


# --- what a run must cover ----------------------------------------------------------------------

@dataclass
class Fleet:
    """The domains one libvirt URI serves, and what each command's output must therefore hold."""

    uri: str
    states: dict[str, int]  # name -> state (libvirt's numbers: 1 running, 3 paused, 5 shut off)
    pattern: re.Pattern[str]  # finds these names in an output
    agents: set[str]  # running domains with a guest agent channel
    snapshots: dict[str, int]  # name -> number of snapshots
    backup_dir: Path
    images: bool  # the disk images exist on this host (check-kvm-host reports their file system)
    pools: dict[str, int] = field(default_factory=dict)  # pool name -> its number of volumes (test driver)
    nics: bool = False  # every domain has one interface with a host device (check-kvm-netstat measures it)
    ours: set[str] = field(default_factory=set)  # the names the coverage checks demand (default: all)

    @property
    def wanted(self) -> set[str]:
        return self.ours or set(self.states)

    def active(self) -> set[str]:
        return {n for n in self.wanted if self.states[n] in (RUNNING, PAUSED)}

    def running(self) -> set[str]:
        return {n for n in self.wanted if self.states[n] == RUNNING}


def names_in(fleet: Fleet, text: str) -> set[str]:
    return set(fleet.pattern.findall(text))


def missing(fleet: Fleet, text: str, wanted: set[str]) -> list[str]:
    return sorted(wanted - names_in(fleet, text))


PERF_STATES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")


def judged(command: str, fleet: Fleet) -> set[str]:
    """The domains a per-domain check judges, each named in its output (a perfdata label or a
    detail line), also when its time ran out (then as not read)."""
    if command == "check-kvm-guest-agent":
        return fleet.running() & fleet.agents
    if command in ("check-kvm-snapshot-age", "check-kvm-backup-age"):
        return fleet.wanted
    return fleet.active()  # memory, vcpu, blkstat, netstat, blkerror: the running and paused domains


def pool_error(command: str, text: str, fleet: Fleet) -> str:
    """Why this output does not give every pool of the fleet its number of volumes, or ""."""
    if command == "check-kvm-pool":
        found = dict(re.findall(r"(\S+?)_volumes=(\d+)", text))
    elif "prometheus" in command:
        found = dict(re.findall(r'^kvm_pool_volumes\{pool="([^"]+)"\} (\d+)$', text, re.M))
    else:
        found = dict(re.findall(r"\.pool\.(\S+?)\.volumes (\d+) ", text))
    wrong = sorted(n for n, count in fleet.pools.items() if found.get(n) != str(count))
    return f"{len(wrong)} of {len(fleet.pools)} pools without their number of volumes, e.g. {wrong[0]}" if wrong else ""


def coverage_error(command: str, out: Outcome, fleet: Fleet, warm_up: bool = False, late: bool = False,
                   pools: bool = False) -> str:
    """Why this output does not cover what it should, or "" when it does. A warm-up run of a rate
    check takes its first sample and has no rates yet; a run whose time ran out (``late``) names
    the domains it did not read, with no figures for them. ``pools``: metrics-kvm reports the
    storage pools (an installation before issue 16 does not)."""
    text = out.stdout
    if command == "check-kvm-pool":  # the host's pools, not its domains
        if not first_line(text).startswith("CheckKvmPool "):
            return f"not a check-kvm-pool status line: {first_line(text)[:160]!r}"
        return "" if late else pool_error(command, text, fleet)
    if command == "check-kvm-domstate":  # names only the domains not OK: the counts say the rest
        count = len(fleet.states)
        if not re.search(rf"\b{count} domains?\b", first_line(text)):
            return f"the first line does not name {count} domains: {first_line(text)[:160]!r}"
        perf = perfdata(text)
        have = Counter(fleet.states.values())
        for number, label in enumerate(PERF_STATES):
            if label in perf and perf[label] != have[number] and not late:
                return f"{label}={perf[label]}, the domains are {have[number]}"
        return ""
    if command == "check-kvm-host":  # the host, and the file system of the disk images
        if "memory_used=" not in text:
            return "no memory_used perfdata"
        if fleet.images and not late and not re.search(r"\bfs_\S*_used=", text):
            return "no fs_*_used perfdata for the file system of the disk images"
        return ""
    if command.startswith("metrics-kvm"):
        if out.returncode != 0 and not late:
            return f"exit {out.returncode}: {last_line(out.stderr)[:160]}"
        value = "[01]" if late else "1"  # late: the domains not read have 'up 0'
        if "prometheus" in command:
            up = re.findall(rf'^kvm_domain_up\{{domain="([^"]+)"\}} {value}$', text, re.M)
        else:
            up = re.findall(rf"\.domain\.(\S+?)\.up {value} ", text)
        gone = sorted(fleet.wanted - {n for u in up for n in fleet.pattern.findall(u)})
        if gone:
            return f"{len(gone)} domains without 'up {value}', e.g. {gone[0]}"
        return pool_error(command, text, fleet) if pools and not late else ""
    if command == "check-kvm-netstat" and (warm_up or not fleet.nics):
        # a first sample names no domain (without -v), and a domain without interfaces is not
        # named either: the number of interfaces measured says whether every one was read
        measured = perfdata(text).get("interfaces")
        if measured is None:
            return "no interfaces perfdata"
        if fleet.nics and not late and measured != len(judged(command, fleet)):
            return f"interfaces={measured}, {len(judged(command, fleet))} running and paused domains have one each"
        return ""
    wanted = judged(command, fleet)
    gone = missing(fleet, text, wanted)
    if gone:
        return f"{len(gone)} of {len(wanted)} domains not named, e.g. {gone[0]}"
    if late:
        return ""
    if command == "check-kvm-guest-agent":
        asked = perfdata(text).get("agents_asked")
        if asked is not None and asked != len(wanted):
            return f"agents_asked={asked}, {len(wanted)} running domains have an agent channel"
    if command == "check-kvm-snapshot-age":
        counts = {label: int(value) for label, value in re.findall(r"(\S+?)_snapshots=(\d+)", text)}
        for name in wanted:
            if counts.get(name) != fleet.snapshots.get(name, 0):
                return f"{name}_snapshots={counts.get(name)}, it has {fleet.snapshots.get(name, 0)}"
    item = {"check-kvm-vcpu": "_vcpu_usage=", "check-kvm-blkstat": "_allocation_vda=",
            "check-kvm-netstat": "_rx_drops_ps_", "check-kvm-blockjob": "_chain_depth_vda="}.get(command)
    if item is not None and not warm_up:
        seen = {n for found in re.findall(rf"(\S+?){item}", text) for n in fleet.pattern.findall(found)}
        if wanted - seen:
            return f"{len(wanted - seen)} domains without '{item}' perfdata, e.g. {sorted(wanted - seen)[0]}"
    return ""


@dataclass
class Record:
    """The timed runs of one command (or the floor, or a scrape) at one size."""

    series: Series = field(default_factory=Series)
    timeouts: int = 0  # runs that ended in the watchdog's UNKNOWN ("timed out after")
    late: int = 0  # runs whose time budget ran out ("time ran out": some domains not read)
    first_lines: list[str] = field(default_factory=list)

    def add(self, seconds: float, code: int, ended: str = "", line: str = "") -> None:
        self.series.times.append(seconds)
        self.series.exit_codes.append(code)
        self.timeouts += ended == TIMED_OUT
        self.late += ended == RAN_OUT
        if line and line not in self.first_lines and len(self.first_lines) < 3:
            self.first_lines.append(line[:300])

    def as_json(self) -> dict[str, Any]:
        s = self.series
        return {"times_s": s.times, "median_s": s.median if s.times else None, "min_s": s.minimum if s.times else None,
                "exit_codes": s.exit_codes, "timeouts": self.timeouts, "time_ran_out": self.late,
                "first_lines": self.first_lines}


# --- the commands -------------------------------------------------------------------------------

class Installation:
    """The console scripts of one installation of the package (this tree's venv, or a baseline)."""

    def __init__(self, label: str, bin_dir: Path) -> None:
        self.label = label
        self.bin_dir = bin_dir
        self._help: dict[str, str] = {}

    def script(self, command: str) -> str:
        return str(self.bin_dir / command.split(maxsplit=1)[0])

    def help(self, command: str) -> str:
        name = command.split(maxsplit=1)[0]
        if name not in self._help:
            self._help[name] = run_timed([self.script(name), "--help"], 60).stdout
        return self._help[name]

    def has(self, command: str, option: str) -> bool:
        return re.search(rf"(^|[\s\[,]){re.escape(option)}\b", self.help(command)) is not None

    def default_timeout(self, command: str) -> float:
        """Its -t default, from its --help."""
        found = re.search(r"--timeout SECONDS\s+(.*?)(?:\n  -|\Z)", self.help(command), re.S)
        number = re.search(r"default:\s*([\d.]+)", found.group(1)) if found else None
        return float(number.group(1)) if number else 10.0

    def argv(self, command: str, fleet: Fleet, state_dir: Path) -> list[str]:
        """The command line: every domain of the fleet, the default timeout, a state folder of
        its own for the rate checks (their runs follow each other within a second: with the
        default --min-interval of 5 s they would report the previous rate instead of their own)."""
        argv = [self.script(command), "-u", fleet.uri, *command.split()[1:]]
        if command in ("check-kvm-vcpu", "check-kvm-blkstat", "check-kvm-netstat", "check-kvm-host"):
            argv += ["--state-dir", str(state_dir)]
            if self.has(command, "--min-interval"):
                argv += ["--min-interval", "0.01"]
        elif command == "check-kvm-backup-age":
            argv += ["--backup-dir", str(fleet.backup_dir), "--state-dir", str(state_dir / "kvm-backup")]
        elif command == "check-kvm-blockjob":
            argv += ["--state-dir", str(state_dir), "--backup-state-dir", str(state_dir / "kvm-backup")]
        return argv


def run_floor(tools: Tools, uri: str) -> Outcome:
    out = run_timed([tools.python, "-c", FLOOR_CODE, uri], tools.timeout)
    if out.returncode != 0:
        raise BenchError(f"the floor (openReadOnly + listAllDomains) on {uri} exited {out.returncode}: "
                         f"{last_line(out.stderr) or 'no output'}")
    return out


def run_command(tools: Tools, install: Installation, command: str, fleet: Fleet, state_dir: Path,
                warm_up: bool = False) -> tuple[Outcome, str]:
    """One run, verified; returns it and how its timeout ended it: TIMED_OUT (UNKNOWN, nothing
    judged), RAN_OUT (its time budget ran out: some domains not read) or ""."""
    out = run_timed(install.argv(command, fleet, state_dir), tools.timeout)
    what = f"{command} ({install.label})"
    if "Traceback (most recent call last)" in out.stderr or not 0 <= out.returncode <= 3:
        raise BenchError(f"{what} exited {out.returncode}: {last_line(out.stderr) or first_line(out.stdout) or 'no output'}")
    both = out.stdout + out.stderr
    ended = TIMED_OUT if out.returncode == 3 and TIMED_OUT in both else (RAN_OUT if RAN_OUT in both else "")
    if ended != TIMED_OUT:
        pools = command.startswith("metrics-kvm") and install.has("metrics-kvm", "--no-pools")
        error = coverage_error(command, out, fleet, warm_up, late=ended == RAN_OUT, pools=pools)
        if error:
            raise BenchError(f"{what} on {fleet.uri} gave wrong output (exit {out.returncode}): {error}")
    return out, ended


# --- part 1 and 2: the test driver ---------------------------------------------------------------

def domain_xml_extra(images: Path, when: float) -> Callable[[int, str], str]:
    """Each test domain: 2 vCPUs, a disk (an empty file that exists, so that check-kvm-host finds
    its file system), an interface (check-kvm-netstat; the test driver names it testnet0 and
    makes its counters up; its bulk call has no interface group, so netstat and metrics-kvm
    read it per domain: the live XML, then interfaceStats), a guest agent channel
    (check-kvm-guest-agent asks every running domain; the test driver answers 'not supported'
    at once); one in ten has two snapshots, one eight days old (CRITICAL at the default 7d) and
    one an hour old."""
    def extra(index: int, name: str) -> str:
        xml = (f"<vcpu>2</vcpu><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
               f"<source file='{images / name}.qcow2'/><target dev='vda' bus='virtio'/></disk>"
               "<interface type='ethernet'><model type='virtio'/></interface>"
               "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>")
        if index % SNAPSHOT_EVERY == 1:
            inner = f"<domain type='test'><name>{name}</name><memory>131072</memory><os><type>hvm</type></os></domain>"
            common = ("<state>running</state><memory snapshot='internal'/>"
                      "<disks><disk name='vda' snapshot='internal'/></disks>")
            xml += (f"<test:domainsnapshot><name>old</name><creationTime>{int(when - 8 * 86400)}</creationTime>"
                    f"{common}{inner}<active>0</active></test:domainsnapshot>"
                    f"<test:domainsnapshot><name>recent</name><creationTime>{int(when - 3600)}</creationTime>"
                    f"<parent><name>old</name></parent>{common}{inner}<active>1</active></test:domainsnapshot>")
        return xml
    return extra


def write_backups(folder: Path, names: Sequence[str], when: float) -> None:
    """kvm-backup's archive names (the check reads names and sizes only): every domain but one in
    25 has one, one hour, 30 hours (WARNING) or 60 hours (CRITICAL) old."""
    from sensu_kvm.backup import catalog  # noqa: PLC0415 (the installed package: its naming)

    folder.mkdir()
    for index, name in enumerate(names):
        if index % BACKUP_MISSING_EVERY != 5:
            age = (3600, 30 * 3600, 60 * 3600)[index % 3]
            (folder / catalog.archive_name(name, when - age, "zstd")).write_bytes(b"x" * 100)


def pools_xml(count: int) -> tuple[str, dict[str, int]]:
    """One dir pool per POOL_EVERY domains (at least one), each with POOL_VOLUMES volumes of 1 GiB
    capacity, 512 MiB allocated (the test driver makes every pool 100 GiB): all OK for
    check-kvm-pool. The XML for the node file, and pool name -> number of volumes."""
    pools = {f"pool{n:04d}": POOL_VOLUMES for n in range(max(1, count // POOL_EVERY))}
    parts = []
    for name in pools:
        volumes = "".join(f"<volume type='file'><name>v{v}.qcow2</name><capacity unit='GiB'>1</capacity>"
                          f"<allocation unit='MiB'>512</allocation><target><path>/pools/{name}/v{v}.qcow2</path>"
                          "</target></volume>" for v in range(POOL_VOLUMES))
        parts.append(f"  <pool type='dir'><name>{name}</name><uuid>{uuid.uuid5(uuid.NAMESPACE_DNS, name)}</uuid>"
                     f"<target><path>/pools/{name}</path></target>{volumes}</pool>")
    return "\n".join(parts), pools


def test_fleet(workdir: Path, count: int) -> Fleet:
    here = workdir / f"node-{count}"
    images = here / "images"
    images.mkdir(parents=True)
    when = time.time()
    node = here / "node.xml"
    states = write_node(node, count, domain_xml_extra(images, when), fixed_uuids=True)
    xml, pools = pools_xml(count)
    node.write_text(node.read_text(encoding="utf-8").replace("</node>\n", f"{xml}\n</node>\n"), encoding="utf-8")
    for name in states:
        (images / f"{name}.qcow2").touch()
    write_backups(here / "backups", list(states), when)
    return Fleet(
        uri=f"test+unix://{node}", states=states, pattern=re.compile(r"vm\d{4,}"),
        agents={n for n, s in states.items() if s == RUNNING},
        snapshots={n: 2 for i, n in enumerate(states) if i % SNAPSHOT_EVERY == 1},
        backup_dir=here / "backups", images=True, pools=pools, nics=True)


@dataclass
class SizeResult:
    """One size of one part: the floor and every (installation, command)."""

    domains: int
    uri: str
    records: dict[str, Record]  # "floor", "<command>", "<command> @baseline", scrapes
    notes: list[str] = field(default_factory=list)

    def floor(self) -> Series:
        return self.records[FLOOR].series

    def ratio(self, key: str, against: str = FLOOR) -> float:
        return paired(self.records[key].series.times, self.records[against].series.times)

    def as_json(self) -> dict[str, Any]:
        return {"domains": self.domains, "uri": self.uri, "notes": self.notes,
                "records": {k: r.as_json() for k, r in self.records.items()}}


def key_of(install: Installation, command: str) -> str:
    return command if install.label == "current" else f"{command} @{install.label}"


def measure_rounds(tools: Tools, fleet: Fleet, count: int, items: list[tuple[Installation, str]],
                   extra: dict[str, Callable[[], tuple[float, int, str]]], runs: int, state_root: Path,
                   unit: str = "domains") -> SizeResult:
    """One warm-up, then ``runs`` rounds: the floor, then every item once (their order turned by
    one each round, so that no command always follows the floor)."""
    result = SizeResult(count, fleet.uri, {FLOOR: Record()})
    Step = Callable[[bool], tuple[float, int, str, str]]  # (warm-up?) -> seconds, exit code, how it ended, first line
    steps: list[tuple[str, Step]] = []
    for install, command in items:
        key = key_of(install, command)
        result.records[key] = Record()
        state_dir = state_root / install.label
        state_dir.mkdir(parents=True, exist_ok=True)

        def step(warm_up: bool, install: Installation = install, command: str = command,
                 state_dir: Path = state_dir) -> tuple[float, int, str, str]:
            out, ended = run_command(tools, install, command, fleet, state_dir, warm_up)
            return out.seconds, out.returncode, ended, first_line(out.stdout) or last_line(out.stderr)
        steps.append((key, step))
    for key, get in extra.items():
        result.records[key] = Record()

        def scrape(_warm_up: bool, get: Callable[[], tuple[float, int, str]] = get) -> tuple[float, int, str, str]:
            seconds, code, line = get()
            return seconds, code, "", line
        steps.append((key, scrape))

    started = time.perf_counter()
    run_floor(tools, fleet.uri)
    for _key, call in steps:
        call(True)
    progress(f"{count} {unit}: warm-up done in {time.perf_counter() - started:.0f} s")
    for n in range(runs):
        started = time.perf_counter()
        floor = run_floor(tools, fleet.uri).seconds
        result.records[FLOOR].add(floor, 0)
        order = steps[n % len(steps):] + steps[:n % len(steps)]
        slowest = ("", 0.0)
        for key, call in order:
            seconds, code, ended, line = call(False)
            result.records[key].add(seconds, code, ended, line)
            slowest = max(slowest, (key, seconds), key=lambda x: x[1])
        timeouts = sum(r.timeouts + r.late for r in result.records.values())
        progress(f"{count} {unit}: round {n + 1}/{runs} in {time.perf_counter() - started:.0f} s: floor {fmt_time(floor)}, "
                 f"slowest {slowest[0]} {fmt_time(slowest[1])}" + (f", {timeouts} out of time so far" if timeouts else ""))
    return result


def measure_testdriver(tools: Tools, workdir: Path, count: int, runs: int,
                       installs: list[Installation]) -> SizeResult:
    fleet = test_fleet(workdir, count)
    progress(f"{count} domains: {fleet.uri} ({', '.join(i.label for i in installs)})")
    items = [(install, command) for command in COMMANDS for install in installs]
    return measure_rounds(tools, fleet, count, items, {}, runs, workdir / f"node-{count}" / "state")


# --- part 3: real guests --------------------------------------------------------------------------

@contextlib.contextmanager
def hv_lock(path: str) -> Iterator[None]:
    """The lock every user of the shared libvirtd's real guests takes (flock). Python's files are
    not inherited by children, so no daemon started under it keeps it."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for {path} (another session runs real guests)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the benchmark dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(first: int, taken: set[int]) -> int:
    for port in range(first, first + 100):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise BenchError(f"no free loopback port in {first}-{first + 99} (see --port)")


def http_get(url: str, timeout: float) -> tuple[float, int, str]:
    """One scrape: the wall time of the request and its answer."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = answer.read().decode("utf-8", "replace")
            code = answer.status
    except urllib.error.HTTPError as err:
        return time.perf_counter() - start, err.code, err.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as err:
        raise BenchError(f"GET {url}: {err}") from err
    return time.perf_counter() - start, code, body


class Server:
    """A scrape target the benchmark runs: started, waited for, stopped with SIGTERM."""

    def __init__(self, what: str, argv: list[str], url: str, log: Path) -> None:
        self.what, self.url, self.log = what, url, log
        with open(log, "wb") as sink:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent)  # noqa: PLW1509 (prctl only)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.what} exited {self.proc.returncode}: {self.last_log()}")
            with contextlib.suppress(BenchError):
                _, code, _ = http_get(self.url, 10)
                if code == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"{self.what} did not answer {self.url} within {timeout:g} s: {self.last_log()}")

    def last_log(self) -> str:
        try:
            return last_line(self.log.read_text(errors="replace")) or "no output"
        except OSError:
            return "no log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ensure_exporter() -> str:
    if not os.access(EXPORTER_BIN, os.X_OK):
        progress(f"installing {EXPORTER_PACKAGE} (packaging/install-debs.sh)")
        done = subprocess.run(["bash", str(TOP / "packaging" / "install-debs.sh"), EXPORTER_PACKAGE],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 or not os.access(EXPORTER_BIN, os.X_OK):
            raise BenchError(f"cannot install {EXPORTER_PACKAGE}: {last_line(done.stderr) or 'no output'}")
    return EXPORTER_BIN


def rig_module() -> Any:
    sys.path.insert(0, str(TOP))
    from tests.rig import rig  # noqa: PLC0415 (only the guest part needs libvirt and the rig)
    return rig


def remove_guests(rig: Any, conn: Any) -> list[str]:
    """Destroy our guests on 8 threads (QEMU takes ~1.7 s to exit under TCG), then undefine."""
    doomed = [d for d in conn.listAllDomains(0) if d.name().startswith(GUEST_PREFIX)]
    active = [d for d in doomed if d.isActive()]
    if active:
        with ThreadPoolExecutor(8) as pool:
            for dom in active:
                pool.submit(rig._ignore_gone, dom.destroy)
    return rig.cleanup(conn, GUEST_PREFIX)


def start_guests(rig: Any, conn: Any, images: Path, count: int, load: str = "none") -> list[str]:
    """``count`` guests: no-OS ones (``load`` none), or the rig's tiny Linux guest spinning its
    vCPU (``load`` cpu: a busy TCG host, whose QEMU monitors answer slowly), booted."""
    names = [f"{GUEST_PREFIX}{i:03d}" for i in range(count)]
    kernel, initrd = rig.ensure_guest() if load == "cpu" else (None, None)

    def start(name: str) -> None:
        disk = rig.make_qcow2(images / f"{name}.qcow2", "64M")
        if load == "cpu":
            xml = rig.linux_guest_xml(name, disk, kernel, initrd, "cpu", images / f"{name}.log")
        else:
            xml = rig.noos_domain_xml(name, disk, memory_mib=128)
        conn.defineXML(xml).create()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(start, names))
    if load == "cpu":
        for name in names:
            rig.wait_serial(images / f"{name}.log", timeout=600)
    return names


def guest_fleet(rig: Any, conn: Any, names: list[str], backups: Path) -> Fleet:
    states = {d.name(): d.state()[0] for d in conn.listAllDomains(0)}
    not_running = [n for n in names if states.get(n) != RUNNING]
    if not_running:
        raise BenchError(f"{len(not_running)} guests are not running, e.g. {not_running[0]}")
    write_backups(backups, names, time.time())
    return Fleet(uri=HV_URI, states=states, pattern=re.compile(rf"{GUEST_PREFIX}\d{{3}}"), agents=set(),
                 snapshots={}, backup_dir=backups, images=True, ours=set(names))


def measure_guests(tools: Tools, workdir: Path, count: int, runs: int, install: Installation, lock: str,
                   port: int, checks: bool, load: str = "none") -> SizeResult:
    rig = rig_module()
    rig._silence_libvirt()
    exporter = ensure_exporter()
    listen = install.has("metrics-kvm", "--listen")
    here = workdir / f"guests-{count}"
    here.mkdir()
    servers: list[Server] = []
    with hv_lock(lock):
        conn = rig.connect(HV_URI)
        try:
            left = remove_guests(rig, conn)
            if left:
                progress(f"removed {len(left)} guests left behind by an earlier run")
            with rig.image_dir() as images:
                try:
                    started = time.perf_counter()
                    names = start_guests(rig, conn, images, count, load)
                    progress(f"{count} guests: started in {time.perf_counter() - started:.0f} s; "
                             f"{SETTLE:g} s for SeaBIOS to find nothing to boot")
                    time.sleep(SETTLE)
                    fleet = guest_fleet(rig, conn, names, here / "backups")
                    taken: set[int] = set()
                    exporter_port = free_port(port, taken)
                    servers.append(Server(EXPORTER, [exporter, f"--web.listen-address=127.0.0.1:{exporter_port}",
                                                     f"--libvirt.uri={HV_URI}"],
                                          f"http://127.0.0.1:{exporter_port}/metrics", here / "exporter.log"))
                    if listen:
                        listen_port = free_port(port, taken)
                        servers.append(Server(LISTEN, [install.script("metrics-kvm"), "-u", HV_URI,
                                                       "--listen", f"127.0.0.1:{listen_port}"],
                                              f"http://127.0.0.1:{listen_port}/metrics", here / "listen.log"))
                    notes = other_domains(fleet)
                    for server in list(servers):
                        try:
                            server.wait_ready(60)
                        except BenchError as err:
                            if server.what != EXPORTER:
                                raise
                            notes.append(f"{EXPORTER}: not measured: {err}")
                            progress(notes[-1])
                            server.stop()
                            servers.remove(server)
                    scrapes = {s.what: scraper(s, tools.timeout) for s in servers}
                    commands = COMMANDS if checks else (ONE_SHOT,)
                    result = measure_rounds(tools, fleet, count, [(install, c) for c in commands], scrapes, runs,
                                            here / "state", "guests")
                    result.notes += notes + scrape_notes(servers, fleet, tools.timeout)
                    failed = [c for c in result.records.get(EXPORTER, Record()).series.exit_codes if c != 200]
                    if failed:
                        result.notes.append(f"{EXPORTER}: {len(failed)} of {args_runs(result)} scrapes answered "
                                            f"HTTP {sorted(set(failed))}")
                    if not listen:
                        result.notes.append("the installed metrics-kvm has no --listen: not measured")
                    return result
                finally:
                    for server in servers:
                        server.stop()
                    with ignoring_signals():
                        progress(f"{count} guests: removing them")
                        started = time.perf_counter()
                        remove_guests(rig, conn)
                        progress(f"{count} guests: removed in {time.perf_counter() - started:.0f} s")
        finally:
            conn.close()


def scraper(server: Server, timeout: float) -> Callable[[], tuple[float, int, str]]:
    """One timed GET. An error answer of --listen (ours) ends the benchmark; the exporter's (the
    reference) is recorded with its HTTP status and reported."""
    def scrape() -> tuple[float, int, str]:
        seconds, code, body = http_get(server.url, timeout)
        if code != 200 and server.what == LISTEN:
            raise BenchError(f"{server.what} answered HTTP {code}: {first_line(body)[:160]}")
        return seconds, code, f"{len(body.splitlines())} lines" if code == 200 else f"HTTP {code}: {body[:200]}"
    return scrape


def args_runs(result: SizeResult) -> int:
    return len(result.floor().times)


def other_domains(fleet: Fleet) -> list[str]:
    """The domains of the host that are not the benchmark's (another session's): measured too."""
    others = sorted(set(fleet.states) - fleet.ours)
    if not others:
        return []
    active = [n for n in others if fleet.states[n] in (RUNNING, PAUSED)]
    note = (f"{len(others)} other domains on {HV_URI} ({len(active)} running or paused: "
            f"{', '.join(active[:5]) or 'none'}{' ...' if len(active) > 5 else ''}), measured too")
    progress(note)
    return [note]


def scrape_notes(servers: list[Server], fleet: Fleet, timeout: float) -> list[str]:
    """Whether each scrape target lists every bench guest (reported, not judged: the exporter
    is the baseline, and it is known to leave domains out at 1,000)."""
    notes = []
    for server in servers:
        _, code, body = http_get(server.url, timeout)
        if code != 200:
            notes.append(f"{server.what}: its last answer was HTTP {code}: {first_line(body)[:160]}")
            if server.what == LISTEN:
                raise BenchError(f"metrics-kvm --listen gave wrong output: {notes[-1]}")
            continue
        if server.what == LISTEN:
            seen = set(re.findall(r'^kvm_domain_up\{domain="([^"]+)"\} 1$', body, re.M))
        else:
            seen = set(re.findall(r'domain="([^"]+)"', body))
        found = len(fleet.ours & seen)
        verdict = "lists every one" if found == len(fleet.ours) else f"lists only {found}"
        notes.append(f"{server.what}: of the {len(fleet.ours)} bench guests its answer {verdict} "
                     f"({len(body.splitlines())} lines)")
        if server.what == LISTEN and found != len(fleet.ours):
            raise BenchError(f"metrics-kvm --listen gave wrong output: {notes[-1]}")
    return notes


@contextlib.contextmanager
def ignoring_signals() -> Iterator[None]:
    """The guests' removal is not interrupted by a second Ctrl-C."""
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def interrupt(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# --- report ---------------------------------------------------------------------------------------

def cell(result: SizeResult, key: str, against: str = FLOOR) -> str:
    record = result.records.get(key)
    if record is None or not record.series.times:
        return "-"
    text = f"{fmt_time(record.series.median)} {result.ratio(key, against):5.2f}x"
    return text + (f" T{record.timeouts}" if record.timeouts else "") + (f" P{record.late}" if record.late else "")


def grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in rows]
    return "\n".join(lines)


def codes(record: Record) -> str:
    seen = sorted(set(record.series.exit_codes))
    out = [f"{record.timeouts} timed out"] if record.timeouts else []
    out += [f"{record.late} time ran out"] if record.late else []
    return ",".join(map(str, seen)) + (f" ({', '.join(out)})" if out else "")


def size_table(results: Sequence[SizeResult], keys: Sequence[str], unit: str) -> str:
    header = ["command", *(f"{r.domains} {unit}" for r in results)]
    rows = [["floor", *(fmt_time(r.floor().median) for r in results)]]
    rows += [[key, *(cell(r, key) for r in results)] for key in keys if any(key in r.records for r in results)]
    return grid(header, rows)


def codes_table(results: Sequence[SizeResult], keys: Sequence[str], unit: str, title: str = "exit codes") -> str:
    header = [title, *(f"{r.domains} {unit}" for r in results)]
    rows = [[key, *(codes(r.records[key]) if key in r.records else "-" for r in results)]
            for key in keys if any(key in r.records for r in results)]
    return grid(header, rows)


def baseline_table(results: Sequence[SizeResult], label: str) -> str:
    header = ["command", *(f"{r.domains}: current / {label}" for r in results)]
    rows = []
    for command in COMMANDS:
        row = [command]
        for r in results:
            base = f"{command} @{label}"
            if base not in r.records:
                row.append("-")
                continue
            row.append(f"{fmt_time(r.records[command].series.median)} / {fmt_time(r.records[base].series.median)} "
                       f"= {r.ratio(command, base):.3f}x")
        rows.append(row)
    return grid(header, rows)


def target(text: str, value: str, met: bool | None) -> dict[str, Any]:
    verdict = "NOT MEASURED" if met is None else ("MET" if met else "NOT MET")
    return {"target": text, "value": value, "met": met, "line": f"target: {text}: {value} -> {verdict}"}


def targets(tests: Sequence[SizeResult], base: Sequence[SizeResult], guests: Sequence[SizeResult],
            timeouts: dict[str, float], label: str) -> list[dict[str, Any]]:
    found = []
    if tests:
        at = next((r for r in tests if r.domains == TARGET_SIZE), max(tests, key=lambda r: r.domains))
        for command in COMMANDS:
            limit = TARGET_RATIO_FAST if command in FAST else TARGET_RATIO
            record = at.records[command]
            ratio, median = at.ratio(command), record.series.median
            within = median <= timeouts[command] and record.timeouts == record.late == 0
            found.append(target(f"{command} at {at.domains} domains <= {limit:g}x floor, within -t {timeouts[command]:g}",
                                f"{ratio:.2f}x paired, median {fmt_time(median)}, of {len(record.series.times)} runs "
                                f"{record.timeouts} timed out, {record.late} ran out of time",
                                ratio <= limit and within))
    for r in base:
        key = f"check-kvm-domstate @{label}"
        if key in r.records:
            ratio = r.ratio("check-kvm-domstate", key)
            found.append(target(f"check-kvm-domstate at {r.domains} domains within 5 % of the baseline",
                                f"{ratio:.3f}x", ratio <= TARGET_BASELINE))
    for r in guests:
        if ONE_SHOT not in r.records:  # --commands left it out: nothing to compare the scrapes with
            continue
        what = f"metrics-kvm one-shot <= {TARGET_EXPORTER:g}x one exporter scrape at {r.domains} guests"
        if EXPORTER in r.records:
            ratio = r.ratio(ONE_SHOT, EXPORTER)
            found.append(target(what, f"{ratio:.2f}x", ratio <= TARGET_EXPORTER))
        else:
            found.append(target(what, "the exporter did not answer", None))
        if LISTEN in r.records:
            speedup = paired(r.records[ONE_SHOT].series.times, r.records[LISTEN].series.times)
            found.append(target(f"metrics-kvm --listen scrape >= {TARGET_LISTEN:g}x faster than one-shot at {r.domains} guests",
                                f"{speedup:.1f}x", speedup >= TARGET_LISTEN))
        else:
            found.append(target(f"metrics-kvm --listen scrape >= {TARGET_LISTEN:g}x faster than one-shot at {r.domains} guests",
                                "the installed metrics-kvm has no --listen", None))
    return found


# --- command line ---------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr and exit 1, like any other failure."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
        sys.exit(1)


def test_sizes_arg(text: str) -> list[int]:
    return [] if text.strip().lower() == "none" else sizes_arg(text)


def guests_arg(text: str) -> list[int]:
    counts = sizes_arg(text)
    if max(counts) > 999:
        raise argparse.ArgumentTypeError(f"'{text}': at most 999 guests")
    return counts


def commands_arg(text: str) -> tuple[str, ...]:
    chosen = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in chosen if c not in COMMANDS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"'{text}': not a list of {', '.join(COMMANDS)}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=test_sizes_arg, default=[10, 100, 1000, 10_000], metavar="N,N,...",
                   help="test-driver domain counts (default: 10,100,1000,10000; 'none': real guests only)")
    p.add_argument("--runs", type=positive_int, default=5, metavar="N",
                   help=f"timed rounds per size above {SMALL} domains and per guest count, after one warm-up "
                        "(default: 5)")
    p.add_argument("--small-runs", type=positive_int, default=11, metavar="N",
                   help=f"timed rounds at sizes up to {SMALL} domains instead (default: 11; they take seconds, and "
                        "the 5 %% baseline target needs them)")
    p.add_argument("--baseline", type=Path, metavar="BIN_DIR",
                   help="the bin directory of another installation of the package (an older commit): its commands "
                        "run in the same rounds at --baseline-sizes, current/baseline per command")
    p.add_argument("--baseline-sizes", type=sizes_arg, default=[10, 100], metavar="N,N,...",
                   help="the sizes of --sizes at which the baseline runs too (default: 10,100)")
    p.add_argument("--guests", type=guests_arg, default=[], metavar="N,N,...",
                   help="also N real no-OS TCG guests on qemu:///system (128 MiB each), one count after the other")
    p.add_argument("--guest-load", choices=("none", "cpu"), default="none",
                   help="the real guests: no-OS ones that idle (none, the default), or the tiny Linux guest of "
                        "tests/rig spinning its vCPU (cpu: a busy TCG host, whose QEMU monitors answer slowly)")
    p.add_argument("--guest-scrapes-only", action="store_true",
                   help="on real guests, time only metrics-kvm --format prometheus and the scrapes, not every check")
    p.add_argument("--lock", default=HV_LOCK, metavar="FILE",
                   help=f"the lock held while real guests exist (default: {HV_LOCK})")
    p.add_argument("--port", type=positive_int, default=19600, metavar="PORT",
                   help="the first of 100 loopback ports tried for the exporter and --listen (default: 19600)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the raw figures as JSON to FILE")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on any one process or scrape after this long (default: 120); the commands "
                        "themselves run with their default -t")
    p.add_argument("--bin", type=Path, default=VENV_BIN, metavar="BIN_DIR",
                   help=f"the installation measured (default: {VENV_BIN}, this tree's)")
    p.add_argument("--commands", type=commands_arg, metavar="NAME,NAME,...",
                   help="measure only these of the commands (default: all of them), e.g. "
                        "--commands check-kvm-pool,metrics-kvm")
    p.add_argument("--label", metavar="TEXT",
                   help="what the measured installation is, for the report (e.g. main@4146489; default: its path, "
                        "and this tree's commit for the default --bin)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    global COMMANDS
    args = parse_args(argv)
    if args.commands:
        COMMANDS = args.commands
    python = args.bin / "python"
    tools = Tools(str(python if python.exists() else sys.executable), "", shutil.which("virsh") or "virsh", args.timeout)
    current = Installation("current", args.bin)
    baseline = Installation("baseline", args.baseline) if args.baseline else None
    for install in [current] + ([baseline] if baseline is not None else []):
        for command in COMMANDS:
            if not os.access(install.script(command), os.X_OK):
                raise BenchError(f"{install.script(command)} is not an executable file"
                                 + (f" (run: make -C {TOP} setup)" if install is current else ""))
    if args.json is not None and not os.access(args.json.parent, os.W_OK):
        raise BenchError(f"--json {args.json}: cannot write in {args.json.parent}")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)

    started = time.time()
    info = machine(Tools(tools.python, current.script("check-kvm-domstate"), tools.virsh, 30))
    if baseline is not None:
        info["baseline_check"] = run_timed([baseline.script("check-kvm-domstate"), "--version"], 30).stdout.strip()
    label = args.label or (f"this tree at {info['project_head']}" if args.bin == VENV_BIN else str(args.bin))
    info["measured"] = f"{info['check']} of {label}"
    progress(f"{info['os']}, {info['cpus']} CPUs, {info['libvirtd']}; measured: {info['measured']}")
    timeouts = {c: current.default_timeout(c) for c in COMMANDS}
    tests: list[SizeResult] = []
    guests: list[SizeResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        os.chmod(workdir, 0o755)  # libvirtd reads the node files
        for count in args.sizes:
            with_base = [current] + ([baseline] if baseline is not None and count in args.baseline_sizes else [])
            runs = args.small_runs if count <= SMALL else args.runs
            tests.append(measure_testdriver(tools, workdir, count, runs, with_base))
        for count in args.guests:
            guests.append(measure_guests(tools, workdir, count, args.runs, current, args.lock, args.port,
                                         not args.guest_scrapes_only, args.guest_load))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.time() - started

    def rounds(sizes: Sequence[int]) -> str:
        counts = sorted({args.small_runs if size <= SMALL else args.runs for size in sizes}, reverse=True)
        return f"median of {'/'.join(map(str, counts))} rounds after one warm-up"
    print(f"measured: {info['measured']} (bench_scale.py at {info['project_head']}); {info['os']}, {info['cpus']} CPUs, "
          f"{info['libvirtd']}, "
          f"Python {info['python']}")
    if tests:
        print(f"\nlibvirt test driver through libvirtd (test+unix://.../node.xml): whole-process wall time, "
              f"{rounds([r.domains for r in tests])}; "
              "each cell: median, then the paired ratio to the floor (the median of the ratios within each round); "
              "T<n>: n runs ended in UNKNOWN because of their timeout ('timed out after'), P<n>: in n runs the time "
              "budget ran out and some domains were not read ('time ran out')")
        print(size_table(tests, COMMANDS, "domains"))
        print()
        print(codes_table(tests, COMMANDS, "domains"))
        print("(check-kvm-memory: the test driver has no balloon statistics, so every domain is UNKNOWN by design; "
              "blkstat, blkerror: the test driver's fake disk errors and full allocation)")
    base = [r for r in tests if any(k.endswith(" @baseline") for k in r.records)]
    if base:
        print(f"\nagainst the baseline {args.baseline} ({info['baseline_check']}), same rounds: medians, then the "
              "paired ratio current/baseline")
        print(baseline_table(base, "baseline"))
    if guests:
        keys = [*COMMANDS, EXPORTER, LISTEN]
        kind = "no-OS" if args.guest_load == "none" else "tiny Linux (each spinning its vCPU)"
        print(f"\nreal {kind} TCG guests on {HV_URI} (128 MiB, 1 vCPU, one qcow2 disk each): "
              f"median of {args.runs} rounds after one warm-up; "
              "each cell: median, then the paired ratio to the floor; a scrape is one HTTP GET")
        print(size_table(guests, keys, "guests"))
        print()
        print(codes_table(guests, keys, "guests", "exit codes (scrapes: HTTP status)"))
        for r in guests:
            for note in r.notes:
                print(f"  {r.domains} guests: {note}")
    found = targets(tests, base, guests, timeouts, "baseline")
    print()
    for t in found:
        print(t["line"])
    print(f"total benchmark time {elapsed:.0f} s")

    if args.json is not None:
        document = {
            "benchmark": "bench_scale.py: every check and metrics-kvm against the number of domains",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "runs": args.runs, "machine": info, "floor": [tools.python, "-c", FLOOR_CODE, "URI"],
            "default_timeouts_s": timeouts, "baseline": str(args.baseline) if args.baseline else None,
            "testdriver": [r.as_json() for r in tests], "guests": [r.as_json() for r in guests],
            "targets": found, "elapsed_s": elapsed,
        }
        write_json(args.json, document, 1)
    return 0


if __name__ == "__main__":
    run_main(main, PROG)
