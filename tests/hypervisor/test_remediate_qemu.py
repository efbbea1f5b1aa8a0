"""handler-kvm-remediate on real QEMU guests, fed the events Sensu Core 1.9 recorded and Sensu Go events.

The handler is opt-in: these runs select the test domain with --match (or its metadata), and the
domains outside the selection are checked to stay as they were."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from sensu_kvm.remedy import ELEMENT, KEY, NAMESPACE, QEMU_LOG_DIR
from tests.conftest import run
from tests.hypervisor.conftest import define_noos, paused_by_enospc
from tests.rig import rig
from tests.unit.test_events import fixture, sensu_go_event

SYSTEM = "qemu:///system"
NAME = "spk-test-remedy"
OTHER = "spk-test-remedy-other"  # another team's guest on the same host: never selected
SELECT = ("--match", f"^{NAME}$")
SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF


def fresh(conn: libvirt.virConnect, images: Path, name: str) -> libvirt.virDomain:
    """A no-OS domain, defined and not started, without the QEMU log of an earlier run: libvirt
    appends to /var/log/libvirt/qemu/NAME.log across definitions, and the handler reads it."""
    rig.cleanup(conn, prefix=name)
    Path(QEMU_LOG_DIR, f"{name}.log").unlink(missing_ok=True)
    return define_noos(conn, images, name)


@pytest.fixture
def remedy(conn: libvirt.virConnect, images: Path) -> Iterator[libvirt.virDomain]:
    dom = fresh(conn, images, NAME)
    dom.create()
    yield dom
    rig.cleanup(conn, prefix=NAME)


@pytest.fixture
def other(conn: libvirt.virConnect, images: Path) -> Iterator[libvirt.virDomain]:
    dom = fresh(conn, images, OTHER)
    dom.create()
    yield dom
    rig.cleanup(conn, prefix=OTHER)


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


def remediate(event: str, state_dir: Path, *args: str, select: tuple[str, ...] = SELECT):
    return run("handler-kvm-remediate", "-u", SYSTEM, "--state-dir", str(state_dir), *select, *args, stdin=event)


def domstate(name: str) -> tuple[int, str]:
    result = run("check-kvm-domstate", "-u", SYSTEM, "--match", f"^{name}$")
    return result.returncode, result.stdout.splitlines()[0]


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
    assert "shut off (destroyed): stopped on purpose: nothing done" in result.stderr  # not marked autostart
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
    result = remediate(core_event("pipe-handler-event-create.json", dom.name()), tmp_path,
                       select=("--match", f"^{dom.name()}$"))
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


def test_autostart_domain_down_after_a_host_reboot_is_started(conn, images, tmp_path):
    """After a host reboot libvirtd loads every inactive domain from its configuration as shut
    off (unknown); where autostart failed, the QEMU log holds no stop since the boot. A domain
    defined with autostart and never started is in exactly that state (a reboot cannot be made
    here, and libvirtd cannot be restarted under the other suites): the check says CRITICAL and
    the handler starts it."""
    dom = fresh(conn, images, NAME)
    try:
        dom.setAutostart(1)
        assert dom.state() == [SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN]
        code, line = domstate(NAME)
        assert code == 2 and f"{NAME} shut off (unknown), autostart is set" in line, line
        unselected = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path, select=())
        assert unselected.returncode == 0 and "not selected: remediation is opt-in" in unselected.stderr
        assert dom.state()[0] == SHUTOFF
        result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path)
        assert result.returncode == 0, result
        assert (f"{NAME} is shut off (unknown), autostart is set: no stop since the host booted: trying to start it "
                "(attempt 1 of 3)") in result.stderr
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert domstate(NAME)[0] == 0
    finally:
        rig.cleanup(conn, prefix=NAME)


def test_operator_stop_inside_the_grace_period_is_left_alone(remedy, conn, tmp_path):
    """An autostart domain an operator destroyed: CRITICAL for the check, left alone by the handler
    for --grace seconds after the stop the QEMU log records, also after libvirtd forgets the reason
    (a libvirtd restart: the domain is loaded again from its configuration, shut off (unknown),
    made here by undefining and defining it again); started once the grace period is over."""
    remedy.setAutostart(1)
    remedy.destroy()
    stopped = time.time()
    event = core_event("pipe-handler-event-create.json", NAME)
    assert domstate(NAME)[0] == 2
    result = remediate(event, tmp_path)
    assert result.returncode == 0, result
    assert "shut off (destroyed), autostart is set: stopped by an operator (destroyed)" in result.stderr
    assert "within --grace 1800 s: nothing done" in result.stderr
    xml = remedy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    remedy.undefine()
    dom = conn.defineXML(xml)
    dom.setAutostart(1)
    assert dom.state() == [SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN]
    result = remediate(event, tmp_path)
    assert "shut off (unknown), autostart is set: stopped by an operator (destroyed)" in result.stderr, result
    assert dom.state()[0] == SHUTOFF
    time.sleep(max(0.0, stopped + 3 - time.time()))
    result = remediate(event, tmp_path, "--grace", "2")
    assert result.returncode == 0, result
    assert "longer than --grace 2 s: trying to start it (attempt 1 of 3)" in result.stderr
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_a_domain_outside_match_is_never_touched(remedy, other, tmp_path):
    """Another team's crashed guest on the same host: no event, forged or not, gets it started."""
    crash(other)
    crash(remedy)
    events = [core_event("pipe-handler-event-create.json", OTHER), sensu_go_event(entity=OTHER),
              json.dumps({**json.loads(core_event("pipe-handler-event-create.json", NAME)),
                          "check": {"name": "check-kvm-domstate", "status": 2, "source": OTHER}})]
    for event in events:
        for select in (SELECT, ("--match", "."), ()):
            excluded = ("--exclude=-other$",) if select == ("--match", ".") else ()
            result = remediate(event, tmp_path, *excluded, select=select)
            assert result.returncode == 0, result
            assert f"{OTHER}: " in result.stderr and ": nothing done" in result.stderr, result
    assert other.state() == [SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]
    result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path)
    assert result.returncode == 0 and remedy.state()[0] == libvirt.VIR_DOMAIN_RUNNING, result
    assert other.state() == [SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]


