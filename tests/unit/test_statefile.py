"""The state file: atomic, locked, rebuilt silently when corrupt; rates that survive restarts."""

import json
import os
import time

import pytest

from sensu_kvm.errors import KvmError
from sensu_kvm.statefile import StateFile, exchange, rates


def test_round_trip_and_keyed_by_uri(tmp_path):
    a = StateFile(tmp_path, "vcpu", "qemu:///system")
    b = StateFile(tmp_path, "vcpu", "qemu+ssh://other/system")
    a.save({"u1": {"t": 1.0, "x": 5}})
    assert a.load() == {"u1": {"t": 1.0, "x": 5}}
    assert b.load() == {}
    assert a.path != b.path
    assert oct(a.path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"version": 99, "samples": {}}', "\x00\x01", '"x"'])
def test_corrupt_file_reads_as_empty_and_is_rewritten(tmp_path, content):
    state = StateFile(tmp_path, "vcpu", "test:///default")
    state.path.write_text(content)
    assert state.load() == {}
    state.save({"u": {"t": 2.0}})
    assert json.loads(state.path.read_text())["samples"] == {"u": {"t": 2.0}}


def test_unreadable_file_reads_as_empty(tmp_path):
    state = StateFile(tmp_path, "vcpu", "test:///default")
    state.path.mkdir()  # a directory where the file should be: reading fails
    assert state.load() == {}


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = StateFile(blocker / "sub", "vcpu", "test:///default")
    with pytest.raises(KvmError, match=r"cannot create state directory .*--state-dir"):
        state.save({})


def test_lock_excludes_a_second_holder(tmp_path):
    state = StateFile(tmp_path, "vcpu", "test:///default")
    other = StateFile(tmp_path, "vcpu", "test:///default")
    # flock locks belong to the open file description: a second open conflicts, even in one process
    with state.locked(), pytest.raises(KvmError, match="is locked by another run"), other.locked(wait=0.1):
        pass
    with other.locked(wait=0.1):
        pass


def test_rates_and_counter_reset():
    before = {"t": 100.0, "cpu": 1_000, "io": 10}
    assert rates(before, {"t": 102.0, "cpu": 3_000, "io": 30}, ["cpu", "io"]) == {"cpu": 1000.0, "io": 10.0}
    assert rates(before, {"t": 102.0, "cpu": 500, "io": 30}, ["cpu", "io"]) is None  # restarted
    assert rates(before, {"t": 100.0, "cpu": 2_000}, ["cpu"]) is None  # no time elapsed
    assert rates(None, {"t": 1.0}, ["cpu"]) is None
    assert rates({"t": "x"}, {"t": 1.0}, ["cpu"]) is None
    assert rates(before, {"t": 101.0, "cpu": 1_100}, ["cpu", "missing"]) == {"cpu": 100.0}


def test_exchange_keeps_other_subjects_and_drops_old_ones(tmp_path):
    state = StateFile(tmp_path, "blk", "test:///default")
    now = time.time()
    state.save({"old": {"t": now - 2 * 86400}, "other": {"t": now - 60}, "mine": {"t": now - 60, "x": 1}, "bad": 3})
    previous, current = exchange(state, lambda: {"mine": {"t": time.time(), "x": 2}}, None)
    assert previous["mine"]["x"] == 1
    assert set(state.load()) == {"other", "mine"}
    assert current["mine"]["x"] == 2


def test_exchange_with_interval_samples_twice(tmp_path):
    state = StateFile(tmp_path, "blk", "test:///default")
    calls = []

    def take():
        calls.append(1)
        return {"d": {"t": time.time(), "n": len(calls)}}

    previous, current = exchange(state, take, 0.05)
    assert (previous["d"]["n"], current["d"]["n"]) == (1, 2)
    assert state.load()["d"]["n"] == 2
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
