"""check-kvm-domstate: is every KVM domain in the state it should be in?"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sensu_kvm import states, virt
from sensu_kvm.contexts import Context
from sensu_kvm.domains import read
from sensu_kvm.durations import format_age
from sensu_kvm.errors import CallTimeout
from sensu_kvm.names import entity_name, visible
from sensu_kvm.output import Finding, Report, Status, summarise, worst
from sensu_kvm.plugin import CheckParser, build_parser, run_check
from sensu_kvm.sizes import size_text

NAME = "CheckKvmDomstate"

EXAMPLES = """\
  check-kvm-domstate                          every domain on qemu:///system
  check-kvm-domstate -d kvm1                  one domain (CRITICAL when it is not running or missing)
  check-kvm-domstate --match '^web' --exclude test --expect-running
  check-kvm-domstate -c 2: -u qemu:///system  CRITICAL when fewer than 2 domains run
  check-kvm-domstate -u test:///default -v    libvirt's embedded test hypervisor, every domain
  check-kvm-domstate -d kvm1                  while kvm1 is being saved (virsh save):
      CheckKvmDomstate WARNING: kvm1 saving (62 % done, 48.3 MiB remaining, 12s elapsed)
  check-kvm-domstate -v                       a host whose guest is in the switchover of a migration:
      WARNING: kvm1 migrating (outgoing, 97 % done, 61.0 MiB remaining, 2m 5s elapsed)
  check-kvm-domstate --per-domain sensu --per-domain-occurrences 2 --per-domain-refresh 1800
                                              also one result per guest to the Sensu client socket"""

DESCRIPTION = """\
Judge the state of KVM domains. Running is OK. Paused is CRITICAL when an I/O error paused it
(each failing disk is named), else WARNING with the reason. Crashed is CRITICAL; shutting down and
pmsuspended are WARNING. Shut off is CRITICAL when it crashed or failed, when the domain was named
with -d, is marked autostart, or --expect-running is given; otherwise OK with the reason.

A domain whose state reason says it is migrating (paused for a migration, or in post-copy), being
saved or dumped is WARNING and reads "kvm1 migrating (outgoing, 45 % done, 2.1 GiB remaining, 3m 2s
elapsed)", "saving (...)" or "dumping (...)": the job details are read for these domains only (one
call each, within the time budget; "job details not read in time" when it ran out). A post-copy
migration that failed is CRITICAL ("migration failed in post-copy"). Not seen: a pre-copy live
migration before its switchover, a live or memory-only core dump (libvirt leaves the state reason
as it was, "running (booted)" say, or "paused (unknown)"), since reading every domain's job would
cost one call per domain.

