"""The pieces of kvm-backup's undo path that need no hypervisor: signals kept for the end of an undo,
stale journal temporaries, and bandwidth values refused before anything is done."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from sensu_kvm.backup import journal, signals
from sensu_kvm.errors import Interrupted
from tests.conftest import refuses


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_in_a_shielded_block_waits_for_its_end(sig):
    steps = []
    with (pytest.raises(Interrupted, match=f"interrupted by {sig.name}"), signals.interruptible(),
          signals.shielded()):
        os.kill(os.getpid(), sig)
        steps.append("after the signal")
        assert signals.hurry()  # a commit job would drop its limit now
        steps.append("the undo's end")
    assert steps == ["after the signal", "the undo's end"]
    assert not signals.hurry()


def test_a_shield_on_a_failure_path_drops_the_signal_and_outside_one_it_raises_at_once():
    with signals.interruptible():
        with signals.shielded(raise_pending=False):
            os.kill(os.getpid(), signal.SIGTERM)
        assert not signals.hurry()
    with pytest.raises(Interrupted), signals.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # not reached: the handler raises


def test_stale_journal_temporaries_of_dead_processes_are_removed(tmp_path: Path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"u1.journal.json.{gone.pid}.tmp"
    mine = tmp_path / f"u2.journal.json.{os.getpid()}.tmp"
    alive = tmp_path / f"u3.journal.json.{os.getppid()}.tmp"
    other = tmp_path / f"notes.{gone.pid}.tmp"
    for path in (dead, mine, alive, other):
        path.write_text("{")
    journal.remove_stale_temps(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, alive, other))
    journal.remove_stale_temps(str(tmp_path / "missing"))  # no folder: nothing to do


@pytest.mark.parametrize("value", ["1e300", "inf", "nan", "0", "-1", "1048577", "fast"])
@pytest.mark.parametrize("option", ["--commit-bwlimit", "--bwlimit"])
def test_bandwidths_that_cannot_work_are_refused_before_anything_is_done(tmp_path: Path, option, value):
    line = refuses("kvm-backup", 2, "create", "web1", "--dest", str(tmp_path), "--state-dir", str(tmp_path / "s"),
                   option, value, "-u", "test:///default")
    assert option in line and value in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["inf", "nan", "0", "86401"])
def test_a_shutdown_timeout_that_cannot_work_is_refused(tmp_path: Path, value):
    line = refuses("kvm-backup", 2, "create", "web1", "--mode", "stop", "--dest", str(tmp_path), "--shutdown-timeout",
                   value, "-u", "test:///default")
    assert "--shutdown-timeout" in line and value in line
    assert list(tmp_path.iterdir()) == []
