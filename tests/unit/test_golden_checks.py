"""Golden files of the checks' whole output: the status line, perfdata, detail lines and the
per-domain findings, byte for byte, for a fixed matrix of inputs.

Each check runs in this process (``check(options)``, then the adapter's first line) on:

- libvirt's test driver: ``test:///default`` and the node files under tests/data/nodes;
- the statistics recorded from real QEMU guests (tests/data/*-qemu-*.json), served in place of
  the bulk call, so that the rate checks see real counters.

The clock is fixed for every run (the rate checks sample at chosen times, the snapshot ages are
measured from a chosen now), so the output is deterministic. A change of output makes the test
fail with a diff; when a change is meant, rewrite the files with
``SPK_GOLDEN_WRITE=1 .venv/bin/pytest -q tests/unit/test_golden_checks.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sensu_kvm import virt
from sensu_kvm.checks import backup_age, blkerror, blkstat, domstate, memory, snapshot_age, vcpu
from sensu_kvm.errors import KvmError
from tests.conftest import DATA, node_uri

GOLDEN = DATA / "golden"
NODES = ["healthy.xml", "mixed.xml", "odd-names.xml", "snapshots.xml"]
NOW = 1_800_000_000.0  # 2027-01-15: the snapshot ages and the state file's clock


def uris() -> list[str]:
    return ["test:///default", *(node_uri(n) for n in NODES)]


def shown(uri: str) -> str:
    """The URI as the golden file names it (no absolute path of this checkout)."""
    return uri.replace(str(DATA), "DATA")


def run_one(module: ModuleType, argv: list[str]) -> str:
    """What the adapter prints for one run, then the findings --per-domain would send."""
    options = module.parser().parse_args(argv)
    try:
        report = module.check(options)
    except KvmError as err:
        return f"{module.NAME} UNKNOWN: {err}\n"
    lines = [f"{module.NAME} {report.status.name}: {report.render()}"]
    lines += [f"  finding {f.subject!r} {f.status.name}: {f.text}" for f in report.findings]
    return "\n".join(lines) + "\n"


class Clock:
    """time.time() that says what the test sets."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The fixed clock; and the test driver's domains in name order (its listing order varies
    from one connection to the next, and the checks keep the order they are given)."""
    fixed = Clock()
    monkeypatch.setattr(time, "time", fixed)
    gather = virt.gather
    monkeypatch.setattr(virt, "gather", lambda *args, **kwargs: sorted(gather(*args, **kwargs), key=lambda r: r.name))
    return fixed


def recorded(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((DATA / name).read_text())
    return data


class Listed:
    """A listed domain of a recording: its name and UUID."""

    def __init__(self, name: str, uuid: str) -> None:
        self._name, self._uuid = name, uuid

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return self._uuid


class Recording:
    """Serves recorded stats dicts in place of libvirt's bulk call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries: list[dict[str, Any]] = []
        monkeypatch.setattr(virt, "connect", lambda uri, readonly=True: self)
        monkeypatch.setattr(virt, "gather", self.gather)

    def gather(self, _conn: Any, _groups: Any, fill: bool = True, doms: Any = None, extra: int = 0) -> list[virt.DomainRecord]:
        wanted = None if doms is None else {d.name() for d in doms}
        return [virt.DomainRecord(e["name"], e.get("uuid", e["name"]), dict(e["stats"])) for e in self.entries
                if wanted is None or e["name"] in wanted]

    def listAllDomains(self, _flags: int = 0) -> list[Any]:
        """What domains.read lists when -d/--match/--exclude select: the recorded names."""
        return [Listed(e["name"], e.get("uuid", e["name"])) for e in self.entries]

    def close(self) -> None:
        pass


def twin(entry: dict[str, Any]) -> dict[str, Any]:
    """A second domain with the same statistics (its own name and UUID), for the summaries of many."""
    return {**entry, "name": entry["name"] + "-twin", "uuid": "0" + entry["uuid"][1:]}


