"""metrics-kvm --listen on libvirt's test driver: the installed command as a real process,
scraped over real HTTP (tests/listener.py).

A scrape answers exactly what ``metrics-kvm --format prometheus`` prints for the same URI and
selection (the domains in whatever order the connection lists them; on the test driver only the
per-domain counters --fill reads change between two reads, since the driver makes them from the
clock), with the exposition content type; other paths 404, other methods 405; a libvirtd that
cannot be reached answers ``kvm_up 0`` with one line on stderr, secrets shown as ***; SIGTERM and
SIGINT end it with exit 0 and free the port; the one-shot watchdog does not end it; bad input is
one line and exit 3. A libvirtd that restarts or hangs: tests/services/test_listen.py (a private
libvirtd).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import nodes
from tests.conftest import node_uri, refuses, run
from tests.listener import HOST, families, listening

NAMES = node_uri("names.xml")
PORT = 19510  # 19510-19519: this module's (the listen work's range is 19500-19599)
SECRET = "s3cret-listen"
NO_DAEMON = f"qemu+unix:///system?socket=/nonexistent/spk-no-libvirtd.sock&password={SECRET}"
DOWN = ("# HELP kvm_up 1 when metrics-kvm read the host's statistics, 0 when it failed (it exits 3, the error on "
        "stderr)\n# TYPE kvm_up gauge\nkvm_up 0\n")


def one_shot(*args: str, code: int = 0) -> tuple[str, str]:
    result = run("metrics-kvm", "-f", "prometheus", *args, timeout=60)
    assert result.returncode == code, result
    return result.stdout, result.stderr


def clock_made(text: str) -> str:
    """text without the per-domain counters that libvirt's test driver makes from the clock."""
    return "\n".join(line for line in text.splitlines()
                     if not (line.split("{")[0].endswith("_total") and not line.startswith(("kvm_host_", "# "))))


@pytest.mark.parametrize("selection", [
    [], ["--match", "^web"], ["--exclude", "a"], ["-d", "say \"hi\"", "-d", "café", "-d", "trail\\"], ["--fill"],
], ids=["all", "match", "exclude", "domains", "fill"])
def test_a_scrape_is_the_one_shot_output(selection: list[str]) -> None:
    with listening(PORT, "-u", NAMES, *selection) as server:
        first, second = server.metrics(), server.metrics()
        expected, _ = one_shot("-u", NAMES, *selection)
        lines = server.lines()
    if "--fill" in selection:
        assert len(families(first)) == len(families(expected)) > 10
        first, second, expected = clock_made(first), clock_made(second), clock_made(expected)
    assert first == second  # one connection: the same order in every scrape
    assert families(first) == families(expected)
    assert len(lines) == 1 and lines[0].startswith("metrics-kvm: listening on http://127.0.0.1:"), lines


def test_a_missing_domain_is_said_once() -> None:
    with listening(PORT + 1, "-u", NAMES, "-d", "web 1", "-d", "nowhere") as server:
        bodies = [server.metrics() for _ in range(3)]
        lines = server.lines()
    expected, err = one_shot("-u", NAMES, "-d", "web 1", "-d", "nowhere", code=2)
    assert all(body == expected for body in bodies)  # one domain: no order to differ
    assert lines[1:] == err.splitlines() == ["metrics-kvm: CRITICAL: domain not found: nowhere"], lines


