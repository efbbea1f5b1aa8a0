"""The state-file corruption matrix, through the installed rate checks on libvirt's test driver.

Whatever is found at the state path or the lock path, each of check-kvm-vcpu, check-kvm-blkstat
and check-kvm-host finishes well inside -t, prints no traceback, exits 0 (a corrupt sample is a
first sample and the file is rebuilt) or 3 with one line naming the path (a directory, which
cannot be replaced atomically, or a lock file it may not open), prints no NaN or infinity and
only parseable perfdata, and the next run computes a real rate. The test driver's counters grow
with the clock (its per-domain calls stand in for the bulk call's missing groups), so its
rates are real rates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import run
from tests.testdriver.test_cli_errors import traversable_checkout  # noqa: F401 (a fixture, for user nobody)

URI = "test:///default"
FLOOR = "0.05"  # --min-interval: the next run comes this long after, not 5 s
TIMEOUT = 5.0  # -t
NOT_A_NUMBER = re.compile(r"(?i)\b(nan|inf|infinity)\b")
PERF_ITEM = re.compile(r"^(?:'(?:[^']|'')+'|[^'=\s]+)=(-?[0-9]+(?:\.[0-9]+)?)[a-zA-Z%]*(?:;[^;\s]*){0,4}$")


class Check(NamedTuple):
    command: str
    kind: str  # the state file's name starts with it
    args: tuple[str, ...]
    counter: str  # one counter its samples keep
    first: str  # what its first-sample output says
    rated: re.Pattern[str]  # what its output says when it computed a rate of its own

    def subject(self, samples: dict[str, Any]) -> str:
        return next(iter(samples))


CHECKS = {
    "vcpu": Check("check-kvm-vcpu", "vcpu", (), "time", "test first sample, usage on the next run",
                  re.compile(r"test vCPU usage [0-9.]+% of 2 vCPUs \(over [0-9.]+s\)")),
    "blkstat": Check("check-kvm-blkstat", "blkstat", ("-m", "write_iops"), "wr.reqs",
                     "test: first sample, rates on the next run",
                     re.compile(r"test: vda write_iops [0-9.]+ \(over [0-9.]+s\)")),
    "host": Check("check-kvm-host", "host", ("--cpu-warning", "100", "--memory-warning", "100"), "user",
                  "CPU: first sample, busy % on the next run", re.compile(r"CPU [0-9.]+% busy \(over [0-9.]+s\)")),
}


class Place(NamedTuple):
    state: Path  # the state file
    lock: Path
    sample: dict[str, Any]  # the good file's content, to corrupt


def edit(change: Callable[[dict[str, Any], str, str], None]) -> Callable[[Place, Check], None]:
    """A case that rewrites the good file with one sample changed (``change(sample, counter, ...)``)."""
    def apply(place: Place, check: Check) -> None:
        data = json.loads(json.dumps(place.sample))
        subject = check.subject(data["samples"])
        change(data["samples"], subject, check.counter)
        place.state.write_text(json.dumps(data))
    return apply


def raw(make: Callable[[str, str, str], str]) -> Callable[[Place, Check], None]:
    """A case that writes text made from the good file's text, the subject and the counter."""
    def apply(place: Place, check: Check) -> None:
        subject = check.subject(place.sample["samples"])
        place.state.write_text(make(json.dumps(place.sample), subject, check.counter))
    return apply


def with_time(token: str) -> Callable[[Place, Check], None]:
    """The sample's time replaced by a JSON token Python reads as a number (NaN, Infinity, ...)."""
    return raw(lambda text, subject, _: re.sub(r'("t":\s*)[-0-9.e+]+', rf"\g<1>{token}", text, count=1))


def setitem(key_of: Callable[[str], str], value: Any) -> Callable[[dict[str, Any], str, str], None]:
    def change(samples: dict[str, Any], subject: str, counter: str) -> None:
        samples[subject][key_of(counter)] = value
    return change


