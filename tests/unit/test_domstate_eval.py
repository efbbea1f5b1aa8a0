"""check-kvm-domstate's evaluation, pure: the verdict for each state and reason."""

import json

import pytest

from sensu_kvm import states
from sensu_kvm.checks.domstate import Observed, evaluate, judge_domain, parser
from sensu_kvm.output import Status
from tests.conftest import DATA


def opts(*argv):
    return parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("state", "reason", "status", "text"),
    [
        (states.RUNNING, 1, Status.OK, "kvm1 running (booted)"),
        (states.BLOCKED, 0, Status.OK, "kvm1 blocked (unknown)"),
        (states.PAUSED, 1, Status.WARNING, "kvm1 paused (user)"),
        (states.PAUSED, 2, Status.WARNING, "kvm1 migrating"),  # no job details: tests/unit/test_domstate_jobs.py
        (states.PAUSED, 9, Status.WARNING, "kvm1 paused (creating snapshot)"),
        (states.CRASHED, 1, Status.CRITICAL, "kvm1 crashed (panicked)"),
        (states.SHUTDOWN, 1, Status.WARNING, "kvm1 shutting down (user)"),
        (states.PMSUSPENDED, 0, Status.WARNING, "kvm1 pmsuspended (unknown)"),
        (states.SHUTOFF, 1, Status.OK, "kvm1 shut off (shutdown)"),
        (states.SHUTOFF, 2, Status.OK, "kvm1 shut off (destroyed)"),
        (states.SHUTOFF, 5, Status.OK, "kvm1 shut off (saved)"),
        (states.SHUTOFF, 3, Status.CRITICAL, "kvm1 shut off (crashed)"),
        (states.SHUTOFF, 6, Status.CRITICAL, "kvm1 shut off (failed)"),
        (states.NOSTATE, 0, Status.UNKNOWN, "kvm1 no state (reason 0)"),
    ],
)
def test_state_and_reason(state, reason, status, text):
    finding = judge_domain(Observed("kvm1", state, reason), named=False, expect_running=False)
    assert (finding.status, finding.text) == (status, text)


def test_io_error_pause_names_each_disk():
    seen = Observed("kvm1", states.PAUSED, states.PAUSED_IOERROR, disk_errors={"vdb": 1, "vda": 2})
    finding = judge_domain(seen, named=False, expect_running=False)
    assert finding.status is Status.CRITICAL
    assert finding.text == "kvm1 paused (I/O error): vda: no space, vdb: unspecified error"


def test_io_error_pause_with_unreadable_disk_errors_stays_critical():
    seen = Observed("kvm1", states.PAUSED, states.PAUSED_IOERROR, error="kvm1: disk errors: no answer within 2s")
    finding = judge_domain(seen, named=False, expect_running=False)
    assert finding.status is Status.CRITICAL
    assert "disk errors unreadable: kvm1: disk errors: no answer within 2s" in finding.text


@pytest.mark.parametrize(
    ("autostart", "named", "expect", "status", "suffix"),
    [
        (False, False, False, Status.OK, ""),
        (True, False, False, Status.CRITICAL, ", autostart is set"),
        (False, True, False, Status.CRITICAL, ", named with -d"),
        (False, False, True, Status.CRITICAL, ", expected to run"),
    ],
)
def test_shut_off_is_critical_when_it_should_run(autostart, named, expect, status, suffix):
    seen = Observed("kvm1", states.SHUTOFF, 1, autostart=autostart)
    finding = judge_domain(seen, named=named, expect_running=expect)
    assert (finding.status, finding.text) == (status, "kvm1 shut off (shutdown)" + suffix)


def test_unreadable_domain_is_unknown_and_does_not_hide_critical():
    observed = [Observed("a", None, error="state statistics unreadable: boom"), Observed("b", states.CRASHED, 0)]
    report = evaluate(observed, [], opts())
    assert report.status is Status.CRITICAL
    assert report.details == ["CRITICAL: b crashed (unknown)", "UNKNOWN: a: state statistics unreadable: boom"]


def test_missing_named_domain_is_critical():
    report = evaluate([Observed("kvm2", states.RUNNING, 1)], ["kvm1"], opts("-d", "kvm1", "-d", "kvm2"))
    assert report.status is Status.CRITICAL
    assert "kvm1 not found" in report.summary
    assert "missing=1;;;0" in report.render()


def test_running_count_thresholds():
    observed = [Observed("a", states.RUNNING, 1), Observed("b", states.SHUTOFF, 1)]
    report = evaluate(observed, [], opts("-w", "2:", "-c", "1:"))
    assert report.status is Status.WARNING
    assert report.summary.startswith("1 running, outside 2:; 2 domains: 1 running, 1 shut off")
    assert "running=1;2:;1:;0;2" in report.render()


def test_no_domains_against_a_minimum_is_critical():
    report = evaluate([], [], opts("-c", "1:"))
    assert report.status is Status.CRITICAL
    assert "no domains defined" in report.summary


def test_recorded_real_hypervisor_stats():
    """Stats recorded from libvirtd + QEMU (tests/data/domstate-qemu.json, see its 'recorded' note)."""
    recording = json.loads((DATA / "domstate-qemu.json").read_text())
    observed = [
        Observed(d["name"], d["stats"]["state.state"], d["stats"]["state.reason"], d["autostart"], d.get("disk_errors"))
        for d in recording["domains"]
    ]
    report = evaluate(observed, [], opts())
    assert report.status is Status.CRITICAL
    by_name = {o.name: judge_domain(o, named=False, expect_running=False) for o in observed}
    assert by_name["spk-test-running"].status is Status.OK
    assert by_name["spk-test-paused"].text == "spk-test-paused paused (user)"
    assert by_name["spk-test-autostart"].status is Status.CRITICAL
    assert by_name["spk-test-off"].status is Status.OK
    assert by_name["spk-test-enospc"].text == "spk-test-enospc paused (I/O error): vda: no space"