def test_scrapes_are_served_one_at_a_time(tmp_path: Path) -> None:
    """Three scrapes at once of 1,000 domains with --fill (some 0.1 s each here): one after the
    other, the first done well before the last (at the same time, they would end together)."""
    uri = f"test://{nodes.write(tmp_path / 'many.xml', nodes.many(1000))}"
    with listening(PORT + 9, "-u", uri, "--fill") as server:
        server.metrics()
        began = time.monotonic()
        ended: list[float] = []
        bodies: list[str] = []

        def scrape() -> None:
            bodies.append(server.metrics())
            ended.append(time.monotonic() - began)

        threads = [threading.Thread(target=scrape) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(bodies) == 3 and all(body.count("kvm_domain_up{") == 1000 for body in bodies)
    assert ended[0] < 0.6 * ended[2], ended


def test_other_paths_and_methods() -> None:
    with listening(PORT + 2, "-u", NAMES) as server:
        for path in ("/", "/metrics/", "/metricsx", "/favicon.ico"):
            assert server.get(path).status == 404, path
        assert server.get("/metrics?x=1").status == 200
        for method in ("POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW"):
            answer = server.get(method=method)
            assert (answer.status, answer.headers.get("allow"), answer.body) == (405, "GET", ""), method
        assert server.metrics().startswith("# HELP kvm_up")
        assert server.get().headers.get("server") == "metrics-kvm"


def test_down_is_kvm_up_0_said_once_without_secrets() -> None:
    with listening(PORT + 3, "-u", NO_DAEMON, "-t", "2") as server:
        bodies = [server.metrics() for _ in range(3)]
        lines = server.lines()
    out, err = one_shot("-u", NO_DAEMON, code=3)
    assert bodies == [DOWN] * 3 and out == DOWN
    assert len(lines) == 2, lines  # the start line, one line for the outage (not one per scrape)
    assert lines[1].startswith("metrics-kvm: answering kvm_up 0 until qemu+unix:///system?socket=") and \
        "cannot connect to" in lines[1], lines
    assert all(SECRET not in text for text in [*lines, err]) and "password=***" in lines[0], lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_it_cleanly(sig: signal.Signals) -> None:
    with listening(PORT + 4, "-u", NAMES) as server:
        server.metrics()
        assert server.stop(sig, timeout=5) == 0
        lines = server.lines()
    assert lines[-1] == f"metrics-kvm: stopped by {sig.name}, no longer listening on {HOST}:{PORT + 4}", lines
    assert len(lines) == 2, lines
    with socket.socket() as sock:  # the port is free again for a server (SO_REUSEADDR, as servers bind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, PORT + 4))
        sock.listen(1)


def test_the_one_shot_watchdog_does_not_end_it() -> None:
    with listening(PORT + 5, "-u", NAMES, "-t", "1") as server:
        time.sleep(2.5)
        assert server.proc.poll() is None
        assert "kvm_up 1" in server.metrics()


def test_ipv6_loopback() -> None:
    with listening(PORT + 6, "-u", NAMES, host="[::1]") as server:
        assert "kvm_up 1" in server.metrics()
        lines = server.lines()
    assert lines[0].startswith(f"metrics-kvm: listening on http://[::1]:{PORT + 6}/metrics for test://"), lines


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind((HOST, PORT + 7))
        sock.listen(1)
        yield PORT + 7


def test_a_port_in_use_is_one_line(taken: int) -> None:
    line = refuses("metrics-kvm", 3, "--listen", f"{HOST}:{taken}", "-u", NAMES)
    assert line == f"metrics-kvm: cannot listen on {HOST}:{taken}: Address already in use", line


@pytest.mark.parametrize("address", [
    "127.0.0.1", "9177", ":9177", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "::1:9177", "[::1]", "[nope]:9177",
    "300.1.1.1:9177", "http://127.0.0.1:9177/metrics", "a b:9177", "-x:9177", "127.0.0.1:9177/metrics", "",
])
def test_a_bad_address_is_one_line(address: str) -> None:
    line = refuses("metrics-kvm", 3, "--listen", address, "-u", NAMES)
    assert line.startswith("metrics-kvm: argument --listen: ") and line.endswith("(see --help)"), line


@pytest.mark.parametrize("form", ["graphite", "influxdb", "json"])
def test_only_the_prometheus_format(form: str) -> None:
    line = refuses("metrics-kvm", 3, "--listen", f"{HOST}:{PORT + 8}", "-f", form, "-u", NAMES)
    assert line == f"metrics-kvm: argument --listen: serves the Prometheus text only, not --format {form} (see --help)"
