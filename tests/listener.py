"""``metrics-kvm --listen`` as a test (or a benchmark) runs it: the installed command as a real
process, its stderr in a file, scraped over real HTTP.

:func:`listening` starts it, waits for its start line and yields a :class:`Listener`; on the way
out it sends SIGTERM (SIGKILL if it has not ended within 10 s) and waits for it, whatever the
test did. A benchmark: ``with listening(port, "-u", uri) as server: server.get()`` per scrape.

:func:`families` turns a Prometheus text into {family: (header lines, sorted sample lines)}: two
texts of the same metrics compare equal whatever order the domains came in (libvirt's test
driver lists them in a different order on every connection).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import BIN

HOST = "127.0.0.1"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STARTED = "listening on http://"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Listener:
    proc: subprocess.Popen[bytes]
    address: str  # HOST:PORT
    log: Path

    def get(self, path: str = "/metrics", method: str = "GET", timeout: float = 60) -> Answer:
        host, _, port = self.address.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
        try:
            conn.request(method, path)
            answer = conn.getresponse()
            body = answer.read().decode("utf-8")
            return Answer(answer.status, {k.lower(): v for k, v in answer.getheaders()}, body)
        finally:
            conn.close()

    def metrics(self) -> str:
        """One scrape's body, which must be HTTP 200 with the exposition format's content type."""
        answer = self.get()
        assert (answer.status, answer.headers.get("content-type")) == (200, CONTENT_TYPE), answer
        return answer.body

    def lines(self) -> list[str]:
        """What it has written on stderr so far, line by line."""
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send sig and wait for the exit code (SIGKILL past the timeout: -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@contextmanager
def listening(port: int, *args: str, host: str = HOST, timeout: float = 30) -> Iterator[Listener]:
    """``metrics-kvm --listen HOST:PORT ARGS``, started and ready (its start line written)."""
    folder = Path(tempfile.mkdtemp(prefix="spk-listen-"))
    log = folder / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(BIN / "metrics-kvm"), "--listen", f"{host}:{port}", *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    server = Listener(proc, f"{host}:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while not any(STARTED in line for line in server.lines()):
            assert proc.poll() is None, f"metrics-kvm --listen exited {proc.returncode}: {server.lines()}"
            assert time.monotonic() < deadline, f"metrics-kvm --listen did not start: {server.lines()}"
            time.sleep(0.02)
        yield server
    finally:
        server.stop()
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def families(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """{family name: (its # HELP and # TYPE lines, its sample lines sorted)} of a Prometheus text."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            name = line.split(" ", 3)[2]
            found.setdefault(name, ([], []))[0].append(line)
        elif line:
            name = line.split("{", 1)[0].split(" ", 1)[0]
            found.setdefault(name, ([], []))[1].append(line)
    for _headers, samples in found.values():
        samples.sort()
    return found


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars)
            out.append("\n" if nxt == "n" else nxt)
        else:
            out.append(char)
    return "".join(out)


Series = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Series, float]:
    """{(metric, sorted (label, value) pairs, unescaped): value} of every sample of a Prometheus text."""
    found: dict[Series, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert match is not None, line
        labels = tuple(sorted((k, _unescape(v)) for k, v in re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"',
                                                                           match.group(2) or "")))
        found[(match.group(1), labels)] = float(match.group(3))
    return found