def test_a_domain_marked_in_its_metadata_is_started_without_match(remedy, tmp_path):
    remedy.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<{ELEMENT}>on</{ELEMENT}>", KEY, NAMESPACE,
                       libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE)
    crash(remedy)
    result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path, select=())
    assert result.returncode == 0, result
    assert f"{NAME} is shut off (crashed): trying to start it" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    remedy.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<{ELEMENT}>off</{ELEMENT}>", KEY, NAMESPACE,
                       libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE)
    crash(remedy)
    result = remediate(core_event("pipe-handler-event-create.json", NAME), tmp_path, select=("--match", "."))
    assert result.returncode == 0 and "its metadata says <remediate>off</remediate>: nothing done" in result.stderr
    assert remedy.state() == [SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]


def test_a_pause_the_check_calls_warning_is_resumed(remedy, tmp_path):
    """QEMU stopped behind libvirt's back (a QMP 'stop'): paused (unknown), WARNING for the check,
    which the shipped severities pass; the handler resumes it."""
    import libvirt_qemu  # type: ignore[import-untyped]  # noqa: PLC0415

    libvirt_qemu.qemuMonitorCommand(remedy, '{"execute":"stop"}', 0)
    rig.wait_for(lambda: remedy.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_UNKNOWN], timeout=10,
                 what="paused (unknown)")
    code, line = domstate(NAME)
    assert code == 1, line
    event = json.loads(core_event("pipe-handler-event-create.json", NAME))
    event["check"].update(status=code, output=line + "\n")
    result = remediate(json.dumps(event), tmp_path)
    assert result.returncode == 0, result
    assert f"{NAME} is paused (unknown): trying to resume it" in result.stderr
    assert remedy.state()[0] == libvirt.VIR_DOMAIN_RUNNING