def fifo(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


ELSEWHERE = "elsewhere.json"  # a file beside the state directory that a symlink points to


def at_state(make: Callable[[Path], None]) -> Callable[[Place, Check], None]:
    def apply(place: Place, _check: Check) -> None:
        place.state.unlink()
        make(place.state)
    return apply


def at_lock(make: Callable[[Path], None]) -> Callable[[Place, Check], None]:
    def apply(place: Place, _check: Check) -> None:
        if place.lock.exists():
            place.lock.unlink()
        make(place.lock)
    return apply


def symlink_elsewhere(path: Path) -> None:
    target = path.parent.parent / ELSEWHERE
    target.write_text('{"keep": true}')
    path.symlink_to(target)


def dangling(path: Path) -> None:
    path.symlink_to(path.parent.parent / "never-created")


def unreadable(path: Path) -> None:
    path.write_text("{}")
    os.chmod(path, 0)  # owned by root: the check runs as nobody


def future(seconds: float) -> Callable[[dict[str, Any], str, str], None]:
    def change(samples: dict[str, Any], subject: str, _counter: str) -> None:
        samples[subject]["t"] = time.time() + seconds
    return change


class Case(NamedTuple):
    corrupt: Callable[[Place, Check], object]
    code: int = 0
    says: str = ""  # what the run on the corrupt state says instead of the first-sample line
    user: str | None = None
    rated: bool = False  # the state file is untouched: the run computes its rate as usual


CASES = {
    "empty": Case(raw(lambda *_: "")),
    "truncated": Case(raw(lambda text, *_: text[: len(text) // 2])),
    "garbage": Case(lambda place, _: place.state.write_bytes(bytes(range(256)) * 4)),
    "null": Case(raw(lambda *_: "null")),
    "huge": Case(raw(lambda text, *_: " " * (9 * 2**20) + text)),  # valid JSON, beyond the 8 MiB cap
    "deeply nested": Case(raw(lambda *_: "[" * 100_000)),
    "NaN time": Case(with_time("NaN")),
    "+Infinity time": Case(with_time("Infinity")),
    "-Infinity time": Case(with_time("-Infinity")),
    "1e999 time": Case(with_time("1e999")),  # JSON Python reads as infinity
    "future time": Case(edit(future(3600))),
    "slightly ahead": Case(edit(future(3)), says="the clock went back, new sample"),  # within the skew allowance
    "string time": Case(edit(setitem(lambda _: "t", "1800000000"))),
    "bool time": Case(edit(setitem(lambda _: "t", True))),
    "list time": Case(edit(setitem(lambda _: "t", [1800000000]))),
    "nested time": Case(edit(setitem(lambda _: "t", {"t": 1800000000}))),
    "list sample": Case(edit(lambda samples, subject, _: samples.__setitem__(subject, [1, 2]))),
    "samples a list": Case(raw(lambda *_: '{"version": 1, "uri": "test:///default", "samples": [1]}')),
    "negative counter": Case(edit(setitem(lambda counter: counter, -5))),
    "string counter": Case(edit(setitem(lambda counter: counter, "5"))),
    "bool counter": Case(edit(setitem(lambda counter: counter, False))),
    "NaN kept rate": Case(raw(lambda text, _s, counter: text.replace(
        '"t":', f'"last": {{"seconds": 60, "rates": {{"{counter}": NaN}}}}, "t":', 1))),
    "negative kept interval": Case(edit(lambda samples, subject, counter: samples[subject].__setitem__(
        "last", {"seconds": -60, "rates": {counter: 1.0}}))),
    "FIFO": Case(at_state(fifo)),
    "socket": Case(at_state(unix_socket)),
    "symlink elsewhere": Case(at_state(symlink_elsewhere)),
    "dangling symlink": Case(at_state(dangling)),
    "unreadable": Case(at_state(unreadable), user="nobody"),
    "directory": Case(at_state(os.mkdir), code=3, says="{state} is a directory, not a state file: remove it"),
    "lock FIFO": Case(at_lock(fifo), rated=True),
    "lock socket": Case(at_lock(unix_socket), rated=True),
    "lock dangling symlink": Case(at_lock(dangling), rated=True),
    "lock directory": Case(at_lock(os.mkdir), code=3, says="{lock} is a directory, not a lock file: remove it"),
    "lock unreadable": Case(at_lock(unreadable), code=3, says="cannot open {lock}: Permission denied", user="nobody"),
}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory that user nobody can write too (pytest's own tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="spk-state-"))
    try:
        os.chmod(top, 0o755)
        folder = top / "state"
        folder.mkdir()
        shutil.chown(folder, "nobody", "nogroup")
        yield folder
    finally:
        shutil.rmtree(top)


def check_run(check: Check, folder: Path, user: str | None = None) -> tuple[Any, float]:
    started = time.monotonic()
    result = run(check.command, "-u", URI, *check.args, "--state-dir", str(folder), "--min-interval", FLOOR,
                 "-t", f"{TIMEOUT:g}", timeout=2 * TIMEOUT, user=user)
    return result, time.monotonic() - started


def assert_sane(result: Any, elapsed: float) -> None:
    """No hang, no traceback, nothing that is not a number, parseable perfdata."""
    output = result.stdout + result.stderr
    assert elapsed < TIMEOUT - 1, (elapsed, output)
    assert "Traceback" not in output and "internal error" not in output, output
    assert not NOT_A_NUMBER.search(output), output
    assert result.stderr == "", result.stderr
    first = result.stdout.splitlines()[0]
    if " | " in first:
        for item in first.split(" | ", 1)[1].split(" "):
            match = PERF_ITEM.match(item)
            assert match, (item, first)
            float(match.group(1))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("name", list(CHECKS))
def test_corrupt_state(name: str, case: str, state_dir: Path, request: pytest.FixtureRequest) -> None:
    check, spec = CHECKS[name], CASES[case]
    if spec.user:
        request.getfixturevalue("traversable_checkout")
    good, _ = check_run(check, state_dir, spec.user)
    assert good.returncode == 0, good
    (state,) = state_dir.glob(f"{check.kind}-*.json")
    place = Place(state, state.with_suffix(".lock"), json.loads(state.read_text()))
    spec.corrupt(place, check)
    if spec.rated:
        time.sleep(float(FLOOR) + 0.03)

    result, elapsed = check_run(check, state_dir, spec.user)
    assert_sane(result, elapsed)
    assert result.returncode == spec.code, result
    says = spec.says.format(state=place.state, lock=place.lock)
    if spec.code == 3:
        assert result.stdout.splitlines() == [result.stdout.strip()], result.stdout
        assert says in result.stdout, result.stdout
        # the operator removes what is in the way; then the check works again
        for path in (place.state, place.lock):
            if path.is_dir():
                path.rmdir()
            elif path.exists():
                path.unlink()
        rebuilt, _ = check_run(check, state_dir, spec.user)
        assert check.first in rebuilt.stdout, rebuilt.stdout
    elif spec.rated:
        assert check.rated.search(result.stdout), result.stdout
    else:
        assert (says or check.first) in result.stdout, result.stdout
    data = json.loads(place.state.read_text())  # a good file, a regular one, in its place
    assert not place.state.is_symlink() and data["version"] == 1 and data["uri"] == URI
    assert place.lock.is_file() and not place.lock.is_symlink()
    assert not (state_dir.parent / "never-created").exists()
    if (state_dir.parent / ELSEWHERE).exists():
        assert (state_dir.parent / ELSEWHERE).read_text() == '{"keep": true}'

    time.sleep(float(FLOOR) + 0.03)
    after, elapsed = check_run(check, state_dir, spec.user)
    assert_sane(after, elapsed)
    assert after.returncode == 0, after
    assert check.rated.search(after.stdout), after.stdout
