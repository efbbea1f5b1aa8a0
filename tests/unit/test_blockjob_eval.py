"""check-kvm-blockjob's judging, pure, on what libvirt 9.0 / QEMU 7.2 gave for a guest on a chain of
three images during a commit and an active commit that waits for its pivot
(tests/data/blockjob-qemu-chain.json, measured on this rig)."""

import argparse
import json

import pytest

from sensu_kvm import blockjobs
from sensu_kvm.argtypes import duration_range
from sensu_kvm.blockjobs import Disk, Found, Job
from sensu_kvm.checks import blockjob
from sensu_kvm.checks.blockjob import Seen, follow, seen_from
from sensu_kvm.output import Status
from sensu_kvm.ranges import Range
from sensu_kvm.virt import DomainRecord
from tests.conftest import DATA

QEMU = json.loads((DATA / "blockjob-qemu-chain.json").read_text())
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
NOW = 1_800_000_000.0


def options(**given):
    values = {"age_warning": duration_range("6h"), "age_critical": duration_range("24h"),
              "chain_warning": Range.parse("3"), "chain_critical": Range.parse("8")}
    values.update(given)
    return argparse.Namespace(**values)


def job(info, disk="vda"):
    return Job(disk, info["type"], info["cur"], info["end"], info["bandwidth"])


def judged(found, looks, backups=None, **given):
    record = DomainRecord("kvm1", UUID, {})
    return blockjob.judge_domain(record, found, looks, backups or {}, NOW, blockjob.contexts(options(**given)))


def test_chain_depth_from_the_bulk_backing_entries_and_unknown_without_them():
    assert blockjobs.from_stats(QEMU["backing"], chain=True) == [
        Disk("vda", "/var/lib/libvirt/images/spk-bj-probe/top.qcow2", 2)]
    # without the BACKING flag QEMU still gives block.0.backingIndex (1: the top image): no depth in it
    assert blockjobs.from_stats(QEMU["plain"], chain=False) == [
        Disk("vda", "/var/lib/libvirt/images/spk-bj-probe/top.qcow2", None)]
    assert blockjobs.from_stats({"state.state": 1}, chain=True) is None  # no group: the XML fallback


def test_chain_depth_from_the_xml_nesting_ignores_the_mirror_and_the_empty_end():
    assert blockjobs.from_xml(QEMU["xml"]) == [
        Disk("vda", "/var/lib/libvirt/images/spk-bj-probe/top.qcow2", 2), Disk("sda", "", 0)]


def test_progress_and_ready():
    first, _second = (job(i) for i in QEMU["jobs"])
    assert (first.word, round(first.percent, 2), first.ready) == ("commit", 0.78, False)
    ready = job(QEMU["ready"])
    assert (ready.word, ready.percent, ready.ready) == ("active commit", 100.0, True)
    assert not Job("vda", 3, 5, 5, 0).ready  # a plain commit at its end finishes by itself


def test_follow_moving_stalled_restarted_and_overlapping_runs():
    first, second = (job(i) for i in QEMU["jobs"])
    seen, stalled = follow(None, first, NOW, 5)
    assert (seen, stalled) == (Seen(NOW, NOW, first.cur, first.end, NOW, False), False)
    moved, stalled = follow(seen, second, NOW + 60, 5)
    assert (moved.first, moved.moved, stalled) == (NOW, NOW + 60, False)
    still, stalled = follow(moved, second, NOW + 360, 5)
    assert (still.first, still.moved, stalled) == (NOW, NOW + 60, True)
    again, stalled = follow(still, second, NOW + 361, 5)  # a second run within the floor: the same verdict
    assert (again, stalled) == (still, True)
    new, stalled = follow(still, first, NOW + 400, 5)  # progress went back: another job
    assert (new.first, stalled) == (NOW + 400, False)
    ready = job(QEMU["ready"])
    seen, _ = follow(None, ready, NOW, 5)
    assert follow(seen, ready, NOW + 600, 5)[1] is False  # waiting for a pivot is not a stall


@pytest.mark.parametrize("value", [
    None, [], "x", {"t": NOW}, {"t": NOW, "first": NOW, "cur": 1, "end": 2, "moved": float("nan")},
    {"t": NOW, "first": NOW + 1, "cur": 1, "end": 2, "moved": NOW},  # first after t
    {"t": NOW + 3600, "first": NOW, "cur": 1, "end": 2, "moved": NOW},  # in the future
    {"t": NOW, "first": NOW, "cur": -1, "end": 2, "moved": NOW},
    {"t": NOW, "first": NOW, "cur": True, "end": 2, "moved": NOW},
    {"t": NOW, "first": NOW, "cur": 2**64, "end": 2**64, "moved": NOW},
])
def test_corrupt_stored_jobs_are_dropped(value):
    assert seen_from(value, NOW) is None


