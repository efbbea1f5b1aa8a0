"""The resource checks and metrics-kvm against real QEMU guests under libvirtd."""

from __future__ import annotations

import re
import time

import libvirt

from tests.conftest import run
from tests.hypervisor.conftest import define_noos, paused_by_enospc, record
from tests.perfdata_consumers import perfdata, text_lines
from tests.rig import rig

SYSTEM = "qemu:///system"


def perf(stdout: str, label: str) -> float:
    found = perfdata(stdout)
    assert label in found, f"no perfdata {label} in {stdout!r}"
    return float(re.match(r"[-0-9.]+", found[label]).group())  # type: ignore[union-attr]


def record_two_samples(conn: libvirt.virConnect, name: str, dom: libvirt.virDomain, seconds: float = 2) -> None:
    samples = []
    for _ in range(2):
        ((_, stats),) = conn.domainListGetStats([dom], 0)
        samples.append({"t": time.time(), "name": dom.name(), "uuid": dom.UUIDString(), "stats": stats})
        time.sleep(seconds)
    record(name, samples)


def test_busy_guest_trips_vcpu_usage(conn, linux_guests, tmp_path):
    # Three TCG guests share 2 host cores: the busy one may get well under a full core (its vCPU
    # waits, which shows as steal), so usage is judged against 10% (an idle guest uses ~0.5%) and the
    # steal thresholds are lifted out of the way.
    result = run("check-kvm-vcpu", "-u", SYSTEM, "-d", "spk-test-busy", "--interval", "2", "-w", "10",
                 "--steal-warning", "100", "--steal-critical", "100", "--state-dir", str(tmp_path))
    assert result.returncode == 1, result
    assert result.stdout.startswith("CheckKvmVcpu WARNING: spk-test-busy vCPU usage ")
    assert perf(result.stdout, "spk-test-busy_vcpu_usage") > 10
    assert 0 <= perf(result.stdout, "spk-test-busy_vcpu_steal") <= 100
    assert perf(result.stdout, "spk-test-busy_vcpus") == 1
    record_two_samples(conn, "vcpu-qemu-busy.json", linux_guests["busy"])


def test_vcpu_rates_between_runs_use_the_state_file(linux_guests, tmp_path):
    args = ("-u", SYSTEM, "-d", "spk-test-busy", "--state-dir", str(tmp_path), "--min-interval", "1")
    first = run("check-kvm-vcpu", *args)
    assert first.returncode == 0
    assert "first sample, usage on the next run" in first.stdout
    time.sleep(1)
    second = run("check-kvm-vcpu", *args)
    assert perf(second.stdout, "spk-test-busy_vcpu_usage") > 10, second.stdout


def test_writing_guest_shows_write_iops_and_bytes(conn, linux_guests, tmp_path):
    result = run("check-kvm-blkstat", "-u", SYSTEM, "-d", "spk-test-writer", "-m", "write_iops", "-w", "1",
                 "--interval", "2", "--state-dir", str(tmp_path))
    assert result.returncode == 1, result
    assert result.stdout.startswith("CheckKvmBlkstat WARNING: spk-test-writer: vda write_iops ")
    assert perf(result.stdout, "spk-test-writer_write_iops_vda") > 1
    assert perf(result.stdout, "spk-test-writer_write_bps_vda") > 0
    assert perf(result.stdout, "spk-test-writer_allocation_vda") > 0
    record_two_samples(conn, "blkstat-qemu-writer.json", linux_guests["writer"])


def test_linux_guest_reports_the_guest_memory_view(conn, linux_guests):
    dom = linux_guests["busy"]
    rig.wait_for(lambda: "balloon.usable" in conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BALLOON)[0][1],
                 timeout=30, what="balloon statistics from the guest")
    result = run("check-kvm-memory", "-u", SYSTEM, "-d", "spk-test-busy")
    assert result.returncode == 0, result
    assert "(guest view: " in result.stdout.splitlines()[0]
    assert 0 < perf(result.stdout, "spk-test-busy_memory_used") < 100
    assert perf(result.stdout, "spk-test-busy_available") > 0
    result = run("check-kvm-memory", "-u", SYSTEM, "-d", "spk-test-busy", "-w", "1", "-c", "2")
    assert result.returncode == 2
    ((_, stats),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON)
    record("memory-qemu-guest.json", [{"name": dom.name(), "uuid": dom.UUIDString(), "stats": stats}])


