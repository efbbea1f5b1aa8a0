"""A private Prometheus server, the exposition endpoint it scrapes, and promtool, for the tests.

Debian's prometheus (2.42) with a configuration of our own in a fresh temp dir:
``--config.file DIR/prometheus.yml --storage.tsdb.path DIR/data --web.listen-address
127.0.0.1:PORT``, under the subreaper of tests/services/rabbitmq.py, stopped with SIGTERM (it
closes its TSDB and exits) and the temp dir removed afterwards.

The exposition endpoint is the other side of a scrape, what an exporter is in production: a
small HTTP server in the test process (:class:`Exposition`) that serves, at ``/<slot>``, the text
a test put there with :meth:`Prometheus.expose` (the output of ``metrics-kvm -f prometheus``),
with the exposition format's content type. Each slot is a static target of the one scrape job,
labelled ``exposition="<slot>"``, scraped every second; a slot with nothing in it answers an
empty page (no samples). :meth:`Prometheus.scraped` waits until Prometheus has scraped the text
now in a slot and says what the scrape reported (``up``, ``scrape_samples_scraped``), and
:meth:`Prometheus.query` asks the HTTP API (``/api/v1/query``).

A second job, ``listen``, scrapes the ``/metrics`` of the HTTP endpoints a test names with
:meth:`Prometheus.scrape_listener` (``metrics-kvm --listen``), labelled ``listener="<name>"``,
through a file of targets Prometheus re-reads (file_sd); :meth:`Prometheus.listener_scraped`
waits for a scrape of one, as ``scraped`` does for a slot.

:func:`promtool_check` runs ``promtool check metrics`` (from the same package) on a text.

By hand: ``python -m tests.services.prometheus`` starts it, prints it and stops it on Ctrl-C.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services.rabbitmq import (
    ServiceError,
    ensure_port_free,
    finish,
    kill_tree,
    reap_stale,
    serve_by_hand,
    spawn_reaped,
    tail,
)

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
HOST = "127.0.0.1"
WEB_PORT, EXPOSITION_PORT = 18060, 18061
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# What Prometheus logs when a scrape or its samples were refused (scrape/scrape.go, level=warn/error).
REFUSALS = ("level=warn", "level=error")


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on text (exit 0: parsed and linted clean, 1: not parsed, 3: lint
    problems, each on stderr)."""
    if shutil.which(PROMTOOL) is None:
        raise ServiceError("promtool not found: run `bash tests/services/setup.sh` (installs Debian's prometheus)")
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)


