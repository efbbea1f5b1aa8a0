"""--per-domain: one result per domain, received by listeners that speak the agents' protocols.

The listeners stand in for the Sensu Core 1.x client socket (TCP, one JSON result, answered
'ok') and the Sensu Go agent's events API (HTTP POST /events): no Sensu agent is packaged in
Debian, and both protocols are small enough to serve here exactly as the agents document them.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import node_uri, run

MIXED = node_uri("mixed.xml")


@pytest.fixture
def client_socket() -> Iterator[tuple[int, list[dict]]]:
    received: list[dict] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                try:
                    received.append(json.loads(data))
                    conn.sendall(b"ok")
                except ValueError:
                    conn.sendall(b"invalid")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def test_results_reach_the_client_socket_one_per_domain(client_socket, tmp_path):
    port, received = client_socket
    result = run("check-kvm-domstate", "-u", MIXED, "--per-domain", "sensu", "--per-domain-address",
                 f"127.0.0.1:{port}", "--per-domain-handler", "kvm-remediate", "--state-dir", str(tmp_path))
    assert result.returncode == 2, result
    assert "per-domain results not sent" not in result.stdout
    by_source = {r["source"]: r for r in received}
    assert set(by_source) == {"web1", "db 1", "grüße-ü", "batch", "oops", "sleepy"}
    assert by_source["oops"] == {"name": "check-kvm-domstate", "source": "oops", "status": 2,
                                 "output": "CheckKvmDomstate CRITICAL: oops crashed (unknown)\n",
                                 "handlers": ["kvm-remediate"], "interval": 60, "ttl": 180}
    assert by_source["web1"]["status"] == 0
    assert by_source["grüße-ü"]["status"] == 1


def test_a_missing_named_domain_is_sent_too(client_socket, tmp_path):
    port, received = client_socket
    run("check-kvm-domstate", "-u", MIXED, "-d", "gone", "-d", "web1", "--per-domain", "sensu",
        "--per-domain-address", f"127.0.0.1:{port}", "--state-dir", str(tmp_path))
    assert {r["source"]: r["status"] for r in received} == {"gone": 2, "web1": 0}


def test_a_socket_that_is_down_does_not_change_the_status(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("check-kvm-domstate", "-u", MIXED, "--per-domain", "sensu", "--per-domain-address", f"127.0.0.1:{port}",
                 "--state-dir", str(tmp_path))
    assert result.returncode == 2
    first = result.stdout.splitlines()[0]
    assert f"; 6 of 6 per-domain results not sent to 127.0.0.1:{port}: Connection refused | " in first


def test_results_reach_the_sensu_go_events_api(tmp_path):
    received: list[dict] = []

    class Agent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
            self.send_response(202)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/events"
        result = run("check-kvm-memory", "-u", "test:///default", "--per-domain", "sensu-go", "--per-domain-address", url,
                     "--state-dir", str(tmp_path), "--per-domain-occurrences", "2", "--per-domain-refresh", "1800")
    finally:
        server.shutdown()
        thread.join()
    assert result.returncode == 0, result
    (event,) = received
    assert event["path"] == "/events"
    assert event["body"]["entity"] == {"entity_class": "proxy", "metadata": {"name": "test"}}
    assert event["body"]["check"]["metadata"] == {
        "name": "check-kvm-memory",
        "annotations": {"fatigue_check/occurrences": "2", "fatigue_check/interval": "1800"}}  # for kvm-occurrences
    assert (event["body"]["check"]["interval"], event["body"]["check"]["ttl"]) == (60, 180)
    assert event["body"]["check"]["status"] == 0
    assert event["body"]["check"]["output"].startswith("CheckKvmMemory OK: test memory 50.0% used")
