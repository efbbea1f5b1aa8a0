"""Samples kept between runs, for rates: one small JSON file per check and URI.

Written atomically (temporary file, then rename), locked against overlapping runs, and rebuilt
silently when it is corrupt or unreadable: a broken state file costs one rate, never a check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sensu_kvm import activity
from sensu_kvm.errors import KvmError

VERSION = 1


class StateFile:
    """The state of one check against one URI, under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], check: str, uri: str) -> None:
        digest = f"{zlib.crc32(uri.encode()):08x}"  # the URI is also inside, and checked on load
        self.directory = Path(directory)
        self.path = self.directory / f"{check}-{digest}.json"
        self.uri = uri

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as err:
            raise KvmError(f"cannot create state directory {self.directory}: {err.strerror} "
                           "(choose another with --state-dir)") from err

    @contextlib.contextmanager
    def locked(self, wait: float = 5.0) -> Iterator[None]:
        """Hold an exclusive lock on the state for a read-modify-write, waiting up to ``wait``."""
        self._ensure_directory()
        lock_path = self.path.with_suffix(".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise KvmError(f"cannot open {lock_path}: {err.strerror} (choose another with --state-dir)") from err
        try:
            activity.doing(f"waiting for the lock on {lock_path}")
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                        raise KvmError(f"{lock_path} is locked by another run") from err
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any]:
        """The saved samples; empty when there are none or the file is corrupt or foreign."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION or data.get("uri") != self.uri:
            return {}
        samples = data.get("samples")
        return samples if isinstance(samples, dict) else {}

    def save(self, samples: Mapping[str, Any]) -> None:
        """Replace the saved samples atomically."""
        self._ensure_directory()
        payload = json.dumps({"version": VERSION, "uri": self.uri, "samples": samples}, separators=(",", ":"))
        try:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(payload)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as err:
            raise KvmError(f"cannot write {self.path}: {err.strerror} (choose another with --state-dir)") from err


def rates(previous: Mapping[str, Any] | None, current: Mapping[str, Any], keys: list[str]) -> dict[str, float] | None:
    """Per-second rates of counters between two samples that carry their time in ``"t"``.

    None when there is no usable previous sample: none at all, no time elapsed, or a counter
    that went backwards (the domain restarted): then the current sample starts afresh.
    """
    if not previous:
        return None
    try:
        elapsed = float(current["t"]) - float(previous["t"])
    except (KeyError, TypeError, ValueError):
        return None
    if elapsed <= 0:
        return None
    result: dict[str, float] = {}
    for key in keys:
        before, now = previous.get(key), current.get(key)
        if not isinstance(before, (int, float)) or not isinstance(now, (int, float)):
            continue
        if now < before:
            return None
        result[key] = (now - before) / elapsed
    return result


KEEP_SECONDS = 86400.0


def exchange(state: StateFile, take: Callable[[], dict[str, dict[str, Any]]], interval: float | None,
             ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The previous and the current samples, each keyed by subject (domain UUID, UUID/device).

    With ``interval`` the check samples twice itself; otherwise the previous sample comes from
    the state file. Either way the current sample is saved for the next run, beside the samples
    of subjects this run did not look at (dropped after a day).
    """
    if interval:
        previous: dict[str, Any] = take()
        activity.doing(f"waiting {interval:g}s between two samples")
        time.sleep(interval)
        current = take()
        with state.locked():
            _save_merged(state, state.load(), current)
        return previous, current
    with state.locked():
        previous = state.load()
        current = take()
        _save_merged(state, previous, current)
    return previous, current


def _save_merged(state: StateFile, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    now = time.time()

    def fresh(sample: object) -> bool:
        when = sample.get("t") if isinstance(sample, dict) else None
        return isinstance(when, (int, float)) and now - when < KEEP_SECONDS

    kept = {k: v for k, v in previous.items() if k not in current and fresh(v)}
    state.save({**kept, **current})


def sample_domains(options: Any, check: str, groups: list[str],
                   samples: Callable[[list[Any], float], dict[str, dict[str, Any]]],
                   ) -> tuple[list[Any], list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """What a rate check reads: the chosen domain records, the names given with -d that are
    missing, and the previous and current samples (``samples`` makes them from the running
    domains' records and the time)."""
    from sensu_kvm import virt  # noqa: PLC0415 (statefile itself has no need of libvirt)
    from sensu_kvm.domains import choose, is_active  # noqa: PLC0415

    conn = virt.connect(options.uri)
    chosen: list[Any] = []
    missing: list[str] = []

    def take() -> dict[str, dict[str, Any]]:
        nonlocal chosen, missing
        chosen, missing = choose(virt.gather(conn, groups), options)
        return samples([r for r in chosen if is_active(r) and not r.error], time.time())

    try:
        state = StateFile(options.state_dir, check, virt.resolve_uri(options.uri))
        previous, current = exchange(state, take, options.interval)
    finally:
        conn.close()
    return chosen, missing, previous, current
