"""Fixtures for the services tier: a private RabbitMQ node and a private Redis server, from Debian's
packages (installed by tests/services/setup.sh), on the addresses of the shipped conf.d, started
once per session and always stopped and cleaned up afterwards, even when a test fails.

A service that cannot be started is an error of the tests that need it, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
