"""metrics-kvm --listen against a private libvirtd (tests/services/libvirtd.py) that the tests stop,
restart and freeze, and scraped by a real Prometheus (Debian's prometheus 2.42,
tests/services/prometheus.py).

The node file is served by the daemon's test driver (``test+unix:///DIR/names.xml?socket=...``),
with the hostile names of tests/nodes.py. Prometheus stores every series of a scrape with the
one-shot command's values (``up`` 1); the listener keeps one connection for every scrape (the
daemon serves one client, the same one, scrape after scrape), answers ``kvm_up 0`` while the
daemon is stopped and the same data once it is back, on one new connection, with one stderr line
each way; a frozen daemon (SIGSTOP) makes a scrape answer ``kvm_up 0`` within -t, and after
SIGCONT the listener reads again and the abandoned connection is closed. The shared libvirtd is
never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import nodes
from tests.conftest import run
from tests.listener import Listener, families, listening, samples
from tests.services import libvirtd as libvirtd_service
from tests.services.prometheus import Prometheus

PORT = 19520  # 19520-19529: this module's (the listen work's range is 19500-19599)
TIMEOUT = 2  # the listeners' -t
MARGIN = 1.5  # a loaded machine
DOWN = "kvm_up 0"
BACK = "metrics-kvm: read test+unix://"
OUTAGE = "metrics-kvm: answering kvm_up 0 until test+unix://"
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance", "listener"}


@pytest.fixture(scope="module")
def daemon() -> Iterator[libvirtd_service.PrivateLibvirtd]:
    server = libvirtd_service.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def uri(daemon: libvirtd_service.PrivateLibvirtd) -> str:
    """The hostile names, through the private daemon, running and answering."""
    if daemon.reaper is None:
        daemon.start()
    daemon.thaw()
    path = daemon.tmpdir / "names.xml"
    if not path.exists():
        nodes.write(path, nodes.HOSTILE)
        path.chmod(0o644)
    return daemon.uri(path)


def one_shot(uri: str, *args: str) -> str:
    result = run("metrics-kvm", "-f", "prometheus", "-u", uri, *args, timeout=60)
    assert result.returncode == 0, result
    return result.stdout


def timed(server: Listener) -> tuple[float, str]:
    began = time.monotonic()
    body = server.metrics()
    return time.monotonic() - began, body


def said(server: Listener, start: str) -> list[str]:
    return [line for line in server.lines() if line.startswith(start)]


def settled(daemon: libvirtd_service.PrivateLibvirtd, count: int, timeout: float = 10) -> list[str]:
    """The daemon's clients once there are ``count`` of them (a closed connection takes a moment to go)."""
    deadline = time.monotonic() + timeout
    while len(clients := daemon.clients()) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return clients


def test_scraped_by_prometheus_with_the_one_shot_values(prometheus: Prometheus, uri: str) -> None:
    with listening(PORT, "-u", uri, "--fill", "-t", "5") as server:
        since = prometheus.scrape_listener("names", server.address)
        try:
            report = prometheus.listener_scraped("names", since)
            stored = prometheus.query('{job="listen",listener="names",__name__=~"kvm_.+"}')
        finally:
            prometheus.scrape_listener("names", None)
        expected = samples(one_shot(uri, "--fill"))
    assert report == {"up": 1, "samples": len(expected), "error": ""}, report
    got = {(item["metric"]["__name__"],
            tuple(sorted((k, v) for k, v in item["metric"].items() if k not in TARGET_LABELS | {"__name__"}))):
           float(item["value"][1]) for item in stored}
    assert set(got) == set(expected)  # every series, every hostile name as it is
    assert {labels for name, labels in got if name == "kvm_domain_state"} == {(("domain", n),) for n in nodes.HOSTILE}
    # the per-domain counters the test driver makes from the clock differ between two reads; nothing else
    steady = [key for key in expected if not (key[0].endswith("_total") and not key[0].startswith("kvm_host_"))]
    assert len(steady) > 100
    assert {key: got[key] for key in steady} == {key: expected[key] for key in steady}
    assert prometheus.log_problems() == []


def test_survives_a_libvirtd_restart(daemon: libvirtd_service.PrivateLibvirtd, uri: str) -> None:
    with listening(PORT + 1, "-u", uri, "-t", str(TIMEOUT)) as server:
        before = server.metrics()
        assert families(before) == families(one_shot(uri))
        [client] = daemon.clients()
        assert [server.metrics() for _ in range(5)] == [before] * 5
        assert daemon.clients() == [client]  # one connection, reused by every scrape
        daemon.stop()
        for _ in range(3):
            took, body = timed(server)
            assert body.splitlines()[-1] == DOWN and body.count("\n") == 3, body
            assert took < TIMEOUT + MARGIN
        daemon.start()
        after = server.metrics()
        assert families(after) == families(before)
        [again] = daemon.clients()
        assert server.metrics() == after and daemon.clients() == [again]
        outage, back = said(server, OUTAGE), said(server, BACK)
    assert len(outage) == 1 and "cannot connect to" in outage[0], outage
    assert len(back) == 1 and back[0].endswith("(2 connections opened since the start)"), back


def test_a_hung_libvirtd_answers_down_within_the_timeout(daemon: libvirtd_service.PrivateLibvirtd, uri: str) -> None:
    with listening(PORT + 2, "-u", uri, "-t", str(TIMEOUT)) as server:
        before = server.metrics()
        daemon.freeze()
        try:
            for _ in range(3):  # the first waits in libvirt, the others for the thread still waiting there
                took, body = timed(server)
                assert body.splitlines()[-1] == DOWN, body
                assert TIMEOUT - 0.1 < took < TIMEOUT + MARGIN, took
        finally:
            daemon.thaw()
        took, after = timed(server)
        assert families(after) == families(before) and took < TIMEOUT
        assert len(settled(daemon, 1)) == 1  # the abandoned connection closed once libvirtd answered it
        outage, back = said(server, OUTAGE), said(server, BACK)
    assert len(outage) == 1 and outage[0].endswith(f"timed out after {TIMEOUT}s while reading domain statistics "
                                                   "(state, cpu, balloon, vcpu, interface, block)"), outage
    assert len(back) == 1 and back[0].endswith("(2 connections opened since the start)"), back


def test_every_process_is_gone(daemon: libvirtd_service.PrivateLibvirtd, uri: str) -> None:
    """The listeners of this module ended with their fixtures: the daemon serves no client."""
    assert settled(daemon, 0) == []
    assert Path(daemon.socket).exists()
