"""A private Redis server for the tests, on the host and port of the shipped conf.d/redis.json.

Debian's redis-server (7.0) without its config file: `redis-server --bind HOST --port PORT --save ''
--appendonly no --daemonize yes --pidfile DIR/redis.pid --dir DIR --logfile DIR/redis.log`, DIR a
temp dir (nothing persists between runs), stopped with `redis-cli -h HOST -p PORT shutdown nosave`
and the temp dir removed. The daemon runs under the subreaper of tests/services/rabbitmq.py, so
that once it is stopped it is really gone (not left as a zombie of this machine's init).

By hand: `python -m tests.services.redis` starts it, prints it and stops it on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.rabbitmq import (
    ServiceError,
    ensure_port_free,
    finish,
    reap_stale,
    require_loopback,
    serve_by_hand,
    shipped_settings,
    spawn_reaped,
    tail,
    wait_ready,
)

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING on host:port (RESP, no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A running private redis-server; settings are those of the shipped redis.json."""

    settings: dict[str, Any]
    tmpdir: Path
    reaper: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return str(self.settings["host"])

    @property
    def port(self) -> int:
        return int(self.settings["port"])

    @property
    def pidfile(self) -> Path:
        return self.tmpdir / "redis.pid"

    @property
    def logs(self) -> str:
        return "\n".join(tail(path) for path in (self.tmpdir / "server.out", self.tmpdir / "redis.log"))

    def stop(self) -> None:
        """`redis-cli shutdown nosave`, wait until the daemon is gone, remove the temp dir; safe to
        call more than once."""
        started = time.monotonic()
        try:
            graceful = False
            if self.reaper is not None and self.reaper.poll() is None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    done = subprocess.run([REDIS_CLI, "-h", self.host, "-p", str(self.port), "shutdown", "nosave"],
                                          capture_output=True, text=True, timeout=10, check=False)
                    graceful = done.returncode == 0
            finish(self.reaper, timeout=10 if graceful else 1)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.timings.setdefault("stop", time.monotonic() - started)


def start(settings: Mapping[str, Any] | None = None, *, timeout: float = 20,
          source: str = "conf.d/redis.json") -> RedisServer:
    """Start redis-server on the host/port of settings (default: the shipped redis.json) and wait
    until it answers PING; on any failure, clean up and raise ServiceError."""
    if shutil.which(REDIS_SERVER) is None or shutil.which(REDIS_CLI) is None:
        raise ServiceError("redis-server/redis-cli not found: run `bash tests/services/setup.sh` "
                           "(installs Debian's redis-server)")
    conf = dict(settings if settings is not None else shipped_settings("redis.json"))
    host, port = str(conf["host"]), int(conf["port"])
    require_loopback(host, source)
    reap_stale("spk-redis-")
    ensure_port_free(host, port, "Redis", source)
    tmpdir = Path(tempfile.mkdtemp(prefix=f"spk-redis-{os.getpid()}-"))
    server = RedisServer(settings=conf, tmpdir=tmpdir)
    argv = [REDIS_SERVER, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
            "--daemonize", "yes", "--pidfile", str(server.pidfile), "--dir", str(tmpdir),
            "--logfile", str(tmpdir / "redis.log")]
    began = time.monotonic()
    try:
        server.reaper = spawn_reaped(argv, env=os.environ, tmpdir=tmpdir, log=tmpdir / "server.out")
        deadline = began + timeout
        wait_ready(lambda: ping(host, port), server.reaper, "redis-server", f"answering PING on {host}:{port}",
                   deadline, timeout, lambda: server.logs)
        server.timings["start"] = time.monotonic() - began
    except BaseException:
        server.stop()
        raise
    return server


def main() -> int:
    server = start()
    return serve_by_hand(server, f"redis-server on {server.host}:{server.port}, dir {server.tmpdir}")


if __name__ == "__main__":
    sys.exit(main())
