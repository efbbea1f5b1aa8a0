"""A real Nagios-compatible scheduler (nagios4) runs the installed checks against a real TCG domain.

The classic demonstration: Nagios checks the domain every 2 s as user nagios; destroying the
domain turns the domstate service CRITICAL, starting it again turns it OK. Everything is read back
from what Nagios itself recorded (status.dat), not from running the checks here.

This module runs beside the other hypervisor suites: it uses neither their ``conn`` nor their
``images`` fixture (both clean up every spk-test-* domain) and touches only its own spk-nagios-*
domain.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.rig import rig
from tests.services.nagios import Nagios, ServiceStatus, owned_dir, running

PREFIX = "spk-nagios-"
NAME = "spk-nagios-1"
SYSTEM = "qemu:///system"
CHECK_INTERVAL = 2  # seconds (interval_length=1)


@pytest.fixture(scope="module")
def domain() -> Iterator[libvirt.virDomain]:
    """Our own no-OS TCG guest, running; destroyed and undefined at the end whatever happens."""
    rig.ensure_host()
    conn = rig.connect()
    try:
        rig.cleanup(conn, prefix=PREFIX)  # leftovers of a killed run
        with rig.image_dir() as images:
            try:
                disk = rig.make_qcow2(images / f"{NAME}.qcow2")
                dom = conn.defineXML(rig.noos_domain_xml(NAME, disk))
                dom.create()
                yield dom
            finally:
                rig.cleanup(conn, prefix=PREFIX)  # before the image goes
    finally:
        conn.close()


@pytest.fixture(scope="module")
def nagios(domain: libvirt.virDomain) -> Iterator[Nagios]:
    with tempfile.TemporaryDirectory(prefix="spk-nagios-state-") as tmp:
        Path(tmp).chmod(0o755)
        state_dir = owned_dir(tmp, "vcpu")
        services = {
            "domstate": ["check-kvm-domstate", "-u", SYSTEM, "-d", NAME],
            "vcpu": ["check-kvm-vcpu", "-u", SYSTEM, "-d", NAME, "--interval", "1", "--state-dir", str(state_dir)],
            "memory": ["check-kvm-memory", "-u", SYSTEM, "-d", NAME],
        }
        with running(services, check_interval=CHECK_INTERVAL, retry_interval=1, max_check_attempts=1,
                     extra_paths=[state_dir]) as instance:
            yield instance


def wait_service(nagios: Nagios, name: str, wanted: Callable[[ServiceStatus], bool], timeout: float,
                 what: str) -> ServiceStatus:
    """Wait until Nagios has recorded a result of service ``name`` that satisfies ``wanted``."""

    def seen() -> ServiceStatus | None:
        status = nagios.service(name)
        return status if status is not None and wanted(status) else None

    try:
        found = rig.wait_for(seen, timeout, interval=0.25, what=f"{name}: {what}")
        assert found is not None  # wait_for returns only a truthy answer
        return found
    except TimeoutError as err:
        log = "\n".join(nagios.log().splitlines()[-20:])
        raise AssertionError(f"{err}\nlast recorded: {nagios.service(name)!r}\nnagios.log (tail):\n{log}") from None


def test_nagios_records_results_and_sees_destroy_and_start(domain: libvirt.virDomain, nagios: Nagios) -> None:
    # The first check of each service (the first libvirt connection after libvirtd starts may
    # take ~8 s; vcpu samples twice, 1 s apart).
    checked = {name: wait_service(nagios, name, lambda s: s.last_check > 0, 60, "first check")
               for name in ("domstate", "vcpu", "memory")}

    domstate = checked["domstate"]
    assert domstate.current_state == 0, domstate
    assert domstate.plugin_output.startswith(f"CheckKvmDomstate OK: {NAME} running"), domstate
    assert "running=" in domstate.performance_data, domstate

    # vcpu and memory: OK, with their perfdata. On a host crowded by the other suites' busy
    # guests a single vcpu result may warn on steal; a later OK one is what counts.
    vcpu = wait_service(nagios, "vcpu", lambda s: s.current_state == 0, 30, "OK")
    assert vcpu.plugin_output.startswith(f"CheckKvmVcpu OK: {NAME} vCPU usage "), vcpu
    assert f"{NAME}_vcpu_usage=" in vcpu.performance_data, vcpu
    assert f"{NAME}_vcpu_steal=" in vcpu.performance_data, vcpu

    memory = wait_service(nagios, "memory", lambda s: s.current_state == 0, 30, "OK")
    assert memory.plugin_output.startswith(f"CheckKvmMemory OK: {NAME} memory "), memory
    assert f"{NAME}_memory_used=" in memory.performance_data, memory

    # Destroy (~1.7 s under TCG): the next domstate check is CRITICAL, HARD at once.
    domain.destroy()
    critical = wait_service(nagios, "domstate",
                            lambda s: s.current_state == 2 and "shut off (destroyed)" in s.plugin_output,
                            30, "CRITICAL after destroy")
    assert critical.plugin_output.startswith(f"CheckKvmDomstate CRITICAL: {NAME} shut off (destroyed)"), critical
    assert "shutoff=1" in critical.performance_data, critical

    # Start it again: OK on a check that began after the start.
    started = int(time.time())
    domain.create()
    ok = wait_service(nagios, "domstate",
                      lambda s: s.current_state == 0 and s.last_check >= started, 30, "OK after start")
    assert ok.plugin_output.startswith(f"CheckKvmDomstate OK: {NAME} running"), ok
    assert "running=1" in ok.performance_data, ok
    assert nagios.alive()
