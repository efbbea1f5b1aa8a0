"""Fixtures for the services tier: a private RabbitMQ node, a private Redis server and a private
InfluxDB 1.x, from Debian's packages (installed by tests/services/setup.sh), on the addresses of the shipped conf.d, started
once per session and always stopped and cleaned up afterwards, even when a test fails.

A service that cannot be started is an error of the tests that need it, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import influxdb as influxdb_service
from tests.services import rabbitmq as rabbitmq_service
from tests.services import redis as redis_service


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[rabbitmq_service.RabbitMQNode]:
    """A RabbitMQ node with the vhost, user and permissions of the shipped rabbitmq.json."""
    node = rabbitmq_service.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[redis_service.RedisServer]:
    """A redis-server on the host and port of the shipped redis.json."""
    server = redis_service.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxdb() -> Iterator[influxdb_service.InfluxDB]:
    """An influxd with a private config: HTTP on 127.0.0.1:18000, a UDP listener on 18001 (database udp)."""
    server = influxdb_service.start()
    try:
        yield server
    finally:
        server.stop()
