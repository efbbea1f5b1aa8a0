"""Occurrences, refresh, ttl and a guest that goes, through the real RabbitMQ and Redis.

sensu-client and sensu-server cannot be installed here; tests/sensu1.py stands in for both,
following Sensu Core 1.9's source (its docstring cites each function). Everything else is real:
the installed check-kvm-domstate runs with the command of the shipped conf.d (only the libvirt URI,
the socket's port and --state-dir changed) against a libvirt test-driver node file; its per-domain
results go to the stand-in client socket, which validates them as Sensu's does and publishes them to
the private RabbitMQ with the shipped settings; the check's own result is published as the client
publishes a subscription check's; the stand-in server consumes both from RabbitMQ, keeps history and
events in the private Redis as sensu-server does, and runs the shipped handlers' filters.

The check runs 33 times with a crashed guest, then once after the guest was undefined (a second
node file at the same path). With the shipped "occurrences": 2, "refresh": 1800 and interval 60,
Sensu's occurrences filter passes occurrence 2, then every 30th (32, 62, ...: 30 minutes after
the first alert), and the resolution; not 1, 3 to 31 or 33.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
from sensu_plugin.utils import deep_merge

from tests import sensu1
from tests.conftest import run
from tests.services.rabbitmq import CONF_D, RabbitMQNode, shipped_settings
from tests.services.redis import RedisServer
from tests.services.test_transport import connection_parameters

RABBITMQ = shipped_settings("rabbitmq.json")
REDIS = shipped_settings("redis.json")
CLIENT = shipped_settings("client.json")
RECORDED = Path(__file__).resolve().parents[1] / "data" / "sensu-core-1.9"
CHECK = "check-kvm-domstate"
RUNS = 33

NODE = """<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>
  <memory>8388608</memory>
  <domain type='test'><name>web1</name><memory>131072</memory><os><type>hvm</type></os>
    <test:runstate>1</test:runstate></domain>
{oops}</node>
"""
CRASHED = """  <domain type='test'><name>oops</name><memory>131072</memory><os><type>hvm</type></os>
    <test:runstate>6</test:runstate></domain>
