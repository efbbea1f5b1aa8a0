"""metrics-kvm -f influxdb from real QEMU guests into a real InfluxDB 1.x (tests/services/influxdb.py).

Two guests: one with no OS (its disk is never written: write_seconds is 0) and the tiny Linux
guest writing its disk (write_seconds is a fraction). Before fixed field types a whole value was
written as an integer and any other as a float, so this host's first batch had `write_seconds=0i`
next to `write_seconds=0.0123`: InfluxDB refused it with "field type conflict" and stored nothing.
Two runs in a row go into one fresh database; every point is stored and read back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig
from tests.services import influxdb as influxdb_service
from tests.services.test_influxdb import assert_stored_whole, domain_rows, metrics, write_runs

PREFIX = "spk-influx-"
SYSTEM = "qemu:///system"
conn, images = own_fixtures(PREFIX)


@pytest.fixture(scope="module")
def influxdb() -> Iterator[influxdb_service.InfluxDB]:
    """This tier's own influxd (the services tier's session one may be running on 18000-18002)."""
    server = influxdb_service.start(http_port=18010, udp_port=18011, rpc_port=18012)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def guests(conn: libvirt.virConnect, images: Path, guest: tuple[Path, Path]) -> dict[str, libvirt.virDomain]:
    kernel, initrd = guest
    idle = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}idle", rig.make_qcow2(images / "idle.qcow2")))
    writer = conn.defineXML(rig.linux_guest_xml(f"{PREFIX}writer", rig.make_qcow2(images / "writer.qcow2", "1G"),
                                                kernel, initrd, "write", images / "writer.log"))
    for dom in (idle, writer):
        dom.create()
    rig.wait_serial(images / "writer.log", timeout=120)
    return {"idle": idle, "writer": writer}


def test_two_runs_from_a_real_host_are_stored_whole(influxdb: influxdb_service.InfluxDB,
                                                    guests: dict[str, libvirt.virDomain]) -> None:
    db = "qemu"
    influxdb.create_database(db)
    runs = [metrics(SYSTEM, "--match", f"^{PREFIX}")]
    time.sleep(1)
    runs.append(metrics(SYSTEM, "--match", f"^{PREFIX}"))
    idle = [line for line in runs[0].splitlines() if line.startswith(f"kvm_block,device=vda,domain={PREFIX}idle,")]
    assert len(idle) == 1 and "write_seconds=0" in idle[0], idle  # the zero that used to be written as 0i
    write_runs(influxdb, db, runs)
    assert_stored_whole(influxdb, db, runs)
    for name in (f"{PREFIX}idle", f"{PREFIX}writer"):
        assert len(domain_rows(influxdb, db, name)) == 2, name
