"""A resident Prometheus endpoint: ``metrics-kvm --listen ADDRESS`` (checks/metrics.py).

One process serves ``GET /metrics`` over HTTP from one long-lived read-only libvirt connection,
so that a scrape costs what reading the statistics costs, without starting an interpreter and
connecting each time. The text is the one-shot command's, made by the same code.

* **One scrape at a time** (a lock): the concurrency belongs to libvirtd; a second scraper waits.
* **Each scrape within -t**: the one-shot run's time budget (activity.set_budget: reading stops
  a little before -t and what was read is reported), and the reading runs in a thread under the
  project's thread-based deadline (virt.deadline; a libvirt call blocks in C, where no signal
  handler runs) for a call that still blocks at -t. A libvirtd
  that does not answer in time makes the scrape answer ``kvm_up 0``; its connection is abandoned
  (the thread still waiting in it closes it when libvirtd answers) and a new one is opened at the
  next scrape. While that thread still waits, later scrapes wait for it within their own -t and
  answer ``kvm_up 0`` if it has not returned: a hung libvirtd holds one thread, not one per scrape.
* **Re-opened when it fails**: a connection libvirt reports dead (``isAlive()`` false, which it
  is once a call saw the socket closed: libvirtd restarted) is closed and a new one opened, within
  the same scrape, so a restart between two scrapes costs the scraper nothing.
* **Down is data**: while libvirtd cannot be read, a scrape answers HTTP 200 with the one-shot
  command's failure output (``kvm_up 0``), as an exporter's ``<name>_up``; the reason goes to
  stderr once per outage, and one line says when it is back.

Nothing here knows the metrics: ``read`` (given a connection) and ``render`` come from the command.
"""

from __future__ import annotations

import _thread
import contextlib
import http.server
import signal
import socket
import socketserver
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from sensu_kvm import activity, virt
from sensu_kvm.argtypes import ListenAddress, one_line
from sensu_kvm.errors import CallTimeout, KvmError
from sensu_kvm.names import visible
from sensu_kvm.output import Report

PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT = 30.0  # seconds a client may take to send its request before the server hangs up


class Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to end serve_forever."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


