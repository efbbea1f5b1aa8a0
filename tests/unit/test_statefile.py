"""The state file: atomic, locked, rebuilt silently when corrupt; rates that survive restarts,
overlapping runs and whatever else is found at the state path."""

import json
import os
import socket
import threading
import time

import pytest

from sensu_kvm.errors import KvmError
from sensu_kvm.statefile import MAX_BYTES, Rate, StateFile, compare, exchange, rates, valid_sample

URI = "test:///default"
KEYS = ["x"]


def test_round_trip_and_keyed_by_uri(tmp_path):
    a = StateFile(tmp_path, "vcpu", "qemu:///system")
    b = StateFile(tmp_path, "vcpu", "qemu+ssh://other/system")
    a.save({"u1": {"t": 1.0, "x": 5}})
    assert a.load() == {"u1": {"t": 1.0, "x": 5}}
    assert b.load() == {}
    assert a.path != b.path
    assert oct(a.path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_a_password_in_the_uri_never_reaches_the_file_readable_by_all(tmp_path):
    state = StateFile(tmp_path, "vcpu", "qemu+tcp://admin:s3cret@host/system?password=hunter22")
    state.save({"u1": {"t": 1.0, "x": 5}})
    text = state.path.read_text()
    assert "s3cret" not in text and "hunter22" not in text
    assert "qemu+tcp://admin@host/system" in text
    assert StateFile(tmp_path, "vcpu", "qemu+tcp://admin:other@host/system?password=hunter22").load() == {
        "u1": {"t": 1.0, "x": 5}}  # one host's samples, whatever password reached it


def envelope(samples: str) -> str:
    return f'{{"version": 1, "uri": "{URI}", "samples": {samples}}}'


@pytest.mark.parametrize("content", [
    "", "{not json", "[]", '{"version": 99, "samples": {}}', "\x00\x01", '"x"', "null",
    envelope('{"u": {"t": NaN, "x": 1}}'), envelope('{"u": {"t": Infinity}}'), envelope('{"u": {"t": -Infinity}}'),
    "[" * 100_000, envelope('{"u": {"t": 1' + "0" * 5000 + "}}"),  # too deep; more digits than Python reads
])
def test_corrupt_file_reads_as_empty_and_is_rewritten(tmp_path, content):
    state = StateFile(tmp_path, "vcpu", URI)
    state.path.write_text(content)
    assert state.load() == {}
    state.save({"u": {"t": 2.0}})
    assert json.loads(state.path.read_text())["samples"] == {"u": {"t": 2.0}}


def test_not_utf8_and_huge_files_read_as_empty(tmp_path):
    state = StateFile(tmp_path, "vcpu", URI)
    state.path.write_bytes(b'{"version": 1, "uri": "\xff\xfe"}')
    assert state.load() == {}
    with state.path.open("wb") as handle:  # a valid file, but beyond the cap: not read at all
        handle.write(envelope('{"u": {"t": 1.0, "pad": "').encode())
        handle.write(b"a" * MAX_BYTES)
        handle.write(b'"}}}')
    assert state.load() == {}


def test_directory_at_the_state_path_is_a_clear_error(tmp_path):
    state = StateFile(tmp_path, "vcpu", URI)
    state.path.mkdir()  # cannot be replaced atomically: say so, naming it
    with pytest.raises(KvmError, match=rf"^{state.path} is a directory, not a state file: remove it"):
        state.load()
    with pytest.raises(KvmError, match=rf"^{state.path} is a directory"):
        state.save({})


def make_fifo(path):
    os.mkfifo(path)


def make_socket(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


@pytest.mark.parametrize("make", [make_fifo, make_socket], ids=["fifo", "socket"])
def test_fifo_or_socket_at_the_state_path_is_corrupt_and_replaced(tmp_path, make):
    state = StateFile(tmp_path, "vcpu", URI)
    make(state.path)
    started = time.monotonic()
    assert state.load() == {}  # never opened for reading: no wait for a writer
    assert time.monotonic() - started < 1
    state.save({"u": {"t": 2.0}})
    assert state.path.is_file() and not state.path.is_symlink()
    assert state.load() == {"u": {"t": 2.0}}


def test_symlink_at_the_state_path_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(envelope('{"u": {"t": 1.0, "x": 1}}'))
    state = StateFile(tmp_path / "state", "vcpu", URI)
    state.directory.mkdir()
    state.path.symlink_to(elsewhere)
    assert state.load() == {}  # what the link points to is not read
    state.save({"u": {"t": 2.0}})
    assert not state.path.is_symlink()
    assert json.loads(elsewhere.read_text())["samples"] == {"u": {"t": 1.0, "x": 1}}  # nor written


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    state = StateFile(tmp_path, "vcpu", URI)
    os.symlink(target, f"{state.path}.{os.getpid()}.tmp")
    state.save({"u": {"t": 2.0}})
    assert target.read_text() == "keep"
    assert state.load() == {"u": {"t": 2.0}}


def test_temporary_files_of_killed_runs_are_swept(tmp_path):
    state = StateFile(tmp_path, "vcpu", URI)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / f"{state.path.name}.{dead}.tmp"
    stale.write_text("{")
    alive = tmp_path / f"{state.path.name}.1.tmp"  # pid 1 is alive: a run still writing
    alive.write_text("{")
    other = tmp_path / "unrelated.123.tmp"
    other.write_text("")
    state.save({})
    assert not stale.exists()
    assert alive.exists() and other.exists()


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = StateFile(blocker / "sub", "vcpu", URI)
    with pytest.raises(KvmError, match=r"cannot create state directory .*--state-dir"):
        state.save({})


def test_lock_excludes_a_second_holder(tmp_path):
    state = StateFile(tmp_path, "vcpu", URI)
    other = StateFile(tmp_path, "vcpu", URI)
    # flock locks belong to the open file description: a second open conflicts, even in one process
    with state.locked(), pytest.raises(KvmError, match="is locked by another run"), other.locked(wait=0.1):
        pass
    with other.locked(wait=0.1):
        pass


@pytest.mark.parametrize("make", [make_fifo, make_socket, "symlink"], ids=["fifo", "socket", "symlink"])
def test_lock_path_that_is_no_file_is_replaced(tmp_path, make):
    state = StateFile(tmp_path, "vcpu", URI)
    target = tmp_path / "target"
    if make == "symlink":
        state.lock_path.symlink_to(target)  # dangling: following it would create the target
    else:
        make(state.lock_path)
    with state.locked(wait=0.5):
        assert state.lock_path.is_file() and not state.lock_path.is_symlink()
        with pytest.raises(KvmError, match="is locked by another run"), StateFile(tmp_path, "vcpu", URI).locked(0.1):
            pass
    assert not target.exists()


def test_directory_at_the_lock_path_is_a_clear_error(tmp_path):
    state = StateFile(tmp_path, "vcpu", URI)
    state.lock_path.mkdir()
    with pytest.raises(KvmError, match=rf"^{state.lock_path} is a directory, not a lock file"), state.locked(0.1):
        pass


def test_rates_and_counter_reset():
    before = {"t": 100.0, "cpu": 1_000, "io": 10}
    assert rates(before, {"t": 102.0, "cpu": 3_000, "io": 30}, ["cpu", "io"]) == {"cpu": 1000.0, "io": 10.0}
    assert rates(before, {"t": 102.0, "cpu": 500, "io": 30}, ["cpu", "io"]) is None  # restarted
    assert rates(before, {"t": 100.0, "cpu": 2_000}, ["cpu"]) is None  # no time elapsed
    assert rates(None, {"t": 1.0}, ["cpu"]) is None
    assert rates({"t": "x"}, {"t": 1.0}, ["cpu"]) is None
    assert rates({"t": float("nan")}, {"t": 1.0}, ["cpu"]) is None
    assert rates(before, {"t": 101.0, "cpu": 1_100}, ["cpu", "missing"]) == {"cpu": 100.0}
    assert rates({"t": 100.0}, {"t": 101.0, "cpu": 1}, ["cpu"]) is None  # a counter the baseline lacks
    assert rates({"t": 100.0, "cpu": True}, {"t": 101.0, "cpu": 1}, ["cpu"]) is None  # a bool is no counter


NOW = 1_800_000_000.0


@pytest.mark.parametrize("sample", [
    None, [], "x", 3, True, {}, {"x": 1},
    {"t": float("nan")}, {"t": float("inf")}, {"t": float("-inf")}, {"t": "1800000000"}, {"t": True},
    {"t": [NOW]}, {"t": {"t": NOW}}, {"t": None}, {"t": NOW + 3600}, {"t": NOW - 2 * 86400}, {"t": 10**400},
    {"t": NOW, "x": -1}, {"t": NOW, "x": "5"}, {"t": NOW, "x": False}, {"t": NOW, "x": [1]}, {"t": NOW, "x": 2**64},
    {"t": NOW, "x": float("nan")}, {"t": NOW, "x": float("inf")},
    {"t": NOW, "x": 1, "last": 3}, {"t": NOW, "x": 1, "last": {"seconds": 0, "rates": {"x": 1.0}}},
    {"t": NOW, "x": 1, "last": {"seconds": 60, "rates": {"x": float("nan")}}},
    {"t": NOW, "x": 1, "last": {"seconds": 60, "rates": {"x": -1.0}}},
    {"t": NOW, "x": 1, "last": {"seconds": 60, "rates": {"other": 1.0}}},
    {"t": NOW, "x": 1, "last": {"seconds": 60, "rates": [1.0]}},
], ids=repr)
def test_a_corrupt_sample_is_no_baseline(sample):
    assert valid_sample(sample, KEYS, NOW) is None


@pytest.mark.parametrize("sample", [
    {"t": NOW}, {"t": int(NOW) - 60, "x": 0}, {"t": NOW + 4, "x": 1.5}, {"t": NOW, "x": 2**64 - 1, "other": "y"},
    {"t": NOW, "x": 1, "last": {"seconds": 60.0, "rates": {"x": 2.5}}},
])
def test_a_sane_sample_is_a_baseline(sample):
    assert valid_sample(sample, KEYS, NOW) == sample


def test_compare_keeps_a_young_baseline_and_reports_its_rate():
    base = {"t": 100.0, "x": 1000, "last": {"seconds": 60.0, "rates": {"x": 7.0}}}
    rate, replace = compare(base, {"t": 100.01, "x": 1001}, KEYS, floor=5)
    assert (rate.per_second, rate.seconds, replace) == ({"x": 7.0}, 60.0, False)
    assert rate.over() == ("the previous run's rate over 60.0s: the last sample is only 0.01s old, "
                           "under --min-interval 5s")
    rate, replace = compare({"t": 100.0, "x": 1000}, {"t": 101.0, "x": 1001}, KEYS, floor=5)
    assert (rate.per_second, replace) == (None, False)
    assert rate.why == "the last sample is only 1.00s old, under --min-interval 5s"
    rate, replace = compare(base, {"t": 110.0, "x": 1100}, KEYS, floor=5)
    assert (rate, replace) == (Rate({"x": 10.0}, 10.0), True)
    assert rate.over() == "over 10.0s"
    rate, replace = compare(base, {"t": 101.0, "x": 10}, KEYS, floor=5)  # restarted within the floor
    assert (rate.per_second, rate.why, replace) == (None, "counters reset (domain restarted), new sample", True)
    rate, replace = compare(base, {"t": 99.0, "x": 1100}, KEYS, floor=5)
    assert (rate.per_second, rate.why, replace) == (None, "the clock went back, new sample", True)


def counter(start: float = 0.0):
    """A take() whose counter x grows by 1000 per second of wall-clock time."""
    def take():
        now = time.time()
        return {"d": {"t": now, "x": int((now - start) * 1000)}}
    return take


def test_exchange_keeps_other_subjects_and_drops_old_and_corrupt_ones(tmp_path):
    state = StateFile(tmp_path, "blk", URI)
    now = time.time()
    state.save({"old": {"t": now - 2 * 86400}, "other": {"t": now - 60}, "mine": {"t": now - 60, "x": 1}, "bad": 3,
                "nan": {"t": None}, "future": {"t": now + 3600}})
    current, found = exchange(state, lambda: {"mine": {"t": time.time(), "x": 2}}, None, KEYS)
    assert set(state.load()) == {"other", "mine"}
    assert current["mine"]["x"] == 2
    assert found["mine"].per_second["x"] == pytest.approx(1 / 60, rel=0.01)
    assert state.load()["mine"]["last"]["rates"] == found["mine"].per_second


def test_overlapping_runs_report_the_first_ones_rate_and_keep_its_baseline(tmp_path):
    state = StateFile(tmp_path, "vcpu", URI)
    start = time.time() - 10
    state.save({"d": {"t": start + 4, "x": 4000}})  # the last scheduled run, 6 s ago
    _, first = exchange(state, counter(start), None, KEYS, floor=5)
    assert first["d"].per_second["x"] == pytest.approx(1000, rel=0.01)
    assert first["d"].seconds == pytest.approx(6, abs=0.1)
    saved = state.load()["d"]
    _, second = exchange(state, counter(start), None, KEYS, floor=5)  # moments later
    assert second["d"].per_second == first["d"].per_second
    assert second["d"].seconds == first["d"].seconds
    assert second["d"].note.startswith("the previous run's rate over 6.0s: the last sample is only 0.0")
    assert state.load()["d"] == saved  # the baseline the next full-interval run needs


def test_concurrent_runs_cannot_interleave_read_sample_save(tmp_path):
    """Two runs at once: the second waits for the first one's sample and reports its rate."""
    start = time.time() - 60
    StateFile(tmp_path, "vcpu", URI).save({"d": {"t": start, "x": 0}})
    results = {}
    inside = threading.Event()

    def run(name, slow):
        take = counter(start)

        def slow_take():
            inside.set()
            time.sleep(0.3 if slow else 0)
            return take()

        results[name] = exchange(StateFile(tmp_path, "vcpu", URI), slow_take, None, KEYS, floor=5)[1]["d"]

    first = threading.Thread(target=run, args=("first", True))
    first.start()
    inside.wait(5)
    run("second", False)
    first.join()
    assert results["first"].note == ""
    assert results["first"].per_second["x"] == pytest.approx(1000, rel=0.01)
    assert results["second"].note.startswith("the previous run's rate over 60.")
    assert results["second"].per_second == results["first"].per_second


def test_exchange_with_interval_samples_twice(tmp_path):
    state = StateFile(tmp_path, "blk", URI)
    calls = []

    def take():
        calls.append(1)
        return {"d": {"t": time.time(), "x": len(calls)}}

    current, found = exchange(state, take, 0.05, KEYS)
    assert current["d"]["x"] == 2
    assert found["d"].per_second["x"] == pytest.approx(1 / found["d"].seconds)
    assert found["d"].seconds >= 0.05
    assert state.load()["d"] == {"t": current["d"]["t"], "x": 2}  # a rate over less than the floor is not kept
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_exchange_with_interval_keeps_a_young_baseline(tmp_path):
    state = StateFile(tmp_path, "blk", URI)
    young = {"t": time.time(), "x": 0}
    state.save({"d": young})
    exchange(state, counter(time.time()), 0.05, KEYS, floor=5)
    assert state.load()["d"] == young