class Exposition:
    """An HTTP server on HOST:port that serves a text per slot (``/<slot>``), and knows when each
    slot's text was put there."""

    def __init__(self, port: int, slots: Sequence[str]) -> None:
        self.lock = threading.Lock()
        self.texts: dict[str, bytes] = {slot: b"" for slot in slots}
        self.put_at: dict[str, float] = dict.fromkeys(slots, 0.0)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                slot = self.path.lstrip("/")
                with owner.lock:
                    body = owner.texts.get(slot)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape on stderr would bury the test's output

        self.server = http.server.ThreadingHTTPServer((HOST, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="exposition", daemon=True)
        self.thread.start()

    def put(self, slot: str, text: str) -> None:
        with self.lock:
            self.texts[slot] = text.encode()
            self.put_at[slot] = time.time()

    def since(self, slot: str) -> float:
        """When the current text of slot was put there (time.time())."""
        with self.lock:
            return self.put_at[slot]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


CONFIG = """\
# Written by tests/services/prometheus.py for one test session.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1m
scrape_configs:
  - job_name: listen
    file_sd_configs:
      - files: ["{listeners}"]
        refresh_interval: 1s
  - job_name: exposition
    static_configs:
{targets}
"""
TARGET = """\
      - targets: ["{host}:{port}"]
        labels: {{__metrics_path__: "/{slot}", exposition: "{slot}"}}"""


@dataclass
class Prometheus:
    """A running private Prometheus server and the exposition endpoint it scrapes."""

    tmpdir: Path
    slots: tuple[str, ...]
    host: str = HOST
    port: int = WEB_PORT
    reaper: subprocess.Popen[bytes] | None = None
    exposition: Exposition | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.tmpdir / "prometheus.log"

    @property
    def logs(self) -> str:
        return tail(self.log)

    def log_problems(self) -> list[str]:
        """Lines of Prometheus's log at level warn or error (a refused scrape or sample)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(word in line for word in REFUSALS)]

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>?params; the "data" of a successful answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as answer:
                doc = json.loads(answer.read())
        except urllib.error.HTTPError as err:
            raise ServiceError(f"Prometheus /api/v1/{path} {params}: HTTP {err.code} {err.read()[:500]!r}") from err
        if doc.get("status") != "success":
            raise ServiceError(f"Prometheus /api/v1/{path} {params}: {doc}")
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (each item: {"metric": labels, "value": [t, "v"]})."""
        data = self.api("query", query=promql)
        if data["resultType"] != "vector":
            raise ServiceError(f"{promql}: a {data['resultType']}, not a vector")
        return list(data["result"])

    def expose(self, slot: str, text: str) -> None:
        """Serve text at /<slot> from now on (the empty text: an empty page)."""
        assert self.exposition is not None
        self.exposition.put(slot, text)

    @property
    def listeners(self) -> Path:
        return self.tmpdir / "listeners.json"

    def scrape_listener(self, name: str, address: str | None) -> float:
        """Scrape http://ADDRESS/metrics from now on as listener=name (None: no more); when the
        targets were written (time.time())."""
        targets = [] if address is None else [{"targets": [address], "labels": {"listener": name}}]
        staged = self.listeners.with_suffix(".new")
        staged.write_text(json.dumps(targets))
        staged.replace(self.listeners)  # whole, never half a file
        return time.time()

    def listener_scraped(self, name: str, since: float, timeout: float = 60) -> dict[str, Any]:
        """Wait until Prometheus has stored a scrape of listener name that began after since; what
        it reported: {"up": 0 or 1, "samples": scrape_samples_scraped, "error": the target's last error}."""
        return self._scrape_after(f'{{job="listen",listener="{name}"}}', ("listener", name), since, timeout,
                                  f"no scrape of listener {name} since {since}")

    def scraped(self, slot: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until Prometheus has stored a scrape of slot that began after its text was put
        there; what that scrape reported: {"up": 0 or 1, "samples": scrape_samples_scraped,
        "error": the target's last error}."""
        assert self.exposition is not None
        return self._scrape_after(f'{{exposition="{slot}"}}', ("exposition", slot), self.exposition.since(slot),
                                  timeout, f"no scrape of /{slot} since its text was put there")

    def _scrape_after(self, selector: str, label: tuple[str, str], since: float, timeout: float,
                      what: str) -> dict[str, Any]:
        """The first stored scrape of the target ``selector`` picks that began after ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            stamp = self.query(f"timestamp(up{selector})")
            if stamp and float(stamp[0]["value"][1]) >= since:
                break
            self._alive(deadline, what)
            time.sleep(0.2)
        up = self.query(f"up{selector}")
        samples = self.query(f"scrape_samples_scraped{selector}")
        targets = self.api("targets", state="active")["activeTargets"]
        target = next(t for t in targets if t["labels"].get(label[0]) == label[1])
        return {"up": float(up[0]["value"][1]), "samples": float(samples[0]["value"][1]),
                "error": target["lastError"]}

    def _alive(self, deadline: float, what: str) -> None:
        if self.reaper is not None and self.reaper.poll() is not None:
            raise ServiceError(f"prometheus exited ({self.reaper.returncode})\n{self.logs}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} after the timeout\n{self.logs}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM to prometheus, wait until it is gone, close the exposition server, remove the
        temp dir; safe to call more than once."""
        started = time.monotonic()
        try:
            if self.reaper is not None and self.reaper.poll() is None:
                kill_tree(self.reaper.pid, signal.SIGTERM)
            finish(self.reaper, timeout=20)
            if self.exposition is not None:
                self.exposition.close()
                self.exposition = None
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.timings.setdefault("stop", time.monotonic() - started)


def start(slots: Sequence[str], *, timeout: float = 60) -> Prometheus:
    """Start the exposition endpoint and prometheus, scraping one static target per slot, and wait
    until Prometheus says it is ready; on any failure, clean up and raise ServiceError."""
    if shutil.which(PROMETHEUS) is None:
        raise ServiceError("prometheus not found: run `bash tests/services/setup.sh` (installs Debian's prometheus)")
    reap_stale("spk-prometheus-")
    for port in (WEB_PORT, EXPOSITION_PORT):
        ensure_port_free(HOST, port, "Prometheus", "tests/services/prometheus.py")
    tmpdir = Path(tempfile.mkdtemp(prefix=f"spk-prometheus-{os.getpid()}-"))
    server = Prometheus(tmpdir=tmpdir, slots=tuple(slots))
    targets = "\n".join(TARGET.format(host=HOST, port=EXPOSITION_PORT, slot=slot) for slot in slots)
    config = tmpdir / "prometheus.yml"
    server.listeners.write_text("[]")
    config.write_text(CONFIG.format(targets=targets, listeners=server.listeners))
    argv = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmpdir / 'data'}",
            f"--web.listen-address={HOST}:{WEB_PORT}", "--log.level=info"]
    began = time.monotonic()
    try:
        server.exposition = Exposition(EXPOSITION_PORT, slots)
        server.reaper = spawn_reaped(argv, env=os.environ, tmpdir=tmpdir, log=server.log)
        deadline = began + timeout
        while not server.ready():
            server._alive(deadline, f"prometheus not ready on {HOST}:{WEB_PORT}")
            time.sleep(0.1)
        server.timings["start"] = time.monotonic() - began
    except BaseException:
        server.stop()
        raise
    return server


def main() -> int:
    server = start(["demo"])
    return serve_by_hand(server, f"prometheus on {server.url}, exposition http://{HOST}:{EXPOSITION_PORT}/demo, "
                                 f"dir {server.tmpdir}")


if __name__ == "__main__":
    sys.exit(main())
