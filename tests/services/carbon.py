"""A private carbon-cache (Graphite's receiver and whisper writer) for the tests.

Debian's graphite-carbon (1.1.7) with a configuration of our own in a fresh temp dir: carbon.conf
and storage-schemas.conf there (carbon takes CONF_DIR from the --config path), LOCAL_DATA_DIR,
LOG_DIR and PID_DIR there too, the plaintext line receiver, the pickle receiver and the cache query
port on 127.0.0.1 only (ports of this suite), no UDP listener, no tag database, no rate limits on
creating or updating whisper files (the tests send 18,000 new series at once), no carbon.* self
metrics. ``carbon-cache --config=DIR/carbon.conf start`` daemonizes (so that it logs to
LOG_DIR/console.log, listener.log..., as in production) under the subreaper of
tests/services/rabbitmq.py, and is stopped with SIGTERM to the pid of its pid file; the temp dir
is removed afterwards.

What a test reads: :meth:`Carbon.series` (every whisper file, as a metric path),
:meth:`Carbon.fetch` (a series' points, read by ``whisper-fetch`` of python3-whisper) and
:meth:`Carbon.log_problems` (lines of carbon's logs that say a line or a metric was refused).

By hand: ``python -m tests.services.carbon`` starts it, prints it and stops it on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.rabbitmq import (
    ServiceError,
    ensure_port_free,
    finish,
    kill_tree,
    reap_stale,
    serve_by_hand,
    spawn_reaped,
    tail,
    wait_ready,
)

CARBON_CACHE = "carbon-cache"
WHISPER_FETCH = "whisper-fetch"
HOST = "127.0.0.1"
LINE_PORT, PICKLE_PORT, QUERY_PORT = 18050, 18051, 18052
RETENTION = "10s:1h"  # one archive of 360 points: 4 KiB a file, 18,000 files stay small
# What carbon 1.1.7 logs when it drops something it was sent (protocols.py, cache.py, writer.py).
REFUSALS = ("invalid line", "invalid pickle", "Error parsing metric", "Error creating", "Error writing",
            "No storage schema", "Traceback")

CARBON_CONF = """\
# Written by tests/services/carbon.py for one test session: everything under {dir}.
[cache]
STORAGE_DIR = {dir}/storage/
LOCAL_DATA_DIR = {dir}/storage/whisper/
WHITELISTS_DIR = {dir}/storage/lists/
LOG_DIR = {dir}/log/
PID_DIR = {dir}/run/
DATABASE = whisper
ENABLE_LOGROTATION = False
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
MIN_TIMESTAMP_RESOLUTION = 1
LINE_RECEIVER_INTERFACE = {host}
LINE_RECEIVER_PORT = {line}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = {host}
PICKLE_RECEIVER_PORT = {pickle}
USE_INSECURE_UNPICKLER = False
CACHE_QUERY_INTERFACE = {host}
CACHE_QUERY_PORT = {query}
USE_FLOW_CONTROL = True
LOG_UPDATES = False
LOG_CREATES = False
LOG_CACHE_HITS = False
LOG_LISTENER_CONN_SUCCESS = False
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = False
WHISPER_FALLOCATE_CREATE = False
ENABLE_TAGS = False
CARBON_METRIC_INTERVAL = 0
"""

STORAGE_SCHEMAS = """\
[everything]
pattern = .*
retentions = {retention}
"""


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Carbon:
    """A running private carbon-cache."""

    tmpdir: Path
    host: str = HOST
    line_port: int = LINE_PORT
    reaper: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.tmpdir / "conf" / "carbon.conf"

    @property
    def data_dir(self) -> Path:
        return self.tmpdir / "storage" / "whisper"

    @property
    def log_dir(self) -> Path:
        return self.tmpdir / "log"

    @property
    def pidfile(self) -> Path:
        return self.tmpdir / "run" / "carbon-cache-a.pid"

    @property
    def logs(self) -> str:
        files = [self.tmpdir / "server.out", *sorted(self.log_dir.rglob("*.log"))]
        return "\n".join(tail(path) for path in files)

    def send(self, text: str) -> None:
        """Send plaintext lines to the line receiver in one connection, as a handler would."""
        data = text.encode() if text.endswith("\n") else (text + "\n").encode()
        with socket.create_connection((self.host, self.line_port), timeout=10) as sock:
            sock.sendall(data)

    def series(self, under: str = "") -> set[str]:
        """Every whisper file under the metric path ``under``, as its metric path."""
        root = self.data_dir.joinpath(*under.split(".")) if under else self.data_dir
        return {".".join(path.relative_to(self.data_dir).with_suffix("").parts) for path in root.rglob("*.wsp")}

    def wait_series(self, count: int, under: str = "", timeout: float = 120) -> set[str]:
        """The series under ``under`` once there are at least ``count`` (carbon writes from its
        cache in a thread of its own); fails with what is there and carbon's logs after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.series(under)
            if len(found) >= count:
                return found
            if self.reaper is not None and self.reaper.poll() is not None:
                raise ServiceError(f"carbon-cache exited ({self.reaper.returncode})\n{self.logs}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{len(found)} of {count} whisper files under {under or '/'} after "
                                   f"{timeout:.0f} s\n{self.logs}")
            time.sleep(0.2)

    def fetch(self, metric: str, seconds: int = 3600) -> list[tuple[int, float | None]]:
        """The points of one series over the last ``seconds``, read by whisper-fetch."""
        path = self.data_dir.joinpath(*metric.split(".")).with_suffix(".wsp")
        done = subprocess.run([WHISPER_FETCH, f"--from={int(time.time()) - seconds}", str(path)],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise ServiceError(f"whisper-fetch {path} exited {done.returncode}: {done.stderr.strip()}")
        points = []
        for line in done.stdout.splitlines():
            stamp, value = line.split("\t")
            points.append((int(stamp), None if value == "None" else float(value)))
        return points

    def log_problems(self) -> list[str]:
        """Lines of carbon's logs that say it refused or failed on something it was sent."""
        return [line for path in sorted(self.log_dir.rglob("*.log"))
                for line in path.read_text(errors="replace").splitlines()
                if any(word in line for word in REFUSALS)]

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().strip())
        return None

    def stop(self) -> None:
        """SIGTERM to the daemon (the pid of its pid file), wait until its tree is gone, remove the
        temp dir; safe to call more than once."""
        started = time.monotonic()
        try:
            if self.reaper is not None and self.reaper.poll() is None:
                pid = self.pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                else:
                    kill_tree(self.reaper.pid, signal.SIGTERM)
            finish(self.reaper, timeout=20)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.timings.setdefault("stop", time.monotonic() - started)


