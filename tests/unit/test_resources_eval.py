"""The resource checks' evaluation, pure, on statistics recorded from real QEMU guests under libvirtd.

Recordings (tests/data/*-qemu-*.json) were written by tests/hypervisor with SPK_RECORD_DIR set.
"""

import copy
import json
from types import SimpleNamespace

import pytest

from sensu_kvm.checks import blkstat, host, memory, vcpu
from sensu_kvm.output import Status
from sensu_kvm.statefile import Rate, compare
from sensu_kvm.virt import DomainRecord
from tests.conftest import DATA


def recording(name):
    return json.loads((DATA / name).read_text())


def record(entry, stats=None):
    return DomainRecord(entry["name"], entry["uuid"], stats if stats is not None else dict(entry["stats"]))


def between(previous, current, keys):
    """The rate of two recorded samples, as the state file gives it (the recordings are 2 s apart)."""
    return compare(previous, current, list(keys), floor=1.0)[0]


def vcpu_opts(*argv):
    return vcpu.parser().parse_args(list(argv))


def test_vcpu_usage_of_the_busy_guest():
    first, second = recording("vcpu-qemu-busy.json")
    a, b = record(first), record(second)
    later = vcpu.sample(b, second["t"])
    verdict = vcpu.judge_domain(b, between(vcpu.sample(a, first["t"]), later, vcpu.KEYS), later, vcpu_opts("-w", "50"))
    labels = {p.label: p.value for p in verdict.perfdata}
    assert labels["spk-test-busy_vcpu_usage"] > 50
    assert 0 <= labels["spk-test-busy_vcpu_steal"] < 100
    assert verdict.finding.status is Status.WARNING
    assert verdict.finding.text.startswith("spk-test-busy vCPU usage ")
    assert verdict.finding.text.endswith(f" (over {second['t'] - first['t']:.1f}s)")


def test_vcpu_counter_reset_starts_a_new_sample():
    first, second = recording("vcpu-qemu-busy.json")
    b = record(second)
    later = vcpu.sample(b, second["t"])
    earlier = dict(vcpu.sample(record(first), first["t"]), time=later["time"] + 10**9)  # went backwards
    verdict = vcpu.judge_domain(b, between(earlier, later, vcpu.KEYS), later, vcpu_opts())
    assert verdict.finding.status is Status.OK
    assert "counters reset (domain restarted), new sample" in verdict.finding.text
    assert not any(p.label.endswith("_vcpu_usage") for p in verdict.perfdata)


def test_vcpu_expected_count():
    _, second = recording("vcpu-qemu-busy.json")
    b = record(second)
    verdict = vcpu.judge_domain(b, Rate(None), vcpu.sample(b, second["t"]), vcpu_opts("--expect-vcpus", "2"))
    assert verdict.finding.status is Status.WARNING
    assert "1 vCPUs, expected 2" in verdict.finding.text


def mem_opts(*argv):
    return memory.parser().parse_args(list(argv))


def test_memory_guest_view_from_balloon_statistics():
    (entry,) = recording("memory-qemu-guest.json")
    verdict = memory.judge_domain(record(entry), mem_opts())
    s = entry["stats"]
    expected = (s["balloon.available"] - s["balloon.usable"]) / s["balloon.available"] * 100
    labels = {p.label: p for p in verdict.perfdata}
    assert labels["spk-test-busy_memory_used"].value == pytest.approx(expected, abs=0.001)
    assert labels["spk-test-busy_available"].value == s["balloon.available"] * 1024
    assert labels["spk-test-busy_available"].uom == "B"
    assert "(guest view: " in verdict.finding.text


def test_memory_without_guest_statistics_uses_the_host_view():
    (entry,) = recording("memory-qemu-noos.json")
    verdict = memory.judge_domain(record(entry), mem_opts())
    assert "(host view: rss " in verdict.finding.text
    assert memory.judge_domain(record(entry), mem_opts("--view", "guest")).finding.status is Status.UNKNOWN


def test_memory_missing_balloon_is_unknown():
    (entry,) = recording("memory-qemu-guest.json")
    stats = {k: v for k, v in entry["stats"].items() if not k.startswith("balloon.")}
    verdict = memory.judge_domain(record(entry, stats), mem_opts())
    assert (verdict.finding.status, verdict.finding.text) == (Status.UNKNOWN, "spk-test-busy: no balloon statistics")


