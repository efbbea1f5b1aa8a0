"""A private InfluxDB 1.x for the tests: Debian's influxdb (1.6.7), `influxd -config FILE`.

The config file is written into a temp dir, so nothing is read from /etc/influxdb or written to
/var/lib/influxdb: meta, data and WAL directories in the temp dir; the HTTP API on
127.0.0.1:HTTP_PORT only (no pprof; no authentication unless start() is given an admin); the
RPC service of backup/restore on 127.0.0.1:RPC_PORT; reporting disabled; the self-monitoring store off; one UDP listener on
127.0.0.1:UDP_PORT writing into the database UDP_DATABASE (what the shipped handler-influxdb.json
of Sensu Core used to send to); no graphite, collectd, opentsdb or ifql listener. The daemon runs
under the subreaper of tests/services/rabbitmq.py and is stopped with SIGTERM (then SIGKILL), the
temp dir removed. Ports: HTTP 18000, UDP 18001, RPC 18002 by default (the services tier's
session fixture); the real-hypervisor tier starts its own on 18010-18012.

The HTTP API is spoken with the standard library only (urllib): `write` posts line protocol to
/write and returns the HTTP status and body, `query` runs InfluxQL through /query.

By hand: `python -m tests.services.influxdb` starts it, prints it and stops it on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.rabbitmq import (
    ServiceError,
    descendants,
    ensure_port_free,
    finish,
    reap_stale,
    serve_by_hand,
    spawn_reaped,
    tail,
    wait_ready,
)

INFLUXD = "influxd"
HOST = "127.0.0.1"
HTTP_PORT = 18000
UDP_PORT = 18001
RPC_PORT = 18002
UDP_DATABASE = "udp"

CONFIG = """\
reporting-disabled = true
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{dir}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  wal-fsync-delay = "0s"
  index-version = "inmem"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[[udp]]
  enabled = true
  bind-address = "{host}:{udp_port}"
  database = "{udp_database}"
  batch-size = 5000
  batch-timeout = "200ms"
"""


@dataclass
class Response:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class InfluxDB:
    """A running private influxd."""

    tmpdir: Path
    host: str = HOST
    http_port: int = HTTP_PORT
    udp_port: int = UDP_PORT
    udp_database: str = UDP_DATABASE
    reaper: subprocess.Popen[bytes] | None = None
    admin: tuple[str, str] | None = None  # the credentials of its requests, when authentication is on
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def config(self) -> Path:
        return self.tmpdir / "influxdb.conf"

    @property
    def logs(self) -> str:
        return tail(self.tmpdir / "influxd.out")

    def request(self, method: str, path: str, params: dict[str, str], body: bytes | None = None,
                timeout: float = 60) -> Response:
        if self.admin is not None:
            params = {**params, "u": self.admin[0], "p": self.admin[1]}
        req = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return Response(answer.status, answer.read().decode(errors="replace"))
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read().decode(errors="replace"))

    def ping(self) -> bool:
        try:
            return self.request("GET", "/ping", {}, timeout=1).status == 204
        except OSError:
            return False

    def query(self, q: str, db: str | None = None) -> Any:
        """The results of an InfluxQL statement (POST /query); ServiceError when it fails."""
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        answer = self.request("POST", "/query", params)
        if answer.status != 200:
            raise ServiceError(f"InfluxDB /query {q!r}: HTTP {answer.status} {answer.body}")
        results = answer.json()["results"]
        for result in results:
            if "error" in result:
                raise ServiceError(f"InfluxDB /query {q!r}: {result['error']}")
        return results

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')

    def write(self, db: str, lines: str, precision: str = "ns") -> Response:
        """POST line protocol to /write: 204 when every point was stored."""
        return self.request("POST", "/write", {"db": db, "precision": precision}, lines.encode())

    def series(self, db: str, measurement: str | None = None) -> list[str]:
        """The series keys of a database (SHOW SERIES), e.g. 'kvm_domain,domain=web1,host=h1'."""
        q = "SHOW SERIES" + (f' FROM "{measurement}"' if measurement else "")
        values: list[str] = []
        for result in self.query(q, db):
            for serie in result.get("series", []):
                values += [row[0] for row in serie.get("values", [])]
        return values

    def count(self, db: str, measurement: str, field_name: str) -> int:
        """How many points of a measurement have this field."""
        results = self.query(f'SELECT count("{field_name}") FROM "{measurement}"', db)
        series = results[0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0

    def stop(self) -> None:
        """SIGTERM (influxd closes its shards), wait, then kill; remove the temp dir. Safe to call
        more than once."""
        started = time.monotonic()
        try:
            if self.reaper is not None and self.reaper.poll() is None:
                for pid in descendants(self.reaper.pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGTERM)
            finish(self.reaper, timeout=15)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.timings.setdefault("stop", time.monotonic() - started)


def _udp_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServiceError(f"cannot start the test InfluxDB: UDP {host}:{port} is taken ({exc.strerror})") from exc


def start(*, http_port: int = HTTP_PORT, udp_port: int = UDP_PORT, rpc_port: int = RPC_PORT,
          admin: tuple[str, str] | None = None, timeout: float = 30) -> InfluxDB:
    """Start influxd with a private config, wait until /ping answers 204, create the UDP listener's
    database; on any failure, clean up and raise ServiceError. With ``admin`` (user, password),
    authentication is on and that admin user is created first (what influxd allows before any user
    exists); the fixture's own requests then carry it."""
    if shutil.which(INFLUXD) is None:
        raise ServiceError("influxd not found: run `bash tests/services/setup.sh` (installs Debian's influxdb)")
    reap_stale("spk-influxdb-")
    for port in (http_port, rpc_port):
        ensure_port_free(HOST, port, "InfluxDB", "tests/services/influxdb.py")
    _udp_port_free(HOST, udp_port)
    tmpdir = Path(tempfile.mkdtemp(prefix=f"spk-influxdb-{os.getpid()}-"))
    server = InfluxDB(tmpdir=tmpdir, http_port=http_port, udp_port=udp_port)
    server.config.write_text(CONFIG.format(host=HOST, rpc_port=rpc_port, http_port=http_port, udp_port=udp_port,
                                           udp_database=UDP_DATABASE, dir=tmpdir,
                                           auth="true" if admin else "false"))
    began = time.monotonic()
    try:
        server.reaper = spawn_reaped([INFLUXD, "-config", str(server.config)], env=os.environ, tmpdir=tmpdir,
                                     log=tmpdir / "influxd.out")
        deadline = began + timeout
        wait_ready(server.ping, server.reaper, "influxd", f"answering on {server.url}", deadline, timeout,
                   lambda: server.logs)
        if admin is not None:
            user, password = admin
            server.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
            server.admin = admin
        server.create_database(UDP_DATABASE)  # influxd 1.6's UDP listener creates it only on its first batch
        server.timings["start"] = time.monotonic() - began
    except BaseException:
        server.stop()
        raise
    return server


def main() -> int:
    server = start()
    return serve_by_hand(server, f"influxd on {server.url} (UDP {server.host}:{server.udp_port} -> "
                                 f"{server.udp_database}), dir {server.tmpdir}")


if __name__ == "__main__":
    sys.exit(main())
