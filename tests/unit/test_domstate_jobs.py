"""check-kvm-domstate on domains migrating, being saved or dumped: the wording and the verdict
from jobStats() dicts (pure), and read_job's answers to the ways a job read ends.

The save dicts are recorded from real QEMU (tests/data/domstate-qemu-save.json, see its
'recorded' note); the migration and dump dicts are made here with the keys and values libvirt's
jobStats() gives (libvirt-python's VIR_DOMAIN_JOB_* names), since this host has one libvirtd.
"""

from __future__ import annotations

import json
from typing import Any

import libvirt
import pytest

from sensu_kvm import states
from sensu_kvm.checks.domstate import ENDED, LATE_JOB, Observed, evaluate, job_words, judge_domain, parser, read_job
from sensu_kvm.errors import CallTimeout
from sensu_kvm.output import Status
from tests.conftest import DATA

GIB = 1 << 30
RECORDED = json.loads((DATA / "domstate-qemu-save.json").read_text())


def judged(state: int, reason: int, job: dict[str, Any] | None = None, note: str = "") -> tuple[Status, str]:
    finding = judge_domain(Observed("kvm1", state, reason, job=job, job_note=note), named=False, expect_running=False)
    return finding.status, finding.text


def migration(operation: int = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, **figures: int) -> dict[str, int]:
    """A migration job as jobStats() gives it: 8 GiB of memory, 45 % of it sent."""
    job = {libvirt.VIR_DOMAIN_JOB_OPERATION: operation, "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
           libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED: 182_400, libvirt.VIR_DOMAIN_JOB_DATA_TOTAL: 8 * GIB,
           libvirt.VIR_DOMAIN_JOB_DATA_REMAINING: int(4.4 * GIB), libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED: int(3.7 * GIB)}
    return {**job, **figures}


def test_a_save_held_mid_way_on_real_qemu():
    held = RECORDED["held"]
    assert held["state"] == [states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE]
    assert judged(*held["state"], held["job"]) == (Status.WARNING, "kvm1 saving (56 % done, 55.5 MiB remaining)")


def test_a_save_whose_memory_is_all_sent_while_libvirt_writes_the_file():
    done = RECORDED["completed"]
    assert done["job"]["type"] == libvirt.VIR_DOMAIN_JOB_COMPLETED
    assert judged(*done["state"], done["job"]) == (Status.WARNING, "kvm1 saving (100 % done, 0 B remaining)")


@pytest.mark.parametrize(("state", "reason", "job", "status", "text"), [
    (states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, migration(), Status.WARNING,
     "kvm1 migrating (outgoing, 45 % done, 4.4 GiB remaining, 3m 2s elapsed)"),
    (states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, migration(libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN),
     Status.WARNING, "kvm1 migrating (incoming, 45 % done, 4.4 GiB remaining, 3m 2s elapsed)"),
    (states.RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY, migration(), Status.WARNING,
     "kvm1 migrating (outgoing, post-copy, 45 % done, 4.4 GiB remaining, 3m 2s elapsed)"),
    (states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY, migration(), Status.WARNING,
     "kvm1 migrating (outgoing, post-copy, 45 % done, 4.4 GiB remaining, 3m 2s elapsed)"),
    (states.RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED, migration(), Status.CRITICAL,
     "kvm1 migration failed in post-copy (outgoing, 45 % done, 4.4 GiB remaining, 3m 2s elapsed)"),
    (states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED, None, Status.CRITICAL,
     "kvm1 migration failed in post-copy"),
    (states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_DUMP, migration(libvirt.VIR_DOMAIN_JOB_OPERATION_DUMP), Status.WARNING,
     "kvm1 dumping (45 % done, 4.4 GiB remaining, 3m 2s elapsed)"),
])
def test_migrations_and_dumps(state, reason, job, status, text):
    assert judged(state, reason, job) == (status, text)


def test_a_job_with_memory_figures_only_and_one_without_a_total():
    # a memory-only dump (measured here: no data_* keys; the domain reads paused (unknown), so it is not read)
    memory = {"type": 2, "operation": 8, "memory_total": 134479872, "memory_remaining": 132386816, "time_elapsed": 319}
    assert job_words(memory) == ["1 % done", "126.3 MiB remaining"]
    assert job_words({"type": 2, "data_remaining": 3 * GIB}) == ["3.0 GiB remaining"]
    assert job_words({"type": 2, "data_total": 0, "data_remaining": 0}) == ["0 B remaining"]
    assert job_words({"type": 2, "data_total": 100, "data_remaining": 150}) == ["0 % done", "150 B remaining"]


@pytest.mark.parametrize(("note", "text"), [
    (LATE_JOB, "kvm1 saving (job details not read in time)"),
    ("job details unreadable: internal error", "kvm1 saving (job details unreadable: internal error)"),
    (ENDED, "kvm1 saving (the job ended meanwhile)"),
])
def test_a_domain_without_job_details_still_reads_saving(note, text):
    assert judged(states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE, note=note) == (Status.WARNING, text)


def test_a_job_that_ended_is_judged_by_the_state_read_after_it():
    # read_job gave the state the domain is in now: a save that finished, shut off (saved)
    assert judged(states.SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED, note=ENDED) == (Status.OK, "kvm1 shut off (saved)")


def test_perfdata_counts_the_domains_migrating_and_saving():
    observed = [Observed("a", states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, job=migration()),
                Observed("b", states.RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY),
                Observed("c", states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE, job_note=LATE_JOB),
                Observed("d", states.PAUSED, libvirt.VIR_DOMAIN_PAUSED_DUMP),
                Observed("e", states.RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)]
    report = evaluate(observed, [], parser().parse_args([]))
    assert report.status is Status.WARNING
    assert report.summary.startswith("4 of 5 domains not OK: ")
    rendered = report.render()
    assert "migrating=2;;;0;5 saving=2;;;0;5" in rendered
    assert "running=2;;;0;5 blocked=0;;;0;5 paused=3;;;0;5" in rendered


class Dom:
    """A domain whose jobStats() and state() answer as told (an exception when the answer is one)."""

    def __init__(self, job: Any, state: Any = (states.SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED)) -> None:
        self.job, self.now = job, state

    @staticmethod
    def _answer(answer: Any) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    def jobStats(self) -> Any:
        return self._answer(self.job)

    def state(self) -> Any:
        return list(self._answer(self.now))


def error(code: int, message: str) -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 2, None, None, None, -1, -1)
    return err


def test_read_job_answers():
    job = migration()
    assert read_job(Dom(job)) == job
    # the save finished between the state read and the job read: not an error, the state now
    assert read_job(Dom(error(libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running"))) == (5, 5)
    assert read_job(Dom({"type": libvirt.VIR_DOMAIN_JOB_NONE})) == (5, 5)
    assert read_job(Dom({"type": libvirt.VIR_DOMAIN_JOB_NONE}, (states.RUNNING, 7))) == (1, 7)  # save canceled
    # a transient domain that migrated away: gone before its state could be read again
    gone = error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")
    assert read_job(Dom(gone, gone)) == ENDED
    assert read_job(Dom(error(libvirt.VIR_ERR_INTERNAL_ERROR, "monitor   closed"))) == \
        "job details unreadable: monitor closed"
    assert read_job(Dom(CallTimeout("virDomainGetJobStats on kvm1 did not answer within 10s"))) == \
        "job details unreadable: virDomainGetJobStats on kvm1 did not answer within 10s"