def blk_opts(*argv):
    options = blkstat.parser().parse_args(list(argv))
    return options


def blk_samples(first, second):
    keys = blkstat.COUNTERS
    def one(entry):
        return {f"{entry['uuid']}/{dev}": {"t": entry["t"], **{k: b[k] for k in keys if k in b}}
                for dev, b in blkstat.disks(record(entry))}
    return one(first), one(second)


def blk_rates(previous, current):
    return {key: between(previous.get(key), sample, blkstat.COUNTERS) for key, sample in current.items()}


def test_blkstat_rates_of_the_writing_guest():
    first, second = recording("blkstat-qemu-writer.json")
    previous, current = blk_samples(first, second)
    options = blk_opts("-m", "write_iops", "-w", "1")
    verdict = blkstat.judge_domain(record(second), blk_rates(previous, current), options)
    labels = {p.label: p.value for p in verdict.perfdata}
    elapsed = second["t"] - first["t"]
    wr = second["stats"]["block.0.wr.reqs"] - first["stats"]["block.0.wr.reqs"]
    assert labels["spk-test-writer_write_iops_vda"] == pytest.approx(wr / elapsed, rel=1e-3)
    assert labels["spk-test-writer_write_bps_vda"] > 0
    assert labels["spk-test-writer_write_latency_vda"] > 0
    assert verdict.finding.status is Status.WARNING


def test_blkstat_first_run_judges_allocation_only():
    _, second = recording("blkstat-qemu-writer.json")
    _, current = blk_samples(second, second)
    verdict = blkstat.judge_domain(record(second), blk_rates({}, current), blk_opts("-w", "85", "-c", "95"))
    assert "first sample, rates on the next run" in verdict.finding.text
    assert [p.label for p in verdict.perfdata] == ["spk-test-writer_allocation_vda"]


def test_blkstat_counter_reset_gives_no_negative_rate():
    first, second = recording("blkstat-qemu-writer.json")
    current, previous = blk_samples(first, second)  # swapped: every counter went backwards
    for sample in current.values():
        sample["t"] = second["t"] + 5
    verdict = blkstat.judge_domain(record(first), blk_rates(previous, current), blk_opts("-m", "write_iops", "-w", "1"))
    assert all(p.value >= 0 for p in verdict.perfdata)
    assert "counters reset (domain restarted), new sample, rates on the next run" in verdict.finding.text


def test_blkstat_skips_a_cdrom_without_source():
    _, second = recording("blkstat-qemu-writer.json")
    stats = copy.deepcopy(second["stats"])
    stats.update({"block.count": 2, "block.1.name": "sda"})
    assert [d for d, _ in blkstat.disks(record(second, stats))] == ["vda"]


def host_opts(*argv):
    return host.parser().parse_args(list(argv))


def test_host_evaluation():
    previous = {"t": 100.0, "kernel": 10 * 10**9, "user": 30 * 10**9, "idle": 60 * 10**9, "iowait": 0}
    current = {"t": 110.0, "kernel": 15 * 10**9, "user": 45 * 10**9, "idle": 80 * 10**9, "iowait": 0}
    busy = host.cpu_busy(between(previous, current, host.CPU_KEYS))
    assert busy == pytest.approx(50.0)
    swap = SimpleNamespace(total=1000, percent=60.0)
    fs = {"/var/lib/libvirt/images": SimpleNamespace(percent=97.0, free=10 * 2**20, total=2**30)}
    report = host.evaluate(busy, {"total": 1000, "free": 100, "buffers": 50, "cached": 50}, swap, fs, host_opts())
    assert report.status is Status.CRITICAL
    assert report.details == [
        "CRITICAL: file system /var/lib/libvirt/images 97.0% used (10 MiB free)",
        "WARNING: swap 60.0% used",
    ]
    text = report.render()
    assert "cpu_busy=50%;90;;0;100" in text
    assert "memory_used=80%;90;95;0;100" in text
    assert "fs_/var/lib/libvirt/images_used=97%;85;95;0;100" in text


def test_host_first_run_and_remote_memory_error():
    report = host.evaluate(None, "cannot read the host's memory statistics: denied", None, {}, host_opts("-v"))
    assert report.status is Status.UNKNOWN
    assert report.summary == "1 of 2 resources not OK: memory: cannot read the host's memory statistics: denied"
    assert "OK: CPU: first sample, busy % on the next run" in report.details
