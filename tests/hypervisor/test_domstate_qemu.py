"""check-kvm-domstate against real QEMU domains under libvirtd (software emulation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import run
from tests.hypervisor.conftest import define_noos, paused_by_enospc, record
from tests.perfdata_consumers import perfdata, text_lines
from tests.rig import rig

SYSTEM = "qemu:///system"


@pytest.fixture(scope="module")
def fleet(conn: libvirt.virConnect, images: Path) -> Iterator[dict[str, libvirt.virDomain]]:
    """No-OS guests: running, paused by the user, shut off with and without autostart."""
    doms = {n: define_noos(conn, images, f"spk-test-{n}") for n in ("running", "paused", "autostart", "off")}
    doms["running"].create()
    doms["paused"].create()
    doms["paused"].suspend()
    doms["autostart"].setAutostart(1)
    yield doms
    for dom in doms.values():
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def domstate(*args: str):
    return run("check-kvm-domstate", "-u", SYSTEM, *args)


def test_every_state_judged(fleet, conn):
    result = domstate("--match", "^spk-test-(running|paused|autostart|off)$", "-v")
    assert result.returncode == 2, result
    lines = text_lines(result.stdout)
    assert lines[0].startswith("CheckKvmDomstate CRITICAL: 2 of 4 domains not OK: spk-test-autostart shut off")
    assert "CRITICAL: spk-test-autostart shut off (unknown), autostart is set" in lines
    assert "WARNING: spk-test-paused paused (user)" in lines
    assert "OK: spk-test-running running (booted)" in lines
    assert "OK: spk-test-off shut off (unknown)" in lines
    perf = perfdata(result.stdout)
    assert (perf["running"], perf["paused"], perf["shutoff"]) == ("1;;;0;4", "1;;;0;4", "2;;;0;4")
    stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
    autostart = {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)}
    record("domstate-qemu-fleet.json", [
        {"name": d.name(), "stats": s, "autostart": d.name() in autostart}
        for d, s in stats if d.name().startswith(rig.PREFIX)
    ])


def test_destroyed_domain_turns_critical_and_ok_again(conn, images):
    dom = define_noos(conn, images, "spk-test-destroyme")
    try:
        dom.create()
        result = domstate("-d", "spk-test-destroyme")
        assert (result.returncode, text_lines(result.stdout)[0]) == (
            0, "CheckKvmDomstate OK: spk-test-destroyme running (booted)")
        dom.destroy()
        result = domstate("-d", "spk-test-destroyme")
        assert (result.returncode, text_lines(result.stdout)[0]) == (
            2, "CheckKvmDomstate CRITICAL: spk-test-destroyme shut off (destroyed), named with -d")
        dom.create()
        result = domstate("-d", "spk-test-destroyme")
        assert result.returncode == 0, result
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_deleted_domain_is_not_found(conn, images):
    dom = define_noos(conn, images, "spk-test-deleteme")
    dom.undefine()
    result = domstate("-d", "spk-test-deleteme")
    assert result.returncode == 2
    assert text_lines(result.stdout)[0] == "CheckKvmDomstate CRITICAL: spk-test-deleteme not found"


def test_guest_paused_by_full_disk_is_critical_naming_the_disk(conn, linux_guests):
    """The tiny Linux guest writes to a qcow2 on a 24 MiB file system until QEMU pauses it."""
    dom = linux_guests["enospc"]
    paused_by_enospc(dom)
    result = domstate("-d", "spk-test-enospc")
    assert result.returncode == 2, result
    assert text_lines(result.stdout)[0] == "CheckKvmDomstate CRITICAL: spk-test-enospc paused (I/O error): vda: no space"
    result = domstate("--match", "^spk-test-enospc$", "-v")
    assert "CRITICAL: spk-test-enospc paused (I/O error): vda: no space" in result.stdout.splitlines()
    ((_, stats),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_STATE)
    record("domstate-qemu-enospc.json", [
        {"name": dom.name(), "stats": stats, "autostart": False, "disk_errors": dom.diskErrors()}])