-w/-c judge the number of running domains. Perfdata: the number of domains in each state, and of
those migrating and those being saved or dumped ("migrating", "saving")."""


class Observed(NamedTuple):
    """What was read about one domain."""

    name: str
    state: int | None
    reason: int = 0
    autostart: bool = False
    disk_errors: Mapping[str, int] | None = None
    error: str | None = None
    text: str = ""  # the name in human text (names.text); empty: made from the name alone
    entity: str = ""  # the Sensu entity name, for --per-domain (names.entity)
    job: Mapping[str, Any] | None = None  # jobStats() of a domain migrating, being saved or dumped
    job_note: str = ""  # why there are no job details: not read in time, unreadable, ended meanwhile

    @property
    def shown(self) -> str:
        return self.text or visible(self.name)


def judge_domain(seen: Observed, *, named: bool, expect_running: bool) -> Finding:
    """The verdict on one domain (pure)."""
    if seen.state is None:
        return Finding(seen.name, Status.UNKNOWN, f"{seen.shown}: {seen.error or 'state unreadable'}")
    state, reason = seen.state, seen.reason
    doing = states.job_of(state, reason)
    if doing is not None:
        return judge_job(seen, doing)
    text = f"{seen.shown} {states.state_name(state)} ({states.reason_name(state, reason)})"
    if state in (states.RUNNING, states.BLOCKED):
        return Finding(seen.name, Status.OK, text)
    if state == states.PAUSED:
        if reason != states.PAUSED_IOERROR:
            return Finding(seen.name, Status.WARNING, text)
        if seen.disk_errors:
            errors = ", ".join(f"{disk}: {states.disk_error_name(code)}" for disk, code in sorted(seen.disk_errors.items()))
            text += f": {errors}"
        elif seen.error:
            text += f": disk errors unreadable: {seen.error}"
        return Finding(seen.name, Status.CRITICAL, text)
    if state == states.CRASHED:
        return Finding(seen.name, Status.CRITICAL, text)
    if state in (states.SHUTDOWN, states.PMSUSPENDED):
        return Finding(seen.name, Status.WARNING, text)
    if state == states.SHUTOFF:
        if reason in (states.SHUTOFF_CRASHED, states.SHUTOFF_FAILED):
            return Finding(seen.name, Status.CRITICAL, text)
        why = [w for w, on in (("autostart is set", seen.autostart), ("named with -d", named),
                               ("expected to run", expect_running)) if on]
        if why:
            return Finding(seen.name, Status.CRITICAL, f"{text}, {why[0]}")
        return Finding(seen.name, Status.OK, text)
    return Finding(seen.name, Status.UNKNOWN, text)


def job_words(job: Mapping[str, Any]) -> list[str]:
    """A job's direction and progress in words (pure): 'outgoing', '45 % done', '2.1 GiB
    remaining', '3m 2s elapsed' (from 1 s on). The done share is that of the data (memory and disks) libvirt
    counts in the job's total and has still to send, as `virsh domjobinfo` shows them; a job
    without data figures (a memory-only dump) has its memory figures."""
    words = []
    direction = states.JOB_DIRECTIONS.get(job.get("operation", -1))
    if direction:
        words.append(direction)
    total, remaining = job.get("data_total"), job.get("data_remaining")
    if total is None and remaining is None:
        total, remaining = job.get("memory_total"), job.get("memory_remaining")
    if total and remaining is not None:
        words.append(f"{int(max(0, min(100, (total - remaining) * 100 / total)))} % done")
    if remaining is not None:
        words.append(f"{size_text(remaining)} remaining")
    if job.get("time_elapsed", 0) >= 1000:  # milliseconds
        words.append(f"{format_age(job['time_elapsed'] / 1000)} elapsed")
    return words


def judge_job(seen: Observed, doing: str) -> Finding:
    """The verdict on a domain whose state reason says it is migrating, being saved or dumped
    (pure): WARNING, CRITICAL for a post-copy migration that failed, with the job's progress."""
    key = (seen.state, seen.reason)
    words = job_words(seen.job) if seen.job else []
    if key in states.POSTCOPY:
        words.insert(1 if words and words[0] in states.JOB_DIRECTIONS.values() else 0, "post-copy")
    if seen.job_note:
        words.append(seen.job_note)
    failed = key in states.POSTCOPY_FAILED
    head = "migration failed in post-copy" if failed else doing
    text = f"{seen.shown} {head}" + (f" ({', '.join(words)})" if words else "")
    return Finding(seen.name, Status.CRITICAL if failed else Status.WARNING, text)


def evaluate(observed: Sequence[Observed], missing: Sequence[str], options: argparse.Namespace) -> Report:
    """All verdicts, the summary and the perfdata (pure)."""
    findings = [judge_domain(o, named=o.name in options.domain, expect_running=options.expect_running)._replace(
        entity=o.entity) for o in observed]
    findings += [Finding(name, Status.CRITICAL, f"{visible(name)} not found", entity_name(name)) for name in missing]
    counts = Counter(o.state for o in observed if o.state is not None)
    total = len(observed)
    measured = [Context(label, minimum=0, maximum=total)(counts[state]) for state, label in states.STATE_LABELS.items()]
    running = measured[states.RUNNING] = Context(states.STATE_LABELS[states.RUNNING], "", options.warning,
                                                 options.critical, 0, total)(counts[states.RUNNING])
    measured.append(Context("unreadable", minimum=0, maximum=total)(sum(o.state is None for o in observed)))
    measured.append(Context("missing", minimum=0)(len(missing)))
    doing = Counter(states.job_of(o.state, o.reason) for o in observed if o.state is not None)
    measured.append(Context("migrating", minimum=0, maximum=total)(doing[states.MIGRATING]))
    measured.append(Context("saving", minimum=0, maximum=total)(doing[states.SAVING] + doing[states.DUMPING]))

    count_status = running.status
    status, problems, details = summarise(findings, "domain", options.verbose)
    if len(findings) == 1 and not (options.warning or options.critical):
        summary = findings[0].text
    elif problems:
        summary = problems
    else:
        tally = ", ".join(f"{counts[s]} {states.state_name(s)}" for s in states.STATE_NAMES if counts[s])
        summary = f"{total} domain{'s' if total != 1 else ''}: {tally}" if tally else "no domains defined"
    if count_status is not Status.OK:
        limit = options.critical if count_status is Status.CRITICAL else options.warning
        summary = f"{running.value} running, outside {limit}; {summary}"
        status = worst([status, count_status])
    return Report(status, summary, [m.perf() for m in measured], details, findings=findings)


