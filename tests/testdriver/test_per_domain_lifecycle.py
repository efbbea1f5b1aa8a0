"""Per-domain results live and die with the guest: a ttl on every result, and a last OK result,
once, for a guest that is no longer defined, through the installed check on libvirt's test driver.

The results go to tests/sensu1.ClientSocket, which stands in for the Sensu Core 1.9 client socket
(no Sensu package here) and refuses what Sensu's validators refuse (tests/sensu1.py cites them),
and to a stand-in for the Sensu Go agent's events API. A guest is undefined between two runs by
writing a second node file at the same path (the state is kept per libvirt URI).
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import nodes, sensu1
from tests.conftest import run

NODES = Path(__file__).resolve().parents[1] / "data" / "nodes"
STATE = "check-kvm-domstate-per-domain-"


@pytest.fixture
def client_socket() -> Iterator[sensu1.ClientSocket]:
    published: list[dict[str, Any]] = []
    sock = sensu1.ClientSocket("hv1", published.append)
    try:
        yield sock
    finally:
        sock.close()


def domstate(node: Path, state: Path, *args: str) -> Any:
    return run("check-kvm-domstate", "-u", f"test://{node}", "--state-dir", str(state), "-t", "8", *args)


def test_the_validator_follows_sensu(client_socket: sensu1.ClientSocket) -> None:
    """The stand-in refuses what Sensu 1.9's client socket refuses."""
    ok: dict[str, Any] = {"name": "check-kvm-domstate", "source": "web-1.example_2", "status": 2, "output": "x\n",
                          "ttl": 180}
    assert sensu1.check_result_errors(ok) == []
    spaces = "check source cannot contain spaces or special characters"
    changes: list[tuple[dict[str, Any], str]] = [
        ({"source": "db 1"}, spaces), ({"source": "a:b"}, spaces), ({"source": "grüße"}, spaces),
        ({"source": 7}, "check source must be a string"),
        ({"name": "check kvm"}, "check name cannot contain spaces or special characters"),
        ({"ttl": 0}, "check ttl must be greater than 0"), ({"ttl": 1.5}, "check ttl must be an integer"),
        ({"handlers": "default"}, "check handlers must be an array"),
        ({"status": "2"}, "check status must be an integer")]
    for change, message in changes:
        assert sensu1.check_result_errors({**ok, **change}) == [message], change
    assert client_socket.answer(json.dumps({**ok, "source": "db 1"}).encode()) == b"invalid"
    assert client_socket.answer(json.dumps(ok).encode()) == b"ok"


def test_a_guest_undefined_between_two_runs_resolves_once(client_socket: sensu1.ClientSocket, tmp_path: Path) -> None:
    node, state = tmp_path / "node.xml", tmp_path / "state"
    node.write_bytes((NODES / "healthy.xml").read_bytes())  # web1, web2 running, spare shut off
    address = f"127.0.0.1:{client_socket.port}"
    first = domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address,
                     "--per-domain-occurrences", "2", "--per-domain-refresh", "1800")
    assert first.returncode == 0, first
    sent = {r["source"]: r for r in client_socket.accepted}
    assert set(sent) == {"web1", "web2", "spare"}
    assert all((r["ttl"], r["interval"], r["occurrences"], r["refresh"]) == (180, 60, 2, 1800) for r in sent.values())

    text = node.read_text()
    start = text.index("<domain type='test'>\n    <name>web2</name>")
    node.write_text(text[:start] + text[text.index("</domain>", start) + len("</domain>"):])  # web2 undefined
    client_socket.accepted.clear()
    second = domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address)
    assert second.returncode == 0 and "not" not in second.stdout.splitlines()[0], second
    by_source = {r["source"]: r for r in client_socket.accepted}
    assert set(by_source) == {"web1", "web2", "spare"}
    assert by_source["web2"]["status"] == 0 and "ttl" not in by_source["web2"]
    assert by_source["web2"]["kvm_domain"] == "web2"  # the real name, as in every other result
    assert by_source["web2"]["output"] == ("CheckKvmDomstate OK: web2 is no longer defined or no longer selected: "
                                           "no more results for this proxy client\n")
    assert by_source["web1"]["ttl"] == 180

    client_socket.accepted.clear()
    assert domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address).returncode == 0
    assert sorted(r["source"] for r in client_socket.accepted) == ["spare", "web1"]  # once only
    assert client_socket.refused == []


