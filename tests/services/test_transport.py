"""The shipped Sensu Core 1.x transport configuration against real services.

A private RabbitMQ node (vhost, user and permissions made as the classic setup does) and a private
Redis server run on the addresses of the shipped conf.d; the clients connect with exactly the
settings of conf.d/rabbitmq.json and conf.d/redis.json. Messages are shaped and routed as Sensu
1.x's sensu-transport does: the client publishes check results to the "results" direct exchange
and keepalives to the "keepalives" direct exchange (declared with no options: not durable, not
auto-deleted), with the default (empty) routing key, and the server consumes them from a queue
bound to that exchange with the empty routing key. The guest's copy is only read, never used.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
import redis

from tests.services.rabbitmq import CONF_D, RabbitMQNode, shipped_settings
from tests.services.redis import RedisServer

RABBITMQ = shipped_settings("rabbitmq.json")
GUEST_RABBITMQ = shipped_settings("guest/rabbitmq.json", "rabbitmq")
REDIS = shipped_settings("redis.json")
CLIENT = shipped_settings("client.json")
DOCUMENTATION_NETS = [ipaddress.ip_network(net) for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def connection_parameters(settings: dict[str, Any], password: str | None = None) -> pika.ConnectionParameters:
    """pika's parameters from a Sensu rabbitmq.json section, nothing added but timeouts."""
    return pika.ConnectionParameters(
        host=settings["host"],
        port=settings["port"],
        virtual_host=settings["vhost"],
        credentials=pika.PlainCredentials(settings["user"], settings["password"] if password is None else password),
        heartbeat=settings["heartbeat"],
        connection_attempts=1,
        socket_timeout=5,
        blocked_connection_timeout=10,
    )


@pytest.fixture
def channel(rabbitmq: RabbitMQNode) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(connection_parameters(RABBITMQ))
    try:
        chan = connection.channel()
        chan.basic_qos(prefetch_count=RABBITMQ["prefetch"])  # sensu-transport: @channel.prefetch(prefetch)
        yield chan
    finally:
        if connection.is_open:
            connection.close()


def round_trip(chan: pika.adapters.blocking_connection.BlockingChannel, exchange: str, payload: dict[str, Any]) -> Any:
    """Declare the exchange as Sensu does, bind a temporary queue, publish payload, consume it."""
    chan.exchange_declare(exchange, exchange_type="direct", durable=False, auto_delete=False)
    queue = chan.queue_declare("", exclusive=True, auto_delete=True).method.queue
    chan.queue_bind(queue, exchange, routing_key="")
    chan.basic_publish(exchange, "", json.dumps(payload).encode())
    body = None
    for method, _properties, received in chan.consume(queue, inactivity_timeout=10):
        assert method is not None, f"nothing arrived on {exchange!r} in 10 s"
        chan.basic_ack(method.delivery_tag)
        body = received
        break
    chan.cancel()
    assert body is not None
    return json.loads(body)


def test_transport_is_rabbitmq() -> None:
    for name in ("transport.json", "guest/transport.json"):
        assert shipped_settings(name, "transport")["name"] == "rabbitmq", name


def test_check_result_round_trip(rabbitmq: RabbitMQNode, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    assert ipaddress.ip_address(RABBITMQ["host"]).is_loopback
    now = int(time.time())
    result = {
        "client": CLIENT["name"],
        "check": {
            "name": "check-kvm-domstate",
            "command": "check-kvm-domstate",
            "status": 0,
            "output": "CheckKvmDomstate OK: 3 domains, 3 running",
            "issued": now,
            "executed": now,
            "duration": 0.031,
        },
    }
    assert round_trip(channel, "results", result) == result

    # What the broker saw: the exchange as sensu-transport declares it, and a connection of the
    # configured user on the configured vhost with the configured heartbeat.
    exchanges = rabbitmq.ctl("list_exchanges", "-q", "--no-table-headers", "-p", RABBITMQ["vhost"],
                             "name", "type", "durable", "auto_delete").stdout
    assert ["results", "direct", "false", "false"] in [line.split() for line in exchanges.splitlines()]
    connections = rabbitmq.ctl("list_connections", "-q", "--no-table-headers", "user", "vhost", "timeout", "port").stdout
    assert [RABBITMQ["user"], RABBITMQ["vhost"], str(RABBITMQ["heartbeat"]), str(RABBITMQ["port"])] in [
        line.split() for line in connections.splitlines()]


def test_keepalive_round_trip(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    keepalive = {**CLIENT, "version": "1.9.0", "timestamp": int(time.time())}  # sensu-client's keepalive payload
    assert round_trip(channel, "keepalives", keepalive) == keepalive


def test_wrong_password_is_refused(rabbitmq: RabbitMQNode) -> None:
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika.BlockingConnection(connection_parameters(RABBITMQ, password=RABBITMQ["password"] + "-wrong"))
    message = str(refused.value)
    assert "ACCESS_REFUSED" in message
    assert "403" in message


def test_guest_config_matches_the_hypervisor() -> None:
    """The guest's copy differs only in the host, a documentation address to be replaced by the
    hypervisor's (never connected to here)."""
    for key in ("port", "vhost", "user", "password", "heartbeat", "prefetch"):
        assert GUEST_RABBITMQ[key] == RABBITMQ[key], key
    host = ipaddress.ip_address(GUEST_RABBITMQ["host"])
    assert str(host) != "127.0.0.1"
    assert any(host in net for net in DOCUMENTATION_NETS), f"{host} is not an RFC 5737 documentation address"


def test_redis(redis_server: RedisServer) -> None:
    assert ipaddress.ip_address(REDIS["host"]).is_loopback
    client = redis.Redis(host=REDIS["host"], port=REDIS["port"], db=REDIS["db"], socket_timeout=5, socket_connect_timeout=5)
    try:
        assert client.ping() is True
        assert int(client.client_info()["db"]) == REDIS["db"]  # the server's view of this connection
        data = {**CLIENT, "version": "1.9.0", "timestamp": int(time.time())}  # what sensu-server keeps in client:NAME
        key = f"client:{CLIENT['name']}"
        assert client.set(key, json.dumps(data)) is True
        stored = client.get(key)
        assert stored is not None
        assert json.loads(stored) == data
        assert client.delete(key) == 1
    finally:
        client.close()


def _passwords(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.lower() in {"password", "pass", "passwd", "secret", "token"}:
                yield f"{where}.{key}", value
            else:
                yield from _passwords(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _passwords(value, f"{where}[{index}]")


def test_shipped_passwords_are_placeholders() -> None:
    files = sorted(path for path in CONF_D.rglob("*") if path.is_file() and ".json" in path.name)
    found = dict(pair for path in files for pair in _passwords(json.loads(path.read_text()), str(path.relative_to(CONF_D))))
    assert "rabbitmq.json.rabbitmq.password" in found
    assert "guest/rabbitmq.json.rabbitmq.password" in found
    for where, value in found.items():
        assert isinstance(value, str), where
        assert "CHANGE-ME" in value, f"{where} ships a real-looking secret"
