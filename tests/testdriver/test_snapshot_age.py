"""check-kvm-snapshot-age as a real process, on test-driver snapshots with chosen creation times."""

import pytest

from tests.conftest import node_uri, run
from tests.perfdata_consumers import perfdata

SNAPS = node_uri("snapshots.xml")


def test_old_snapshot_is_critical_and_too_many_is_a_warning():
    result = run("check-kvm-snapshot-age", "-u", SNAPS, "-v")
    assert result.returncode == 2, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CheckKvmSnapshotAge CRITICAL: 2 of 3 domains not OK: old: 2 snapshots, "
                               "oldest 'before-upgrade' ")
    assert "OK: fresh: no snapshots" in lines
    assert "WARNING: many: 12 snapshots, oldest 's00' 0s old; 12 snapshots" in lines
    perf = perfdata(result.stdout)
    assert (perf["old_snapshots"], perf["old_chain_depth_vda"]) == ("2;10;;0", "1;;;1")


def test_thresholds_are_durations():
    result = run("check-kvm-snapshot-age", "-u", SNAPS, "-d", "old", "-w", "5000w", "-c", "10000w")
    assert result.returncode == 0, result
    assert "old_oldest_age=" in result.stdout
    assert ";3024000000;6048000000;0" in result.stdout  # 5000 and 10000 weeks, in seconds
    result = run("check-kvm-snapshot-age", "-u", SNAPS, "-d", "many", "--count-warning", "20")
    assert result.returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["-w", "3 days"], "-w/--warning"),
    (["-c", "-1d"], "-c/--critical"),
    (["--count-warning", "x"], "invalid range 'x'"),
])
def test_bad_thresholds(args, message):
    result = run("check-kvm-snapshot-age", "-u", SNAPS, *args)
    assert (result.returncode, result.stdout) == (3, "")
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