def compare(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("SPK_GOLDEN_WRITE"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def matrix(module: ModuleType, variants: list[list[str]], extra: Callable[[str], list[str]] = lambda _u: []
           ) -> Iterator[str]:
    for uri in uris():
        for argv in variants:
            full = ["-u", uri, *argv, *extra(uri)]
            yield f"$ {module.__name__.rsplit('.', 1)[-1]} {' '.join(shown(a) for a in full)}\n" + run_one(module, full)


def test_domstate(clock: Clock) -> None:
    variants = [[], ["-v"], ["--expect-running"], ["-c", "2:"], ["-w", "5:", "-v"], ["-d", "web1"],
                ["-d", "nosuch"], ["--match", "^w"], ["--exclude", "."], ["-d", "web1", "-d", "db 1", "-v"]]
    compare("domstate", "".join(matrix(domstate, variants)))


def test_blkerror(clock: Clock) -> None:
    variants = [[], ["-v"], ["-d", "web1"], ["-d", "nosuch"], ["--exclude", "."]]
    compare("blkerror", "".join(matrix(blkerror, variants)))


def test_memory_on_the_test_driver(clock: Clock) -> None:
    variants = [[], ["-v"], ["-w", "40", "-c", "60"], ["--view", "host", "-v"], ["--view", "guest"],
                ["-d", "web1"], ["-d", "nosuch", "-v"]]
    compare("memory-testdriver", "".join(matrix(memory, variants)))


def test_memory_on_recorded_guests(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    served = Recording(monkeypatch)
    out = []
    for name in ("memory-qemu-guest.json", "memory-qemu-noos.json"):
        served.entries = recorded(name)
        for argv in ([], ["-v"], ["-w", "10", "-c", "20"], ["--view", "host"], ["--view", "guest", "-v"],
                     ["-w", "@0:100"]):
            out.append(f"$ memory [{name}] {' '.join(argv)}\n" + run_one(memory, ["-u", "test:///default", *argv]))
    served.entries = recorded("memory-qemu-guest.json") + recorded("memory-qemu-noos.json")
    for argv in ([], ["-v"], ["-c", "50"]):
        out.append(f"$ memory [both] {' '.join(argv)}\n" + run_one(memory, ["-u", "test:///default", *argv]))
    compare("memory-recorded", "".join(out))


def rate_runs(module: ModuleType, clock: Clock, state: Path, uri: str, argv: list[str],
              steps: list[tuple[float, Callable[[], None]]]) -> str:
    """Runs of a rate check sharing one state dir, each at its time (after its setup step)."""
    out = []
    for at, before in steps:
        before()
        clock.now = at
        full = ["-u", uri, "--state-dir", str(state), *argv]
        out.append(f"$ {module.__name__.rsplit('.', 1)[-1]} @{at:.3f} {' '.join(shown(a) for a in full[2:] if a != str(state))}\n"
                   + run_one(module, full))
    return "".join(out)


def test_rate_checks_on_the_test_driver(clock: Clock, tmp_path: Path) -> None:
    """The first sample, and a second run too soon after it: the test driver's counters follow the
    real clock, so later runs are not deterministic (the recordings below give the rates)."""
    out = []
    for module, variants in ((vcpu, [[], ["-v"], ["--expect-vcpus", "2"], ["-d", "nosuch", "-v"]]),
                             (blkstat, [[], ["-v"], ["-m", "write_iops", "-w", "1"], ["--device", "vdb", "-v"],
                                        ["-m", "read_latency", "-v"], ["-c", "50:"]])):
        for n, uri in enumerate(uris()):
            for k, argv in enumerate(variants):
                state = tmp_path / f"{module.__name__}-{n}-{k}"
                out.append(rate_runs(module, clock, state, uri, argv, [(NOW, lambda: None), (NOW + 2, lambda: None)]))
    compare("rates-testdriver", "".join(out))


def test_vcpu_on_recorded_guests(clock: Clock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served = Recording(monkeypatch)
    first, second = recorded("vcpu-qemu-busy.json")

    def serve(entry: dict[str, Any]) -> Callable[[], None]:
        return lambda: setattr(served, "entries", [entry])

    steps = [(first["t"], serve(first)), (second["t"], serve(second)), (second["t"] + 0.5, serve(second)),
             (second["t"] + 0.7, serve(first))]
    out = []
    for k, argv in enumerate([["--min-interval", "1"], ["--min-interval", "1", "-v"],
                              ["--min-interval", "1", "-w", "50", "-c", "90", "--steal-warning", "0.001"],
                              ["--min-interval", "1", "--expect-vcpus", "2", "-v"], ["-v"],
                              ["--min-interval", "1", "-w", "@0:100", "-d", "spk-test-busy", "-d", "gone"]]):
        out.append(rate_runs(vcpu, clock, tmp_path / f"v{k}", "test:///default", argv, steps))

    def serve_both(entry: dict[str, Any]) -> Callable[[], None]:
        return lambda: setattr(served, "entries", [entry, twin(entry)])

    both = [(at, serve_both(e)) for (at, _), e in zip(steps, (first, second, second, first))]
    for k, argv in enumerate([["--min-interval", "1", "-w", "99.9"], ["--min-interval", "1", "-w", "99.9", "-v"],
                              ["--min-interval", "1", "-w", "50"]]):
        out.append(rate_runs(vcpu, clock, tmp_path / f"twins{k}", "test:///default", argv, both))
    compare("vcpu-recorded", "".join(out))


def test_blkstat_on_recorded_guests(clock: Clock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served = Recording(monkeypatch)
    first, second = recorded("blkstat-qemu-writer.json")

    def serve(entry: dict[str, Any]) -> Callable[[], None]:
        return lambda: setattr(served, "entries", [entry])

    steps = [(first["t"], serve(first)), (second["t"], serve(second)), (second["t"] + 0.5, serve(second)),
             (second["t"] + 0.7, serve(first))]
    out = []
    variants: list[list[str]] = [["-v"], ["-w", "50", "-c", "60"], ["--device", "vdb"]]
    variants += [["-m", name, "-w", "1", "-c", "1000000", "-v"] for name in blkstat.METRICS]
    variants += [["-m", "write_bps", "-c", "1"], ["-m", "flushes", "-w", "@0:10", "-d", "gone"]]
    for k, argv in enumerate(variants):
        out.append(rate_runs(blkstat, clock, tmp_path / f"b{k}", "test:///default", ["--min-interval", "1", *argv],
                             steps))

    def serve_both(entry: dict[str, Any]) -> Callable[[], None]:
        return lambda: setattr(served, "entries", [entry, twin(entry)])

    both = [(at, serve_both(e)) for (at, _), e in zip(steps, (first, second, second, first))]
    for k, argv in enumerate([["--min-interval", "1", "-w", "101"],
                              ["--min-interval", "1", "-m", "write_iops", "-w", "1000", "-v"],
                              ["--min-interval", "1", "-m", "read_iops"],
                              ["--min-interval", "1", "-m", "write_bps", "-c", "1"]]):
        out.append(rate_runs(blkstat, clock, tmp_path / f"twins{k}", "test:///default", argv, both))
    compare("blkstat-recorded", "".join(out))


def test_snapshot_age(clock: Clock) -> None:
    variants = [[], ["-v"], ["-w", "1h", "-c", "2d"], ["-w", "500w", "-c", "1000w", "-v"],
                ["--count-warning", "1", "--count-critical", "11"], ["-d", "old", "-d", "gone"],
                ["--allow-backing", "^/guest/", "-v"]]
    compare("snapshot-age", "".join(matrix(snapshot_age, variants)))


def test_backup_age(clock: Clock, tmp_path: Path) -> None:
    empty = tmp_path / "state"
    empty.mkdir()
    variants = [["--state-dir", str(empty)], ["--state-dir", str(empty), "-v", "-d", "web1"]]
    text = "".join(matrix(backup_age, variants)).replace(str(empty), "STATE")
    compare("backup-age", text)


def test_host_evaluation() -> None:
    """check-kvm-host reads psutil and the node of this machine: its evaluation, on fixed figures."""
    from collections import namedtuple  # noqa: PLC0415

    from sensu_kvm.checks import host  # noqa: PLC0415
    from sensu_kvm.statefile import Rate  # noqa: PLC0415

    swap_t = namedtuple("swap_t", "total percent")
    usage_t = namedtuple("usage_t", "percent free total")
    memory_ok = {"total": 8 << 20, "free": 2 << 20, "buffers": 1 << 20, "cached": 1 << 20}
    memory_full = {"total": 8 << 20, "free": 1 << 18, "buffers": 0, "cached": 1 << 10}
    systems = {"/": usage_t(42.5, 10 << 30, 20 << 30), "/srv/images": usage_t(96.25, 1 << 28, 40 << 30),
               "/mnt/gone": "Permission denied"}
    rates = [None, Rate(None), Rate(None, why="counters reset (domain restarted), new sample"),
             Rate({"kernel": 1e9, "user": 2e9, "idle": 6e9, "iowait": 1e9}, 10.0),
             Rate({"kernel": 1e9, "user": 8e9, "idle": 1e9}, 10.0, note="the previous run's rate over 10.0s: soon")]
    out = []
    for argv in ([], ["-v"], ["--cpu-warning", "20", "--cpu-critical", "25", "--fs-warning", "40"],
                 ["--memory-critical", "80", "--swap-warning", "10", "-v"]):
        options = host.parser().parse_args(argv)
        for k, rate in enumerate(rates):
            busy = host.cpu_busy(rate) if rate is not None else None
            for node_memory, swap, fs in ((memory_ok, swap_t(0, 0.0), {}), (memory_full, swap_t(1 << 30, 12.5), systems),
                                     ("node memory unreadable", None, systems)):
                report = host.evaluate(busy, node_memory, swap, fs, options, rate)
                out.append(f"$ host {' '.join(argv)} [rate {k}]\n{host.NAME} {report.status.name}: {report.render()}\n")
    compare("host", "".join(out))