def test_no_os_guest_falls_back_to_the_host_view(conn, images):
    dom = define_noos(conn, images, "spk-test-noos-mem")
    try:
        dom.create()
        result = run("check-kvm-memory", "-u", SYSTEM, "-d", "spk-test-noos-mem")
        assert result.returncode == 0, result
        assert "(host view: rss " in result.stdout
        result = run("check-kvm-memory", "-u", SYSTEM, "-d", "spk-test-noos-mem", "--view", "guest")
        assert result.returncode == 3
        ((_, stats),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON)
        record("memory-qemu-noos.json", [{"name": dom.name(), "uuid": dom.UUIDString(), "stats": stats}])
    finally:
        dom.destroy()
        dom.undefine()


def test_blkerror_names_the_full_disk(linux_guests):
    paused_by_enospc(linux_guests["enospc"])
    result = run("check-kvm-blkerror", "-u", SYSTEM, "--match", "^spk-test-(enospc|busy)$", "-v")
    assert result.returncode == 2, result
    lines = text_lines(result.stdout)
    assert lines[0] == "CheckKvmBlkerror CRITICAL: 1 of 2 domains not OK: spk-test-enospc: vda: no space"
    assert "OK: spk-test-busy: no errors found" in lines


def test_host_reports_the_file_system_of_the_test_images(linux_guests, images, tmp_path):
    paused_by_enospc(linux_guests["enospc"])
    # The TCG guests keep the host's CPUs busy: the CPU threshold is lifted out of the way.
    result = run("check-kvm-host", "-u", SYSTEM, "--match", "^spk-test-", "--interval", "1", "-v",
                 "--cpu-warning", "100", "--state-dir", str(tmp_path))
    small = images / "small"  # where linux_guests mounted the 24 MiB file system
    assert result.returncode == 2, result
    assert f"CRITICAL: file system {small} 100.0% used (0 MiB free)" in text_lines(result.stdout)[1:]
    assert re.search(r"OK: CPU [0-9.]+% busy", result.stdout)
    assert perf(result.stdout, f"fs_{small}_used") == 100


def test_metrics_cover_the_running_guests(linux_guests):
    result = run("metrics-kvm", "-u", SYSTEM, "--match", "^spk-test-", "--format", "graphite", "--scheme", "t")
    assert result.returncode == 0, result
    paths = {line.split()[0] for line in result.stdout.splitlines()}
    assert "t.domain.spk-test-writer.block.vda.write_bytes" in paths
    assert "t.domain.spk-test-busy.vcpu.0.seconds" in paths
    assert "t.host.cpu_idle_seconds" in paths


def test_bulk_call_is_the_only_per_domain_source(linux_guests, tmp_path, fault_env):
    """Decision D2 on real QEMU: no per-domain libvirt call for what the bulk call returns.

    Every virDomain method the command calls is logged (tests/faults/sitecustomize.py); only
    name() and UUIDString(), which libvirt answers without a round trip, may appear.
    """
    commands = [
        ["check-kvm-vcpu", "--state-dir", str(tmp_path)],
        ["check-kvm-memory"],
        ["check-kvm-blkstat", "--state-dir", str(tmp_path)],
        ["metrics-kvm", "--format", "influxdb"],
        ["check-kvm-domstate", "--match", "^spk-test-(busy|writer)$"],
    ]
    for argv in commands:
        log = tmp_path / f"{argv[0]}.calls"
        env = {**fault_env, "SPK_FAULT": "log-domain-calls", "SPK_CALL_LOG": str(log)}
        result = run(argv[0], "-u", SYSTEM, *argv[1:], env=env)
        assert result.returncode in (0, 1, 2), result
        calls = set(log.read_text().split()) if log.exists() else set()
        assert calls <= {"name", "UUIDString"}, (argv[0], calls)
