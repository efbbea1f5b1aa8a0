"""handler-kvm-remediate on real QEMU guests, fed the events Sensu Core 1.9 recorded and Sensu Go events."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import run
from tests.hypervisor.conftest import define_noos, paused_by_enospc
from tests.rig import rig
from tests.unit.test_events import fixture, sensu_go_event

SYSTEM = "qemu:///system"
NAME = "spk-test-remedy"


@pytest.fixture
def remedy(conn: libvirt.virConnect, images: Path) -> Iterator[libvirt.virDomain]:
    dom = define_noos(conn, images, NAME)
    dom.create()
    yield dom
    rig.cleanup(conn, prefix=NAME)


def crash(dom: libvirt.virDomain) -> None:
    """Kill the guest's QEMU: libvirt records the domain as shut off (crashed)."""
    pid = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    rig.wait_for(lambda: dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED],
                 timeout=30, what=f"{dom.name()} to be shut off (crashed)")


def core_event(name: str, domain: str, check: str = "check-kvm-domstate") -> str:
    """A recorded Sensu Core 1.9 event, adapted to be about the test domain as a proxy client."""
    event = json.loads(fixture(name))
    event["client"].update({"name": domain, "type": "proxy"})
    event["check"].update({"name": check, "source": domain})
    return json.dumps(event)


def remediate(event: str, state_dir: Path, *args: str):
    return run("handler-kvm-remediate", "-u", SYSTEM, "--state-dir", str(state_dir), *args, stdin=event)


def test_crashed_guest_is_started_from_a_core_event(remedy, tmp_path):
    crash(remedy)
    result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path)
    assert result.returncode == 0, result
    assert f"{NAME} is shut off (crashed): trying to start it (attempt 1 of 3)" in result.stderr
    assert f"{NAME} is now running (booted)" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_crashed_guest_is_started_from_a_sensu_go_event(remedy, tmp_path):
    crash(remedy)
    result = remediate(sensu_go_event(entity=NAME), tmp_path)
    assert result.returncode == 0, result
    assert "sensu-go event" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_resolve_event_does_nothing(remedy, tmp_path):
    crash(remedy)
    result = remediate(core_event("pipe-handler-event-resolve-proxy-client.json", NAME), tmp_path)
    assert result.returncode == 0
    assert "resolved, nothing done" in result.stderr
    assert remedy.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]


def test_operator_destroy_and_dry_run_change_nothing(remedy, tmp_path):
    remedy.destroy()
    result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path)
    assert (result.returncode, remedy.state()) == (0, [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED])
    assert "shut off (destroyed): stopped on purpose: nothing done" in result.stderr
    remedy.create()
    crash(remedy)
    result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path, "--dry-run")
    assert result.returncode == 0
    assert "would start it (dry run, attempt 1 of 3)" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_stops_after_max_attempts(remedy, tmp_path):
    event = core_event("pipe-handler-event-create.json", NAME)
    for attempt in (1, 2):
        crash(remedy)
        result = remediate(event, tmp_path, "--max-attempts", "2")
        assert result.returncode == 0, result
        assert f"(attempt {attempt} of 2)" in result.stderr
    crash(remedy)
    result = remediate(event, tmp_path, "--max-attempts", "2")
    assert result.returncode == 1
    assert "NOT trying to start it: 2 attempts in the last 3600 s already" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_io_error_pause_is_left_alone(linux_guests, tmp_path):
    dom = linux_guests["enospc"]
    paused_by_enospc(dom)
    result = remediate(core_event("pipe-handler-event-create.json", dom.name()), tmp_path)
    assert result.returncode == 0
    assert "paused (I/O error): resuming would pause it again until the disk has space: nothing done" in result.stderr
    assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]


def test_unreadable_event_does_nothing(remedy, tmp_path):
    crash(remedy)
    for bad in ("", "{oops", json.dumps({"client": {"name": NAME}, "check": {"name": "x"}})):
        result = remediate(bad, tmp_path)
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1
        assert "cannot read the event, nothing done" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