def start(*, timeout: float = 30, retention: str = RETENTION) -> Carbon:
    """Start carbon-cache on this suite's loopback ports and wait until its line receiver and cache
    query port accept connections; on any failure, clean up and raise ServiceError."""
    if shutil.which(CARBON_CACHE) is None or shutil.which(WHISPER_FETCH) is None:
        raise ServiceError("carbon-cache/whisper-fetch not found: run `bash tests/services/setup.sh` "
                           "(installs Debian's graphite-carbon and python3-whisper)")
    reap_stale("spk-carbon-")
    for port in (LINE_PORT, PICKLE_PORT, QUERY_PORT):
        ensure_port_free(HOST, port, "carbon-cache", "tests/services/carbon.py")
    tmpdir = Path(tempfile.mkdtemp(prefix=f"spk-carbon-{os.getpid()}-"))
    carbon = Carbon(tmpdir=tmpdir)
    for sub in ("conf", "storage/whisper", "storage/lists", "log", "run"):
        (tmpdir / sub).mkdir(parents=True, exist_ok=True)
    carbon.config.write_text(CARBON_CONF.format(dir=tmpdir, host=HOST, line=LINE_PORT, pickle=PICKLE_PORT,
                                                query=QUERY_PORT))
    (tmpdir / "conf" / "storage-schemas.conf").write_text(STORAGE_SCHEMAS.format(retention=retention))
    env = {**os.environ, "GRAPHITE_ROOT": str(tmpdir)}
    env.pop("PYTHONPATH", None)  # carbon-cache runs Debian's python3 and its own modules
    argv = [CARBON_CACHE, f"--config={carbon.config}", f"--pidfile={carbon.pidfile}", "start"]
    began = time.monotonic()
    try:
        carbon.reaper = spawn_reaped(argv, env=env, tmpdir=tmpdir, log=tmpdir / "server.out")
        deadline = began + timeout
        wait_ready(lambda: accepts(HOST, LINE_PORT) and accepts(HOST, QUERY_PORT), carbon.reaper, "carbon-cache",
                   f"listening on {HOST}:{LINE_PORT}", deadline, timeout, lambda: carbon.logs)
        carbon.timings["start"] = time.monotonic() - began
    except BaseException:
        carbon.stop()
        raise
    return carbon


def main() -> int:
    carbon = start()
    return serve_by_hand(carbon, f"carbon-cache: line receiver {carbon.host}:{carbon.line_port}, dir {carbon.tmpdir}")


if __name__ == "__main__":
    sys.exit(main())
