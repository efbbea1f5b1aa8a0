"""Samples kept between runs, for rates: one small JSON file per check and URI.

Written atomically (temporary file, then rename), locked against overlapping runs, and rebuilt
silently when it is corrupt: a broken state file costs one rate, never a check. What is in the
file is input (decision D5): a sample whose time is not a finite number in the past, or whose
counters are not finite non-negative numbers, is dropped like a missing one. The state path is
opened without following a symlink and without blocking, and only a regular file is read: a
FIFO, a socket, a symlink or an unreadable file is replaced; a directory cannot be, and is an
error that names it.

A rate between runs is only computed over at least ``--min-interval`` seconds (MIN_INTERVAL): a
run that comes sooner after the last sample (two runs at once, a retry, a run by hand) reports
the rate the previous run computed, kept in the file beside its sample, and leaves that sample
in place, so the next run again gets a full interval.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sensu_kvm import activity
from sensu_kvm.argtypes import seconds_arg
from sensu_kvm.errors import KvmError
from sensu_kvm.uris import shown_uri

VERSION = 1
MIN_INTERVAL = 5.0  # seconds: see add_min_interval
CLOCK_SKEW = 5.0  # seconds a saved sample may lie in the future before it counts as corrupt
KEEP_SECONDS = 86400.0  # samples older than this are dropped: a rate over days says nothing about now
MAX_BYTES = 8 * 2**20  # a state file larger than this is corrupt (20,000 disks fit in ~4 MiB)
COUNTER_LIMIT = 2**64  # libvirt's counters are unsigned 64-bit


class StateFile:
    """The state of one check against one URI, under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], check: str, uri: str) -> None:
        uri = shown_uri(uri)  # the file is readable by all: never a password in it (nor in its name's hash)
        digest = f"{zlib.crc32(uri.encode()):08x}"  # the URI is also inside, and checked on load
        self.directory = Path(directory)
        self.path = self.directory / f"{check}-{digest}.json"
        self.lock_path = self.path.with_suffix(".lock")
        self.uri = uri

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as err:
            raise KvmError(f"cannot create state directory {self.directory}: {err.strerror} "
                           "(choose another with --state-dir)") from err

    def _kind(self, path: Path, noun: str = "state file") -> str | None:
        """What is at ``path`` when it is not a regular file ("missing" when nothing is); None for a file."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return "missing"
        except OSError as err:
            raise KvmError(f"cannot look at {path}: {err.strerror} (choose another with --state-dir)") from err
        if stat.S_ISDIR(mode):
            raise KvmError(f"{path} is a directory, not a {noun}: remove it or choose another --state-dir")
        if stat.S_ISREG(mode):
            return None
        return {stat.S_IFLNK: "symlink", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket"}.get(
            stat.S_IFMT(mode), "device")

    def _replace_with_empty_file(self, path: Path) -> None:
        """Put an empty regular file where ``path`` is a FIFO, socket, symlink or device (atomically)."""
        tmp = self._write_tmp(path, b"")
        try:
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise KvmError(f"cannot replace {path}: {err.strerror} (remove it or choose another --state-dir)") from err

    def _open_lock(self) -> int:
        """A descriptor of the lock file, a regular file (whatever else was there is replaced).

        Two runs that both find a FIFO there may each put a file in its place and lock their own,
        once; anyone who can write the state directory can as well delete the lock file, so the
        lock guards against overlapping runs, not against the directory's writers.
        """
        for _ in range(3):
            if self._kind(self.lock_path, "lock file") not in (None, "missing"):
                self._replace_with_empty_file(self.lock_path)
            try:
                fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             0o644)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENXIO):  # became a symlink or socket meanwhile
                    continue
                raise KvmError(f"cannot open {self.lock_path}: {err.strerror} "
                               "(choose another with --state-dir)") from err
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
        raise KvmError(f"cannot make {self.lock_path} a lock file: something keeps replacing it")

    def _still_there(self, fd: int) -> bool:
        """Whether the locked file is still the one at the lock path (another run may have replaced it)."""
        try:
            found, mine = os.lstat(self.lock_path), os.fstat(fd)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)

    @contextlib.contextmanager
    def locked(self, wait: float = 5.0) -> Iterator[None]:
        """Hold an exclusive lock on the state for a read-modify-write, waiting up to ``wait``."""
        self._ensure_directory()
        activity.doing(f"waiting for the lock on {self.lock_path}")
        deadline = time.monotonic() + wait
        while True:
            fd = self._open_lock()
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as err:
                        if err.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                            raise KvmError(f"{self.lock_path} is locked by another run") from err
                        time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
            if self._still_there(fd):
                break
            os.close(fd)  # locked a file that was replaced meanwhile: lock the one there now
            if time.monotonic() >= deadline:
                raise KvmError(f"{self.lock_path} keeps being replaced while this run locks it")
        try:
            yield
        finally:
            os.close(fd)

    def _read(self) -> bytes | None:
        """The file's bytes; None when there is no regular, readable file of a sane size there."""
        activity.doing(f"reading {self.path}")
        if self._kind(self.path) is not None:  # missing, or a FIFO, socket, symlink, device
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None  # unreadable, or replaced meanwhile
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
                return None
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_BYTES:
                chunk = os.read(fd, MAX_BYTES + 1 - size)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
            return None  # grew beyond the cap while read
        except OSError:
            return None
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any]:
        """The saved samples; empty when there are none or the file is corrupt or foreign.

        Raises KvmError only when the state path is a directory (it cannot be replaced).
        """
        data = self._read()
        if data is None:
            return {}
        try:
            parsed = json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):  # garbage, NaN/Infinity, too deeply nested, not UTF-8
            return {}
        if not isinstance(parsed, dict) or parsed.get("version") != VERSION or parsed.get("uri") != self.uri:
            return {}
        samples = parsed.get("samples")
        return samples if isinstance(samples, dict) else {}

    def _write_tmp(self, beside: Path, payload: bytes) -> str:
        """A new file ``beside.PID.tmp`` holding ``payload``, never through a symlink; its name."""
        tmp = f"{beside}.{os.getpid()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileExistsError:  # left by a killed run with the same pid (or planted): not ours to follow
                os.unlink(tmp)
                fd = os.open(tmp, flags, 0o644)
            try:
                os.fchmod(fd, 0o644)  # whatever the umask
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise KvmError(f"cannot write {beside}: {err.strerror} (choose another with --state-dir)") from err
        return tmp

    def _sweep(self) -> None:
        """Remove temporary files of this state left by runs that were killed while writing."""
        prefixes, mine = (f"{self.path.name}.", f"{self.lock_path.name}."), os.getpid()
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
                if prefix is None or not entry.name.endswith(".tmp"):
                    continue
                pid = entry.name[len(prefix):-len(".tmp")]
                if pid.isdigit() and int(pid) != mine and not pid_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def save(self, samples: Mapping[str, Any]) -> None:
        """Replace the saved samples atomically (also a FIFO, socket or symlink at the state path)."""
        self._ensure_directory()
        activity.doing(f"writing {self.path}")
        self._sweep()
        payload = json.dumps({"version": VERSION, "uri": self.uri, "samples": samples}, separators=(",", ":"),
                             allow_nan=False).encode()
        self._kind(self.path)  # a directory there: say so
        tmp = self._write_tmp(self.path, payload)
        try:
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise KvmError(f"cannot write {self.path}: {err.strerror} (choose another with --state-dir)") from err


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} in a state file")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _count(value: object) -> int | float | None:
    """``value`` when it is a counter as libvirt gives it: a non-negative finite number below
    2**64 (not a bool: ``True`` is an int to Python); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if 0 <= value < COUNTER_LIMIT else None


def _counter(value: object) -> bool:
    return _count(value) is not None


def _time(value: object, now: float) -> bool:
    """A sample's time: a finite number of seconds since the epoch, less than a day old, not ahead."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        when = float(value)
    except OverflowError:
        return False
    return math.isfinite(when) and now - KEEP_SECONDS < when <= now + CLOCK_SKEW


