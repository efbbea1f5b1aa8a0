r"""--per-domain: one result per domain, received by listeners that speak the agents' protocols.

The listeners stand in for the Sensu Core 1.x client socket (TCP, one JSON result, answered
'ok', or 'invalid' when it refuses it: tests/sensu1.py, after Sensu's source) and the Sensu Go
agent's events API (HTTP POST /events, 202 or 400): no Sensu agent is packaged in Debian. The
Sensu Go one accepts or refuses an event as the real agent and backend do: agent/event.go
``prepareEvent`` and agent/entity.go ``getEntities`` (the check is validated, the event's entity
becomes the check's proxy entity name and is replaced by the agent's own), then core/v2
``Check.Validate`` as the backend runs it on the event: check and proxy entity names
``\A[\w\.\-\:]+\z`` (Go's ``\w`` is ASCII).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests import sensu1
from tests.conftest import node_uri, run
from tests.nodes import HOSTILE

MIXED = node_uri("mixed.xml")
NAMES = node_uri("names.xml")

GO_NAME = re.compile(r"\A[\w.\-:]+\Z", re.ASCII)
AGENT = "kvm-host-1"  # the Sensu Go agent's own entity name


def sensu_go_refusal(event: dict[str, Any]) -> str | None:
    """Why the Sensu Go agent (or the backend after it) refuses an event, or None; the event is
    changed as the agent changes it (proxy_entity_name set, the entity replaced)."""
    check = event.get("check")
    if not isinstance(check, dict):
        return "at least check or metrics need to be instantiated for this event"
    check.setdefault("interval", 1)
    name = (check.get("metadata") or {}).get("name", "")
    if not name or not GO_NAME.match(name):
        return "check name cannot contain spaces or special characters"
    entity = event.get("entity")
    if isinstance(entity, dict) and (entity.get("metadata") or {}).get("name") != AGENT:
        check["proxy_entity_name"] = entity["metadata"]["name"]
    event["entity"] = {"entity_class": "agent", "metadata": {"name": AGENT, "namespace": "default"}}
    proxy = check.get("proxy_entity_name", "")
    if proxy and not GO_NAME.match(proxy):
        return "proxy entity name cannot contain spaces or special characters"
    return None


@pytest.fixture
def client_socket() -> Iterator[tuple[int, list[dict]]]:
    """A Sensu Core 1.9 client socket (tests/sensu1.py): its port, and the results it accepted."""
    sock = sensu1.ClientSocket("hv1", lambda _payload: None)
    try:
        yield sock.port, sock.accepted
    finally:
        sock.close()


@pytest.fixture
def events_api() -> Iterator[tuple[str, list[dict]]]:
    """A Sensu Go agent's events API: the events it accepted, as the agent forwards them."""
    received: list[dict] = []

    class Agent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            event = json.loads(self.rfile.read(length))
            refused = sensu_go_refusal(event)
            if refused is None:
                received.append({"path": self.path, "body": event})
            self.send_response(400 if refused else 202)
            self.end_headers()
            if refused:
                self.wfile.write(refused.encode())

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/events", received
    server.shutdown()
    thread.join()
    server.server_close()


def test_results_reach_the_client_socket_one_per_domain(client_socket, tmp_path):
    port, received = client_socket
    result = run("check-kvm-domstate", "-u", MIXED, "--per-domain", "sensu", "--per-domain-address",
                 f"127.0.0.1:{port}", "--per-domain-handler", "kvm-remediate", "--state-dir", str(tmp_path))
    assert result.returncode == 2, result
    assert "per-domain results not sent" not in result.stdout
    by_domain = {r["kvm_domain"]: r for r in received}
    assert set(by_domain) == {"web1", "db 1", "grüße-ü", "batch", "oops", "sleepy"}
    assert {r["kvm_domain"]: r["source"] for r in received} == {
        "web1": "web1", "db 1": "db_1", "grüße-ü": "gru_e-u", "batch": "batch", "oops": "oops", "sleepy": "sleepy"}
    oops = by_domain["oops"]
    assert (oops["executed"], oops["status"]) > (0, 0)  # defaulted by the client socket, as Sensu does
    del oops["executed"]
    assert oops == {"name": "check-kvm-domstate", "source": "oops", "kvm_domain": "oops", "status": 2,
                    "output": "CheckKvmDomstate CRITICAL: oops crashed (unknown)\n", "handlers": ["kvm-remediate"],
                    "interval": 60, "ttl": 180}
    assert by_domain["web1"]["status"] == 0
    assert by_domain["grüße-ü"]["status"] == 1


def test_every_hostile_name_is_a_client_sensu_core_accepts(client_socket, tmp_path):
    port, received = client_socket
    result = run("check-kvm-domstate", "-u", NAMES, "--per-domain", "sensu", "--per-domain-address", f"127.0.0.1:{port}",
                 "--state-dir", str(tmp_path))
    assert result.returncode == 2 and "per-domain results not sent" not in result.stdout, result
    assert sorted(r["kvm_domain"] for r in received) == sorted(HOSTILE)  # the real names, each once
    sources = [r["source"] for r in received]
    assert len(set(sources)) == len(HOSTILE), sorted(sources)  # one proxy client per domain
    by_domain = {r["kvm_domain"]: r for r in received}
    assert by_domain["web-01"]["source"] == "web-01" and by_domain["db.example.com"]["source"] == "db.example.com"
    assert by_domain["p|q"]["output"] == "CheckKvmDomstate CRITICAL: p¦q crashed (unknown)\n"
    assert by_domain["new\nline"]["output"] == "CheckKvmDomstate OK: new\\nline running (unknown)\n"


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
    assert first.endswith(f"; 6 of 6 per-domain results not sent to 127.0.0.1:{port}: Connection refused"), first


def test_results_reach_the_sensu_go_events_api(events_api, tmp_path):
    url, received = events_api
    result = run("check-kvm-memory", "-u", "test:///default", "--per-domain", "sensu-go", "--per-domain-address", url,
                 "--state-dir", str(tmp_path), "--per-domain-occurrences", "2", "--per-domain-refresh", "1800")
    assert result.returncode == 0, result
    (event,) = received
    assert event["path"] == "/events"
    check = event["body"]["check"]
    assert check["proxy_entity_name"] == "test"
    assert check["metadata"] == {"name": "check-kvm-memory", "annotations": {
        "kvm_domain": "test", "fatigue_check/occurrences": "2", "fatigue_check/interval": "1800"}}  # for kvm-occurrences
    assert (check["interval"], check["ttl"]) == (60, 180)
    assert check["status"] == 0
    assert check["output"].startswith("CheckKvmMemory OK: test memory 50.0% used")


def test_every_hostile_name_is_an_entity_sensu_go_accepts(events_api, tmp_path):
    url, received = events_api
    result = run("check-kvm-domstate", "-u", NAMES, "--per-domain", "sensu-go", "--per-domain-address", url,
                 "--state-dir", str(tmp_path))
    assert result.returncode == 2 and "per-domain results not sent" not in result.stdout, result
    checks = [e["body"]["check"] for e in received]
    assert sorted(c["metadata"]["annotations"]["kvm_domain"] for c in checks) == sorted(HOSTILE)
    assert len({c["proxy_entity_name"] for c in checks}) == len(HOSTILE)