def test_a_stored_job_is_read_back():
    value = {"t": NOW, "first": NOW - 60, "cur": 1, "end": 2, "moved": NOW - 30, "stalled": True}
    assert seen_from(value, NOW) == Seen(NOW, NOW - 60, 1, 2, NOW - 30, True)


def test_a_stalled_job_is_warning_named_with_disk_type_progress_and_since():
    active = Job("vda", 4, 3774874, 8388608, 0)
    looks = {f"{UUID}/vda/4": (Seen(NOW, NOW - 600, active.cur, active.end, NOW - 300, True), True)}
    verdict = judged(Found((Disk("vda", "/i/top.qcow2", 1),), (active,)), looks)
    assert verdict.finding.status is Status.WARNING
    assert verdict.finding.text == "kvm1: vda active commit 45 % (seen for 10m, no progress since 5m)"
    assert [(m.metric, m.reported) for m in verdict.measurements] == [
        ("blockjob_progress", 45.0), ("blockjob_age", 600), ("chain_depth", 1)]


def test_a_ready_job_waiting_for_pivot_is_judged_by_age():
    ready = job(QEMU["ready"])
    looks = {f"{UUID}/vda/4": (Seen(NOW, NOW - 7 * 3600, ready.cur, ready.end, NOW - 7 * 3600, False), False)}
    verdict = judged(Found((Disk("vda", "/i/top.qcow2", 2),), (ready,)), looks)
    assert verdict.finding.status is Status.WARNING
    assert verdict.finding.text == "kvm1: vda active commit 100 % (ready, waiting for pivot, seen for 7h)"
    critical = judged(Found((Disk("vda", "/i/top.qcow2", 2),), (ready,)), looks, age_critical=duration_range("5h"))
    assert critical.finding.status is Status.CRITICAL


def test_a_job_of_kvm_backup_is_named_and_recover_suggested_when_its_run_is_gone():
    first = job(QEMU["jobs"][0])
    looks = {f"{UUID}/vda/3": (Seen(NOW, NOW, first.cur, first.end, NOW, False), False)}
    found = Found((Disk("vda", "/i/top.qcow2", 1),), (first,))
    gone = judged(found, looks, {UUID: ({"vda": "/i/top.qcow2"}, False)})
    assert gone.finding.text == "kvm1: vda commit 0 % (started by kvm-backup; run kvm-backup recover kvm1 if it stays)"
    assert gone.finding.status is Status.OK  # new and moving: nothing wrong yet
    running = judged(found, looks, {UUID: ({"vda": "/i/top.qcow2"}, True)})
    assert running.finding.text == "kvm1: vda commit 0 % (started by kvm-backup)"


def test_a_disk_left_on_the_overlay_of_a_dead_kvm_backup_run_is_warning():
    found = Found((Disk("vda", "/i/disk.kvm-backup-overlay-1.qcow2", 1),), ())
    verdict = judged(found, {}, {UUID: ({"vda": "/i/disk.kvm-backup-overlay-1.qcow2"}, False)})
    assert verdict.finding.status is Status.WARNING
    assert "still on kvm-backup's overlay /i/disk.kvm-backup-overlay-1.qcow2 from a run that is gone " \
           "(run kvm-backup recover kvm1)" in verdict.finding.text
    running = judged(found, {}, {UUID: ({"vda": "/i/disk.kvm-backup-overlay-1.qcow2"}, True)})
    assert running.finding.status is Status.OK  # the backup still runs: its overlay is expected


def test_chain_depth_thresholds():
    disks = (Disk("vda", "/i/a", 4), Disk("vdb", "/i/b", 9), Disk("vdc", "/i/c", 0))
    verdict = judged(Found(disks, ()), {})
    assert verdict.finding.status is Status.CRITICAL
    assert verdict.finding.text == "kvm1: vda backing chain 4 images deep; vdb backing chain 9 images deep"
    calm = judged(Found(disks, ()), {}, chain_warning=Range.parse("10"), chain_critical=None)
    assert (calm.finding.status, calm.finding.text) == (Status.OK, "kvm1: no block jobs, backing chains at most 9 deep")


def test_journals_give_overlays_and_whether_the_run_lives(tmp_path):
    entries = [{"uuid": "u1", "pid": 1, "overlays": {"vda": {"overlay": "/o1", "base": "/b1"}}},
               {"uuid": "u2", "pid": 2**22 + 12345, "overlays": {"vdb": {"overlay": "/o2", "base": "/b2"}}},
               {"uuid": "u3", "overlays": {}}, {"uuid": "u4", "overlays": "garbage"}]
    assert blockjob.backup_overlays(entries) == {"u1": ({"vda": "/o1"}, True), "u2": ({"vdb": "/o2"}, False)}