"""


def server_settings() -> dict[str, Any]:
    """What sensu-server reads from the shipped conf.d (the top-level files)."""
    merged: dict[str, Any] = {}
    for path in sorted(CONF_D.glob("*.json")):
        merged = deep_merge(merged, json.loads(path.read_text()))
    return merged


@pytest.fixture
def sensu(rabbitmq: RabbitMQNode, redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    store = redis.Redis(host=REDIS["host"], port=REDIS["port"], db=REDIS["db"], socket_timeout=5)
    store.flushdb()  # the session's private server: only this test's keys
    publishing = pika.BlockingConnection(connection_parameters(RABBITMQ))  # the client's connection
    consuming = pika.BlockingConnection(connection_parameters(RABBITMQ))  # the server's
    socket = None
    try:
        consumer = consuming.channel()
        consumer.basic_qos(prefetch_count=RABBITMQ["prefetch"])
        queue = sensu1.results_queue(consumer)
        publish = sensu1.publisher(publishing.channel())
        socket = sensu1.ClientSocket(CLIENT["name"], publish)
        yield {"server": sensu1.Server(server_settings(), store), "socket": socket, "publish": publish,
               "channel": consumer, "queue": queue}
    finally:
        if socket is not None:
            socket.close()
        for connection in (publishing, consuming):
            if connection.is_open:
                connection.close()
        store.flushdb()
        store.close()


def run_the_shipped_check(sensu: dict[str, Any], uri: str, state_dir: Path) -> int:
    """One run of conf.d's check-kvm-domstate as the client runs a subscription check: its command,
    and its result published with the definition merged in. The number of results it sent."""
    definition = server_settings()["checks"][CHECK]
    argv = shlex.split(definition["command"])
    argv[argv.index("-u") + 1] = uri
    argv += ["--per-domain-address", f"127.0.0.1:{sensu['socket'].port}", "--state-dir", str(state_dir)]
    before = len(sensu["socket"].accepted)
    started = time.time()
    result = run(*argv)
    assert result.returncode in (0, 2), result
    assert "not sent" not in result.stdout and "not resolved" not in result.stdout, result.stdout
    # sensu-client: the request (the server's definition without subscribers and interval, and
    # issued) merged with its local definition (the same file), then the command's output and status
    check = {**definition, "name": CHECK, "issued": int(started), "executed": int(started),
             "duration": round(time.time() - started, 3), "output": result.stdout, "status": result.returncode}
    sensu["publish"]({"client": CLIENT["name"], "check": check})
    return 1 + len(sensu["socket"].accepted) - before


def occurrences_handled(events: list[dict[str, Any]], client: str) -> list[tuple[str, int]]:
    return [(e["action"], e["occurrences"]) for e in events if e["client"]["name"] == client]


def test_occurrences_refresh_ttl_and_a_guest_that_goes(sensu: dict[str, Any], tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    uri = f"test://{node}"
    node.write_text(NODE.format(oops=CRASHED))
    server: sensu1.Server = sensu["server"]
    events: list[dict[str, Any] | None] = []
    for _ in range(RUNS):
        sent = run_the_shipped_check(sensu, uri, tmp_path / "state")
        assert sent == 3  # the check's own result, web1's and oops'
        events += server.consume(sensu["channel"], sensu["queue"], sent)
    assert sensu["socket"].refused == []

    # Both the host's check and the guest's proxy client reach the default handler at occurrences
    # 2 and 32, not at 1 (one failure pages nobody), 3..31 or 33 (not every minute)
    default = server.handled["default"]
    expected = [("create", 2), ("create", 32)]
    assert occurrences_handled(default, CLIENT["name"]) == expected
    assert occurrences_handled(default, "oops") == expected
    assert occurrences_handled(default, "web1") == []  # OK throughout: no event at all
    # kvm-remediate keeps its own filter: the first three occurrences of a CRITICAL incident
    assert occurrences_handled(server.handled["kvm-remediate"], "oops") == [("create", 1), ("create", 2), ("create", 3)]

    # The guest's result lives with a ttl: were its results to stop, Sensu's TTL monitor would
    # raise "Last check execution was ... ago" for it after three intervals
    stored = json.loads(server.redis.get(f"result:oops:{CHECK}") or "{}")
    assert (stored["ttl"], stored["interval"], stored["occurrences"], stored["refresh"]) == (180, 60, 2, 1800)
    assert server.stale(time.time() + 181) == [f"oops:{CHECK}", f"web1:{CHECK}"]

    # The guest is undefined: the next run resolves its event, and the TTL monitor lets it go
    node.write_text(NODE.format(oops=""))
    sent = run_the_shipped_check(sensu, uri, tmp_path / "state")
    assert sent == 3  # the check's own result, web1's, and the last one of oops
    last = [e for e in server.consume(sensu["channel"], sensu["queue"], sent) if e and e["client"]["name"] == "oops"]
    assert [(e["action"], e["check"]["status"]) for e in last] == [("resolve", 0)]
    assert last[0]["check"]["output"].startswith("CheckKvmDomstate OK: oops is no longer defined")
    assert occurrences_handled(server.handled["default"], "oops")[-1] == ("resolve", RUNS)
    assert occurrences_handled(server.handled["default"], CLIENT["name"])[-1] == ("resolve", RUNS)
    assert server.redis.hget("events:oops", CHECK) is None  # /events no longer lists it
    assert server.stale(time.time() + 181) == [f"web1:{CHECK}"]
    assert "oops:" not in "".join(server.stale(time.time() + 10**6))
    # ... and once only: a further run sends nothing more for it
    assert run_the_shipped_check(sensu, uri, tmp_path / "state") == 2
    list(server.consume(sensu["channel"], sensu["queue"], 2))

    # The message shapes are those of the recorded Sensu Core 1.9 events
    create = json.loads((RECORDED / "pipe-handler-event-create.json").read_text())
    resolve = json.loads((RECORDED / "pipe-handler-event-resolve-proxy-client.json").read_text())
    host_event = next(e for e in server.handled["default"] if e["client"]["name"] == CLIENT["name"])
    assert set(host_event) == set(create)
    assert set(host_event["client"]) <= set(create["client"]) | {"keepalives", "type"}
    assert set(create["check"]) - {"subscribers"} <= set(host_event["check"])  # the conf.d one has subscribers
    assert last[0].keys() == resolve.keys()
    assert last[0]["client"].keys() == resolve["client"].keys()
    assert set(resolve["check"]) <= set(last[0]["check"])
    assert all(isinstance(h, str) for h in last[0]["check"]["history"])  # strings, as in events
    assert last[0]["check"]["origin"] == CLIENT["name"] and last[0]["client"]["type"] == "proxy"
    assert [e for e in events if e is None] == []