# jobStats() of a domain that stopped (a save that finished) or left (a migrated transient domain)
JOB_GONE = (virt.VIR_ERR_OPERATION_INVALID, virt.VIR_ERR_NO_DOMAIN)


def read_job(dom: Any) -> dict[str, Any] | tuple[int, int] | str:
    """The job details of a domain whose state reason says a migration, a save or a dump is under
    way: jobStats(), or, when the job ended between the state read and this one (a save that
    finished: the domain is shut off, or gone), the state it is in now, or why neither could be
    read (a note for the status line). Never raises: it runs in virt.in_parallel."""
    try:
        job = dict(dom.jobStats())
    except virt.libvirtError as err:
        if err.get_error_code() not in JOB_GONE:
            return f"job details unreadable: {virt.reason(err)}"
        job = {}
    except CallTimeout as err:
        return f"job details unreadable: {err}"
    if job.get("type", states.JOB_NONE) != states.JOB_NONE:
        return job
    try:
        state, reason = dom.state()
    except (virt.libvirtError, CallTimeout):
        return ENDED
    return int(state), int(reason)


ENDED = "the job ended meanwhile"
LATE_JOB = "job details not read in time"


def gather(options: argparse.Namespace) -> tuple[list[Observed], list[str]]:
    """Read the states: one bulk call, then autostart, disk errors and job details only where
    they matter.

    Returns the observations and the names given with -d that do not exist.
    """
    conn = virt.connect(options.uri)
    try:
        chosen, missing = read(conn, ["state"], options)
        autostart: set[str] = set()
        if any(r.stats.get("state.state") == states.SHUTOFF for r in chosen):
            autostart = virt.autostart_uuids(conn)
        stopped = [r for r in chosen if (r.stats.get("state.state"), r.stats.get("state.reason", 0))
                   == (states.PAUSED, states.PAUSED_IOERROR)]

        def disk_errors(record: virt.DomainRecord) -> dict[str, int] | str:
            try:
                return dict(record.dom.diskErrors())
            except virt.libvirtError as err:
                return f"{record.text}: disk errors: {virt.reason(err)}"

        phase = f"reading disk errors of {len(stopped)} domains paused by an I/O error"
        found = dict(zip((r.name for r in stopped), virt.in_parallel(disk_errors, stopped, virt.concurrency(), phase)))
        busy = [r for r in chosen if states.job_of(r.stats.get("state.state", -1), r.stats.get("state.reason", 0))]
        jobs = dict(zip((r.name for r in busy), virt.in_parallel(
            lambda r: read_job(r.dom), busy, virt.concurrency(),
            f"reading the jobs of {len(busy)} domains migrating or being saved")))
        observed = []
        for record in chosen:
            errors: dict[str, int] | None = None
            error = record.error
            answer = found.get(record.name)
            if answer is virt.LATE:
                error = f"{record.text}: disk errors: {virt.late_error(phase)}"
            elif isinstance(answer, str):
                error = answer
            elif answer is not None:
                errors = answer
            seen = Observed(record.name, record.stats.get("state.state"), record.stats.get("state.reason", 0),
                            record.uuid in autostart, errors, error, record.text, record.entity)
            job = jobs.get(record.name)
            if job is virt.LATE:
                seen = seen._replace(job_note=LATE_JOB)
            elif isinstance(job, str):
                seen = seen._replace(job_note=job)
            elif isinstance(job, tuple):  # the job ended: judged by the state the domain is in now
                seen = seen._replace(state=job[0], reason=job[1], job_note=ENDED)
            elif job is not None:
                seen = seen._replace(job=job)
            observed.append(seen)
        return observed, missing
    finally:
        conn.close()


def check(options: argparse.Namespace) -> Report:
    observed, missing = gather(options)
    if not observed and not missing and (options.match or options.exclude):
        return Report(Status.UNKNOWN, "no domain matches --match/--exclude")
    return evaluate(observed, missing, options)


def parser() -> CheckParser:
    p = build_parser("check-kvm-domstate", DESCRIPTION, EXAMPLES, thresholds="the number of running domains")
    p.add_argument("--expect-running", action="store_true",
                   help="every selected domain should run: shut off is CRITICAL")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
