"""Fixtures for the services tier: a private RabbitMQ node, a private Redis server and a private
InfluxDB 1.x, from Debian's packages (installed by tests/services/setup.sh), on the addresses of the
shipped conf.d; a private carbon-cache and a private Prometheus server on their own loopback ports.
Each is started once per session and always stopped and cleaned up afterwards, even when a test
fails.

A service that cannot be started is an error of the tests that need it, never a skip.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.services import carbon as carbon_service
from tests.services import influxdb as influxdb_service
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
def influxdb() -> Iterator[influxdb_service.InfluxDB]:
    """An influxd with a private config: HTTP on 127.0.0.1:18000, a UDP listener on 18001 (database udp)."""
    server = influxdb_service.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(influxdb: influxdb_service.InfluxDB) -> Iterator[str]:
    """A fresh InfluxDB database for one test, dropped afterwards."""
    name = f"spk_{time.monotonic_ns()}"
    influxdb.create_database(name)
    try:
        yield name
    finally:
        influxdb.drop_database(name)


@pytest.fixture(scope="session")
def carbon() -> Iterator[carbon_service.Carbon]:
    """A carbon-cache with its plaintext line receiver on 127.0.0.1 (tests/services/carbon.py)."""
    server = carbon_service.start()
    try:
        yield server
    finally:
        server.stop()


# The expositions the Prometheus tests serve, one scrape target each (tests/services/test_prometheus.py).
PROMETHEUS_SLOTS = ("names", "qemu", "many", "failure", "pools")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[prometheus_service.Prometheus]:
    """A Prometheus server scraping one exposition endpoint per slot of PROMETHEUS_SLOTS every second
    (tests/services/prometheus.py)."""
    server = prometheus_service.start(PROMETHEUS_SLOTS)
    try:
        yield server
    finally:
        server.stop()


# Real QEMU guests (no OS, tests/rig) whose names Graphite merged before issue 13: "web 1" and
# "web.1" both became web_1, and every three-letter CJK name ___. One is left shut off, so that a
# merge would also overwrite one domain's state with another's. Tests that use them make domains on
# qemu:///system: run them under `flock -o /tmp/spk-hv.lock` by hand (CONTRIBUTING.md).
QEMU_PREFIX = "spk-gp-"
QEMU_NAMES = {f"{QEMU_PREFIX}web 1": True, f"{QEMU_PREFIX}web.1": False, f"{QEMU_PREFIX}日本語": True,
              f"{QEMU_PREFIX}中文字": True}


@pytest.fixture(scope="session")
def qemu_named() -> Iterator[dict[str, bool]]:
    """The domains of QEMU_NAMES on qemu:///system, each running or shut off as it says; destroyed
    and undefined afterwards (and before, in case an earlier run was killed)."""
    from tests.rig import rig  # noqa: PLC0415 (only these tests need libvirt and the rig)

    with rig.own_domains(QEMU_PREFIX) as conn, rig.images_of(conn, QEMU_PREFIX) as images:
        for n, (name, running) in enumerate(QEMU_NAMES.items()):
            dom = conn.defineXML(rig.noos_domain_xml(name, rig.make_qcow2(images / f"gp{n}.qcow2")))
            if running:
                dom.create()
        yield dict(QEMU_NAMES)


JOB_PREFIX = "spk-gj-"
JOB_DOMAIN = f"{JOB_PREFIX}job \"1\""  # a name each format must escape


@pytest.fixture(scope="session")
def qemu_blockjob() -> Iterator[str]:
    """A running no-OS QEMU guest (JOB_DOMAIN) with a real block job: an active commit of an empty
    external overlay, ready at once and never pivoted, for metrics-kvm --block-jobs; aborted,
    destroyed and undefined afterwards, its images removed."""
    import libvirt  # noqa: PLC0415 (only this fixture and the rig need libvirt)

    from tests.rig import rig  # noqa: PLC0415

    with rig.own_domains(JOB_PREFIX) as conn, rig.images_of(conn, JOB_PREFIX) as images:
        dom = conn.defineXML(rig.noos_domain_xml(JOB_DOMAIN, rig.make_qcow2(images / "gj.qcow2")))
        dom.create()
        snapshot = (f"<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='{images}/gj-top.qcow2'/>"
                    "</disk></disks></domainsnapshot>")
        dom.snapshotCreateXML(snapshot, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                              | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        dom.blockCommit("vda", None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                        | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)

        def ready() -> bool:
            info = dom.blockJobInfo("vda", 0)
            return bool(info) and info["cur"] == info["end"]

        rig.wait_for(ready, timeout=10, what="the active commit to be ready")
        try:
            yield JOB_DOMAIN
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.blockJobAbort("vda", 0)