class Scraper:
    """The long-lived connection and what one scrape answers (see the module's docstring).

    ``read(conn)`` reads everything a scrape needs from a connection (libvirt calls only) and
    ``render(data)`` makes the report from it; ``down`` is the text of a failed scrape.
    """

    def __init__(self, prog: str, uri: str | None, timeout: float, read: Callable[[Any], Any],
                 render: Callable[[Any], Report], down: str) -> None:
        self.prog = prog
        self.uri = uri
        self.shown = virt.shown_uri(virt.resolve_uri(uri))
        self.timeout = timeout
        self.read = read
        self.render = render
        self.down = down
        self.lock = _thread.allocate_lock()  # one scrape at a time
        self.busy = _thread.allocate_lock()  # held while a reading thread runs, also an abandoned one
        self.conn: Any = None
        self.opened = 0  # connections opened so far
        self.outage: str | None = None  # the reason logged when the current outage began
        self.details: list[str] = []  # the report's details last logged (a -d domain not found)

    def log(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: {one_line(message)}\n")
        sys.stderr.flush()

    def _open(self) -> Any:
        conn = virt.connect(self.uri, timeout=None)  # this whole reading is under the deadline
        self.opened += 1
        return conn

    def _work(self, holder: list[Any]) -> Report:
        """In the reading thread: the report, from the connection in ``holder`` (re-opened into it
        when it is missing or dead)."""
        try:
            conn = holder[0]
            if conn is not None and not conn.isAlive():
                _close(conn)
                conn = holder[0] = None
            fresh = conn is None
            if conn is None:
                conn = holder[0] = self._open()
            try:
                data = self.read(conn)
            except KvmError:
                if fresh or conn.isAlive():
                    raise
                # The connection died since the last scrape (libvirtd restarted): once more on a new one.
                _close(conn)
                holder[0] = None
                conn = holder[0] = self._open()
                data = self.read(conn)
            return self.render(data)
        finally:
            self.busy.release()

    def scrape(self) -> tuple[str, bool]:
        """The text one GET /metrics answers, and whether libvirtd was read."""
        with self.lock:
            began = time.monotonic()
            if not self.busy.acquire(timeout=self.timeout):
                return self._failed(f"libvirtd has not answered an earlier scrape's call for over {self.timeout:g}s "
                                    f"(while {visible(activity.current())})")
            holder = [self.conn]
            left = max(0.001, self.timeout - (time.monotonic() - began))
            # The one-shot run's time budget (plugin.Watchdog sets it there): reading stops a little
            # before -t and reports what it read; the deadline below is for a call that still blocks.
            activity.set_budget(left - activity.reserve(self.timeout))
            try:
                report = virt.run_with_deadline(lambda: self._work(holder), left, "scrape")
            except CallTimeout:
                # The thread still waits in libvirt with the connection: abandoned, re-opened next time.
                self.conn = None
                return self._failed(f"timed out after {self.timeout:g}s while {visible(activity.current())}")
            except KvmError as err:
                self.conn = holder[0]
                return self._failed(str(err))
            except Exception as err:  # a bug: still an answer, and a line that says what
                self.conn = holder[0]
                return self._failed(f"internal error: {type(err).__name__}: {err}")
            self.conn = holder[0]
            if self.outage is not None:
                self.log(f"read {self.shown} again, serving its metrics ({self.opened} connections opened since the start)")
                self.outage = None
            if report.details != self.details:
                for line in report.details:
                    self.log(line)
                self.details = list(report.details)
            return report.summary.rstrip("\n") + "\n", True

    def _failed(self, reason: str) -> tuple[str, bool]:
        if self.outage is None:
            self.log(f"answering kvm_up 0 until {self.shown} can be read: {reason}")
            self.outage = reason
            self.details = []
        return self.down.rstrip("\n") + "\n", False


def _close(conn: Any) -> None:
    """Close a connection that is dead or being replaced, within a second (a dead one returns at once)."""
    with contextlib.suppress(Exception):
        virt.run_with_deadline(conn.close, 1.0, "virConnectClose")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart finds the port free even with connections in TIME_WAIT

    def __init__(self, address: ListenAddress, scraper: Scraper) -> None:
        self.address_family = socket.AF_INET6 if address.ipv6 else socket.AF_INET
        self.scraper = scraper
        super().__init__((address.host, address.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up (socket.getfqdn), which can wait on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT

    def version_string(self) -> str:
        return "metrics-kvm"  # no Python version in the Server header

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self.send_error(404, f"not found: the metrics are at {PATH}")
            return
        text, _read = self.server.scraper.scrape()
        body = text.encode("utf-8", "backslashreplace")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def __getattr__(self, name: str) -> Any:
        """Every other method (do_POST, do_HEAD, do_FOO...): 405, not http.server's 501."""
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape would fill the log; outages and recoveries are logged by the Scraper


def serve(prog: str, address: ListenAddress, scraper: Scraper) -> int:
    """Listen on ``address`` and answer scrapes until SIGTERM or SIGINT (exit 0). A port that
    cannot be had: one line on stderr, exit 3."""
    try:
        server = _Server(address, scraper)
    except OSError as err:
        reason = err.strerror or str(err)
        sys.stderr.write(f"{prog}: cannot listen on {address}: {one_line(reason)}\n")
        return 3

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stop(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    scraper.log(f"listening on http://{address}{PATH} for {scraper.shown} (read-only, one scrape at a time, "
                f"each within {scraper.timeout:g}s)")
    try:
        server.serve_forever(poll_interval=3600)  # the signal handler interrupts its wait
    except Stop as why:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)  # a second signal while closing changes nothing
        server.server_close()
        scraper.log(f"stopped by {why}, no longer listening on {address}")
    return 0
