"""check-kvm-pool's judging of pools (pure): states, space, overcommit, names."""

from __future__ import annotations

from typing import Any

import pytest

from sensu_kvm.checks import pool as check
from sensu_kvm.names import Names
from sensu_kvm.output import Status

GIB = 2**30


def options(*args: str):
    return check.parser().parse_args(list(args))


def pool(name: str = "p", **fields: Any) -> check.Pool:
    given: dict[str, Any] = {"capacity": 100 * GIB, "allocation": 40 * GIB, "available": 60 * GIB, "kind": "dir",
             "target": "/p", "volumes": (20 * GIB, 40 * GIB)}
    given.update(fields)
    return check.Pool(name, "5b1c7e8a-0000-0000-0000-000000000001", **given)


def judged(p: check.Pool, *args: str):
    return check.judge_pool(p, p.name, p.name, options(*args))


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"state": check.INACTIVE}, Status.WARNING, "pool p is inactive"),
    ({"state": check.INACTIVE, "autostart": True}, Status.CRITICAL, "pool p is inactive (marked autostart)"),
    ({"state": check.BUILDING}, Status.WARNING, "pool p is building, 40.0% used"),
    ({"state": check.DEGRADED}, Status.WARNING, "pool p is degraded, 40.0% used"),
    ({"state": check.INACCESSIBLE}, Status.CRITICAL, "pool p is inaccessible"),
    ({"target_missing": True}, Status.CRITICAL, "pool p: target directory /p is missing"),
    ({"error": "Storage pool not found"}, Status.UNKNOWN, "pool p: Storage pool not found"),
    ({}, Status.OK, "pool p 40.0% used, 60.0 GiB of 100.0 GiB available, 2 volumes of 60.0 GiB (60% of capacity)"),
])
def test_states(fields, status, words):
    finding, _ = judged(pool(**fields))
    assert (finding.status, finding.text.startswith(words)) == (status, True), finding


def test_used_available_and_overcommit_thresholds():
    assert judged(pool(), "-w", "30")[0].status is Status.WARNING
    assert judged(pool(), "-w", "30", "-c", "39")[0].status is Status.CRITICAL
    assert judged(pool(), "--available-warning", "61G")[0].status is Status.WARNING
    assert judged(pool(), "--available-critical", "61440M")[0].status is Status.OK  # exactly 60 GiB left
    thin = pool(volumes=(100 * GIB, 150 * GIB))
    finding, measured = judged(thin)
    assert finding.status is Status.WARNING
    assert finding.text.endswith("overcommitted, the volumes could grow past the pool by 150.0 GiB")
    assert judged(thin, "--overcommit-warning", "300")[0].status is Status.OK
    assert judged(thin, "--overcommit-critical", "200")[0].status is Status.CRITICAL
    assert [str(m.perf()) for m in measured] == ["p_used=40%;80;90;0;100", "p_available=64424509440B;;;0;107374182400",
                                                "p_overcommit=250%;100;;0", "p_volumes=2;;;0"]


def test_a_pool_without_capacity_has_no_percentages():
    finding, measured = judged(pool(capacity=0, allocation=0, available=0, volumes=()))
    assert (finding.status, finding.text, [m.metric for m in measured]) == (Status.OK, "pool p has no capacity",
                                                                           ["volumes"])


def test_report_names_missing_pools_and_keeps_hostile_names_apart():
    hostile, plain = "x|y=1 'q'\tz", "x_y_1__q__z"
    names = Names({hostile: "aaaaaaaa-0000-0000-0000-000000000001", plain: "bbbbbbbb-0000-0000-0000-000000000002"})
    report = check.evaluate([pool(hostile), pool(plain)], ["gone"], options("-v"), names)
    assert report.status is Status.CRITICAL
    assert report.summary == "1 of 3 pools not OK: pool gone not found"
    labels = [p.label for p in report.perfdata]
    assert "x_y_1__q__z_used" in labels and "x_y_1__q__z-aaaaaaaa_used" in labels
    assert any("x¦y=1 'q'\\tz" in line for line in report.details)
    assert [p.label for p in report.aggregates or ()] == ["used_max", "available_max", "overcommit_max", "volumes_max"]


def test_no_pool_selected_by_match_is_unknown_and_no_pools_is_ok():
    assert check.evaluate([], [], options("--match", "x"), Names()).status is Status.UNKNOWN
    report = check.evaluate([], [], options(), Names())
    assert (report.status, report.summary) == (Status.OK, "no storage pools defined")


@pytest.mark.parametrize(("text", "size"), [("20G", 20 * GIB), ("500MiB", 500 * 2**20), ("1024", 1024),
                                            ("1.5k", 1536), ("2TB", 2 * 2**40)])
def test_sizes(text, size):
    assert check.size_arg(text).start == size


def test_local_uris():
    assert check.is_local("qemu:///system") and check.is_local("qemu+unix:///system")
    assert not check.is_local("test:///default") and not check.is_local("qemu+ssh://kvm2/system")


@pytest.mark.parametrize("text", ["5X", "", "-1G", "9" * 400, "1e3"])
def test_bad_sizes(text):
    with pytest.raises(Exception, match="invalid size"):
        check.size_arg(text)