def test_odd_names_are_valid_distinct_proxy_clients(client_socket: sensu1.ClientSocket, tmp_path: Path) -> None:
    """Names with spaces, colons, quotes, tabs and non-ASCII letters: each guest a proxy client the
    client socket accepts, none sharing one, each with its real name."""
    result = domstate(NODES / "names.xml", tmp_path, "--per-domain", "sensu", "--per-domain-address",
                      f"127.0.0.1:{client_socket.port}")
    assert result.returncode in (0, 1, 2) and "not sent" not in result.stdout, result
    assert client_socket.refused == []
    sources = [r["source"] for r in client_socket.accepted]
    assert len(sources) == len(set(sources)) == 25
    assert {r["kvm_domain"] for r in client_socket.accepted} == set(nodes.HOSTILE)


def test_a_last_result_not_delivered_is_tried_again(client_socket: sensu1.ClientSocket, tmp_path: Path) -> None:
    node, state = tmp_path / "node.xml", tmp_path / "state"
    node.write_bytes((NODES / "healthy.xml").read_bytes())
    address = f"127.0.0.1:{client_socket.port}"
    assert domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address).returncode == 0
    node.write_text("<node><cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>1</cores>"
                    "<threads>1</threads></cpu><memory>8388608</memory></node>\n")  # every guest gone
    client_socket.close()
    down = domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address)
    assert down.returncode == 0, down
    assert "OK: no domains defined; 3 of 3 per-domain results not sent" in down.stdout  # the three last ones
    again = sensu1.ClientSocket("hv1", lambda _result: None, port=client_socket.port)
    try:
        assert domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address).returncode == 0
        assert sorted((r["source"], r["status"]) for r in again.accepted) == [("spare", 0), ("web1", 0), ("web2", 0)]
    finally:
        again.close()


def test_overlapping_runs_and_a_corrupt_state(client_socket: sensu1.ClientSocket, tmp_path: Path) -> None:
    node, state = tmp_path / "node.xml", tmp_path / "state"
    node.write_bytes((NODES / "healthy.xml").read_bytes())
    address = f"127.0.0.1:{client_socket.port}"
    assert domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address).returncode == 0
    (lock,) = state.glob(f"{STATE}*.lock")
    (saved,) = state.glob(f"{STATE}*.json")
    node.write_text(node.read_text().replace("<name>web2</name>", "<name>web3</name>"))  # web2 went, web3 came
    client_socket.accepted.clear()
    with lock.open() as held:  # another run holds the lock: this one sends its results, leaves the state
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address)
    assert busy.returncode == 0, busy
    assert "; gone domains not resolved this run: " in busy.stdout and "is locked by another run" in busy.stdout
    assert sorted(r["source"] for r in client_socket.accepted) == ["spare", "web1", "web3"]
    client_socket.accepted.clear()
    assert domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address).returncode == 0
    assert {r["source"]: r["status"] for r in client_socket.accepted if "ttl" not in r} == {"web2": 0}

    # The state file is input: entries of the wrong shape are dropped, garbage is rebuilt
    data = json.loads(saved.read_text())
    entries = data["samples"][f"sensu {address}"]
    entries.update({"gone1": {"name": "gone1", "t": 1}, "bad": {"name": 7}, "x\ny": {"name": "x"}, "": {"name": ""}})
    saved.write_text(json.dumps(data))
    client_socket.accepted.clear()
    assert domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address).returncode == 0
    assert {r["source"] for r in client_socket.accepted if "ttl" not in r} == {"gone1"}
    saved.write_bytes(b"\x00garbage{")
    client_socket.accepted.clear()
    result = domstate(node, state, "--per-domain", "sensu", "--per-domain-address", address)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert sorted(r["source"] for r in client_socket.accepted) == ["spare", "web1", "web3"]
    assert set(json.loads(saved.read_text())["samples"][f"sensu {address}"]) == {"spare", "web1", "web3"}


def test_sensu_go_proxy_entities_get_a_ttl_and_a_last_event(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    class Agent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    node, state = tmp_path / "node.xml", tmp_path / "state"
    node.write_bytes((NODES / "healthy.xml").read_bytes())
    url = f"http://127.0.0.1:{server.server_port}/events"
    try:
        assert domstate(node, state, "--per-domain", "sensu-go", "--per-domain-address", url).returncode == 0
        assert {e["entity"]["metadata"]["name"]: e["check"]["ttl"] for e in received} == {
            "web1": 180, "web2": 180, "spare": 180}
        assert all(e["entity"]["entity_class"] == "proxy" and e["check"]["interval"] == 60 for e in received)
        node.write_text(node.read_text().replace("<name>spare</name>", "<name>spare2</name>"))
        received.clear()
        assert domstate(node, state, "--per-domain", "sensu-go", "--per-domain-address", url).returncode == 0
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    (last,) = [e for e in received if "ttl" not in e["check"]]
    assert last["entity"] == {"entity_class": "proxy", "metadata": {"name": "spare"}}
    assert last["check"]["status"] == 0 and last["check"]["metadata"] == {
        "name": "check-kvm-domstate", "annotations": {"kvm_domain": "spare"}}