def valid_sample(sample: object, keys: list[str], now: float) -> dict[str, Any] | None:
    """``sample`` when it can serve as a baseline: a dict with a sane time, counters and kept rate."""
    if not isinstance(sample, dict) or not _time(sample.get("t"), now):
        return None
    if any(key in sample and not _counter(sample[key]) for key in keys):
        return None
    if "last" in sample:
        last = sample["last"]
        if not isinstance(last, dict) or not isinstance(last.get("rates"), dict):
            return None
        seconds = _count(last.get("seconds"))
        if not seconds or not all(
                key in keys and _counter(value) for key, value in last["rates"].items()):
            return None
    return sample


def rates(previous: Mapping[str, Any] | None, current: Mapping[str, Any], keys: list[str]) -> dict[str, float] | None:
    """Per-second rates of counters between two samples that carry their time in ``"t"``.

    None when there is no usable previous sample: none at all, no time elapsed, a counter that
    is in the current sample but not the previous one, or a counter that went backwards (the
    domain restarted): then the current sample starts afresh.
    """
    if not previous:
        return None
    try:
        elapsed = float(current["t"]) - float(previous["t"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not (math.isfinite(elapsed) and elapsed > 0):
        return None
    result: dict[str, float] = {}
    for key in keys:
        now, before = _count(current.get(key)), _count(previous.get(key))
        if now is None:
            continue
        if before is None or now < before:
            return None
        result[key] = (now - before) / elapsed
        if not math.isfinite(result[key]):
            return None
    return result


class Rate(NamedTuple):
    """One subject's per-second counter rates, or why there are none.

    ``seconds`` is the interval they cover; ``note`` is set when they are the previous run's
    rates, reported again because this run came within the floor of the last sample.
    """

    per_second: dict[str, float] | None
    seconds: float = 0.0
    why: str | None = None  # why there are no rates; None: there is no earlier sample at all
    note: str = ""

    @property
    def first(self) -> bool:
        """Whether this is the subject's first sample (no rates, and nothing else to blame)."""
        return self.per_second is None and self.why is None

    @property
    def reason(self) -> str:
        """Why there are no rates, for a status line."""
        return "first sample" if self.why is None else self.why

    def over(self) -> str:
        """How the rates were measured, for a status line."""
        return self.note or f"over {self.seconds:.1f}s"


def compare(baseline: Mapping[str, Any] | None, sample: Mapping[str, Any], keys: list[str],
            floor: float) -> tuple[Rate, bool]:
    """The rate from ``baseline`` (already validated) to ``sample``, and whether ``sample`` should
    replace ``baseline`` in the state file (not while it is younger than ``floor``)."""
    if baseline is None:
        return Rate(None), True
    elapsed = float(sample["t"]) - float(baseline["t"])
    if elapsed <= 0:
        return Rate(None, why="the clock went back, new sample"), True
    for key in keys:
        now, before = _count(sample.get(key)), _count(baseline.get(key))
        if now is not None and (before is None or now < before):
            return Rate(None, why="counters reset (domain restarted), new sample"), True
    if elapsed < floor:
        last = baseline.get("last")
        if last:
            note = (f"the previous run's rate over {float(last['seconds']):.1f}s: the last sample is only "
                    f"{elapsed:.2f}s old, under --min-interval {floor:g}s")
            return Rate({k: float(v) for k, v in last["rates"].items()}, float(last["seconds"]), note=note), False
        return Rate(None, why=f"the last sample is only {elapsed:.2f}s old, under --min-interval {floor:g}s"), False
    per_second = rates(baseline, sample, keys)
    if per_second is None:
        return Rate(None, why="counters reset (domain restarted), new sample"), True
    return Rate(per_second, elapsed), True


def _between(first: Mapping[str, Any] | None, second: Mapping[str, Any], keys: list[str]) -> Rate:
    """The rate between two samples this run took itself (--interval)."""
    if first is None:
        return Rate(None)  # the domain started between the two
    per_second = rates(first, second, keys)
    if per_second is None:
        return Rate(None, why="counters reset (domain restarted), new sample")
    return Rate(per_second, float(second["t"]) - float(first["t"]))


def _with_rate(sample: dict[str, Any], rate: Rate, floor: float) -> dict[str, Any]:
    """The sample to save, with the rate that ends at it when it covers at least ``floor``."""
    if rate.per_second is None or rate.note or rate.seconds < floor:
        return sample
    return {**sample, "last": {"seconds": rate.seconds, "rates": rate.per_second}}


def exchange(state: StateFile, take: Callable[[], dict[str, dict[str, Any]]], interval: float | None,
             keys: list[str], floor: float = MIN_INTERVAL) -> tuple[dict[str, dict[str, Any]], dict[str, Rate]]:
    """The current samples keyed by subject (domain UUID, UUID/device) and each subject's rates.

    With ``interval`` the check samples twice itself, that far apart; otherwise the baseline is
    the state file's sample, read and replaced under the lock with the new sample taken in
    between, so that two overlapping runs are serialised: the second sees the first one's
    sample, only moments old, and reports the first one's rate instead of its own (see
    ``compare``). Either way the state file keeps, beside the samples of subjects this run did
    not look at (dropped after a day), for each subject the older sample while the new one is
    younger than ``floor``, else the new one with the rate that ends at it.
    """
    if interval:
        first = take()
        activity.doing(f"waiting {interval:g}s between two samples")
        time.sleep(interval)
        current = take()
        found = {s: _between(first.get(s), sample, keys) for s, sample in current.items()}
        with state.locked():
            _save_merged(state, state.load(), current, found, keys, floor)
        return current, found
    with state.locked():
        stored = state.load()
        current = take()
        found = _save_merged(state, stored, current, None, keys, floor)
    return current, found


def _save_merged(state: StateFile, stored: Mapping[str, Any], current: Mapping[str, dict[str, Any]],
                 found: dict[str, Rate] | None, keys: list[str], floor: float) -> dict[str, Rate]:
    """Save what the next run needs; the rates from the stored samples (or ``found``, when given)."""
    now = time.time()
    kept = {k: v for k, v in stored.items() if valid_sample(v, keys, now) is not None}
    result: dict[str, Rate] = {}
    for subject, sample in current.items():
        rate, replace = compare(kept.get(subject), sample, keys, floor)
        if found is not None:  # sampled twice: that rate is this run's; the file's baseline may stay
            rate = found[subject]
        result[subject] = rate
        if replace:
            kept[subject] = _with_rate(sample, rate, floor)
    state.save(kept)
    return result


def add_min_interval(parser: argparse.ArgumentParser) -> None:
    """--min-interval, for every check that computes rates between runs.

    The default of 5 s is far below any schedule a rate check runs on (Sensu and Nagios run them
    every 30 to 300 s), so a scheduled run always gets its own rate, and long enough that the
    time a sample takes (a few ms for one domain, ~0.7 s for the bulk call of 100) is a small
    part of the interval; what comes sooner is a second run at the same moment, a retry or a
    run by hand, whose own interval would be mostly the noise of when the counters were read.
    """
    parser.add_argument(
        "--min-interval", type=seconds_arg, default=MIN_INTERVAL, metavar="SECONDS",
        help=f"compute a rate between runs only over at least this long (default: {MIN_INTERVAL:g}); a run "
             "that comes sooner after the last sample (runs that overlap, a retry) reports the previous "
             "run's rate, marked as such, and keeps the older sample for the next run")


def sample_domains(options: Any, check: str, groups: list[str],
                   samples: Callable[[list[Any]], dict[str, dict[str, Any]]], keys: list[str],
                   ) -> tuple[list[Any], list[str], dict[str, dict[str, Any]], dict[str, Rate]]:
    """What a rate check reads: the chosen domain records, the names given with -d that are
    missing, the current samples and each one's rates (``samples`` makes the samples from the
    running domains' records, each with the time its counters were read in ``when``)."""
    from sensu_kvm import virt  # noqa: PLC0415 (statefile itself has no need of libvirt)
    from sensu_kvm.domains import is_active, read  # noqa: PLC0415

    conn = virt.connect(options.uri)
    chosen: list[Any] = []
    missing: list[str] = []

    def take() -> dict[str, dict[str, Any]]:
        nonlocal chosen, missing
        before = time.time()
        chosen, missing = read(conn, groups, options)
        when = (before + time.time()) / 2  # the counters were read somewhere during the calls
        running = [r for r in chosen if is_active(r) and not r.error]
        for record in running:  # the middle of the call that read it, when gather knows it
            record.when = record.when or when
        return samples(running)

    try:
        state = StateFile(options.state_dir, check, virt.resolve_uri(options.uri))
        current, found = exchange(state, take, options.interval, keys, getattr(options, "min_interval", MIN_INTERVAL))
    finally:
        conn.close()
    return chosen, missing, current, found
