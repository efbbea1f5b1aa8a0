"""Fixtures for the services tier: a private RabbitMQ node and a private Redis server, from Debian's
packages (installed by tests/services/setup.sh), on the addresses of the shipped conf.d; a private
carbon-cache and a private Prometheus server on this suite's loopback ports. Each is started once
per session and always stopped and cleaned up afterwards, even when a test fails.

A service that cannot be started is an error of the tests that need it, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import carbon as carbon_service
from tests.services import prometheus as prometheus_service
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
def carbon() -> Iterator[carbon_service.Carbon]:
    """A carbon-cache with its plaintext line receiver on 127.0.0.1 (tests/services/carbon.py)."""
    server = carbon_service.start()
    try:
        yield server
    finally:
        server.stop()


# The expositions the Prometheus tests serve, one scrape target each (tests/services/test_prometheus.py).
PROMETHEUS_SLOTS = ("names", "qemu", "many", "failure")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[prometheus_service.Prometheus]:
    """A Prometheus server scraping one exposition endpoint per slot of PROMETHEUS_SLOTS every second
    (tests/services/prometheus.py)."""
    server = prometheus_service.start(PROMETHEUS_SLOTS)
    try:
        yield server
    finally:
        server.stop()
