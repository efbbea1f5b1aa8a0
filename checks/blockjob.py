"""check-kvm-blockjob: block jobs on the disks of running domains (stalled, too old, left by
kvm-backup) and backing chains that grow too deep."""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from sensu_kvm import blockjobs, domains, virt
from sensu_kvm.argtypes import duration_range, state_dir_arg
from sensu_kvm.backup import catalog
from sensu_kvm.blockjobs import Found, Job
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, is_active, judge_each, report
from sensu_kvm.durations import format_age
from sensu_kvm.output import Finding, Report, Status, worst
from sensu_kvm.plugin import DEFAULT_STATE_DIR, CheckParser, add_thresholds, build_parser, run_check
from sensu_kvm.statefile import CLOCK_SKEW, KEEP_SECONDS, MIN_INTERVAL, StateFile

NAME = "CheckKvmBlockjob"
CHECK = "blockjob"  # the state file's name
BACKING = 0x40000000  # VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING: every image of each disk's chain

EXAMPLES = """\
  check-kvm-blockjob                                  jobs stalled or older than 6h (WARNING) / 24h (CRITICAL),
                                                      backing chains deeper than 3 (WARNING) / 8 (CRITICAL)
  check-kvm-blockjob --age-warning 30m --age-critical 2h   a host whose jobs are backups' short commits
  check-kvm-blockjob --chain-warning 1 --chain-critical 4  a host that keeps no snapshots
  check-kvm-blockjob -d web1 -v                       every job and disk of web1, OK or not
  check-kvm-blockjob --backup-state-dir /srv/kvm-backup/state   kvm-backup run with that --state-dir"""

DESCRIPTION = """\
Block jobs (copy, commit, active commit, pull, backup) on every disk of each running domain, on
a read-only connection, each named with its domain, disk, type and progress:
  - a job that made no progress since the previous run is WARNING ("no progress since 5m");
  - a job older than --age-warning/--age-critical (durations; default 6h, 24h). Its age is the
    time since this check first saw it (kept in --state-dir), not since it started: libvirt does
    not say when a job began, so a job found on the first run is 0s old;
  - a copy or active commit that has reached its end and waits for a pivot ("ready, waiting for
    pivot") is not stalled, but its age is judged: one left behind (say by a failed backup) keeps
    the guest on an overlay for good.
libvirt reports no error state for a block job: a job that fails ends (libvirt sends an event) and
is gone from the next run; what it leaves is the overlay, seen in the chain depth and, for
kvm-backup, in its journal.
A job on a disk that a kvm-backup journal (in --backup-state-dir) names as its overlay is marked
"started by kvm-backup"; a journal of a kvm-backup run that is gone (its process no longer runs)
whose domain still runs on the overlay is WARNING: `kvm-backup recover DOMAIN` is the fix.
Each disk's backing chain depth (the images below the one the guest writes, 0 for a plain image)
is judged against --chain-warning/--chain-critical (default: WARNING above 3, CRITICAL above 8);
QEMU gives it in the bulk statistics, other drivers in the domain XML's <backingStore> nesting.
Perfdata: per job <domain>_blockjob_progress_<disk> (%) and <domain>_blockjob_age_<disk> (s), per
disk <domain>_chain_depth_<disk>, and blockjobs, the number of jobs. The jobs are read with one
blockJobInfo call per disk (libvirt has no bulk call), on concurrent calls within -t; a driver
that has no block jobs (libvirt's test driver) is asked once."""

# journal keys of kvm-backup (sensu_kvm.backup.create) that this check reads
JOURNAL_KEYS = ("uuid", "domain", "pid", "overlays")


class Seen(NamedTuple):
    """What the state file keeps of one job between runs (keyed UUID/disk/type)."""

    t: float  # when it was last looked at
    first: float  # when this check first saw it
    cur: int
    end: int
    moved: float  # when its progress last changed (or it was first seen)
    stalled: bool  # whether the run at ``t`` found it stalled


def seen_from(value: object, now: float) -> Seen | None:
    """A stored job, when it is sane: a dict of finite numbers, first <= moved <= t, not ahead of now."""
    if not isinstance(value, dict):
        return None
    numbers = []
    for key in ("t", "first", "cur", "end", "moved"):
        item = value.get(key)
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            return None
        numbers.append(float(item))
    t, first, cur, end, moved = numbers
    if not (first <= moved <= t <= now + CLOCK_SKEW) or cur < 0 or end < 0 or cur >= 2**64 or end >= 2**64:
        return None
    return Seen(t, first, int(cur), int(end), moved, value.get("stalled") is True)


def follow(before: Seen | None, job: Job, now: float, floor: float) -> tuple[Seen, bool]:
    """This run's record of a job from the stored one, and whether the job is stalled.

    A job whose progress went back or whose end changed is a new job (the old one ended between
    runs). Within ``floor`` seconds of the stored look (an overlapping run, a retry) the stored
    record stays and so does its verdict: a job does not move in a few milliseconds.
    """
    if before is None or job.cur < before.cur or job.end != before.end:
        return Seen(now, now, job.cur, job.end, now, False), False
    if now - before.t < floor:
        return before, before.stalled
    moved = now if job.cur != before.cur else before.moved
    stalled = job.cur == before.cur and not job.ready
    return Seen(now, before.first, job.cur, job.end, moved, stalled), stalled


def key(uuid: str, job: Job) -> str:
    return f"{uuid}/{job.disk}/{job.type}"


def contexts(options: argparse.Namespace) -> tuple[Context, Context, Context]:
    return (Context("blockjob_progress", "%", None, None, 0, 100, digits=1),
            Context("blockjob_age", "s", options.age_warning, options.age_critical, 0, digits=0),
            Context("chain_depth", "", options.chain_warning, options.chain_critical, 0))


def alive(pid: object) -> bool:
    """Whether a process with this pid runs (another user's counts: EPERM)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def backup_overlays(entries: list[dict[str, Any]]) -> dict[str, tuple[dict[str, str], bool]]:
    """Per domain UUID: {disk: overlay path} of its kvm-backup journal, and whether that run still runs."""
    found: dict[str, tuple[dict[str, str], bool]] = {}
    for data in entries:
        overlays = data.get("overlays")
        if not isinstance(overlays, dict):
            continue
        paths = {str(disk): str(pair.get("overlay", "")) for disk, pair in overlays.items()
                 if isinstance(pair, dict)}
        if paths:
            found[str(data["uuid"])] = (paths, alive(data.get("pid")))
    return found


def judge_domain(record: virt.DomainRecord, found: Found, looks: Mapping[str, tuple[Seen, bool]],
                 backups: Mapping[str, tuple[dict[str, str], bool]], now: float,
                 of: tuple[Context, Context, Context]) -> Verdict:
    """The verdict on one running domain's disks and jobs (pure): ``looks`` holds each job's
    record and stall, keyed as ``key``; ``backups`` the kvm-backup journals' overlays by UUID."""
    progress_of, age_of, depth_of = of
    shown = record.text
    if found.error:
        return Verdict(Finding(record.name, Status.UNKNOWN, f"{shown}: {found.error}"))
    overlays, running = backups.get(record.uuid, ({}, False))
    statuses, parts, measured = [Status.OK], [], []
    jobs = {j.disk: j for j in found.jobs}
    for disk in found.disks:
        job = jobs.get(disk.name)
        if job is not None:
            seen, stalled = looks[key(record.uuid, job)]
            progress = progress_of(job.percent, record.label, disk.name)
            age = age_of(max(0.0, now - seen.first), record.label, disk.name)
            measured += [progress, age]
            notes = ["ready, waiting for pivot"] if job.ready else []
            if seen.first < now:
                notes.append(f"seen for {format_age(now - seen.first)}")
            status = age.status
            if stalled:
                status = worst([status, Status.WARNING])
                notes.append(f"no progress since {format_age(now - seen.moved)}")
            if disk.name in overlays:
                notes.append("started by kvm-backup" + ("" if running else
                                                         f"; run kvm-backup recover {record.name} if it stays"))
            statuses.append(status)
            text = f"{disk.name} {job.word} {math.floor(job.percent):.0f} %"
            parts.append(text + (f" ({', '.join(notes)})" if notes else ""))
        elif disk.name in overlays and not running and disk.path == overlays[disk.name]:
            statuses.append(Status.WARNING)
            parts.append(f"{disk.name} still on kvm-backup's overlay {disk.path} from a run that is gone "
                         f"(run kvm-backup recover {record.name})")
        if disk.depth is not None:
            depth = depth_of(disk.depth, record.label, disk.name)
            measured.append(depth)
            if depth.status is not Status.OK:
                statuses.append(depth.status)
                parts.append(f"{disk.name} backing chain {disk.depth} image{'s' if disk.depth != 1 else ''} deep")
    if not parts:
        deepest = max((d.depth for d in found.disks if d.depth is not None), default=None)
        text = f"{shown}: no block jobs" + (f", backing chains at most {deepest} deep" if deepest else "")
        return Verdict(Finding(record.name, Status.OK, text), measured)
    return Verdict(Finding(record.name, worst(statuses), f"{shown}: " + "; ".join(parts)), measured)


def exchange(state: StateFile, read: Mapping[str, tuple[virt.DomainRecord, Found]], now: float,
             floor: float) -> dict[str, tuple[Seen, bool]]:
    """Each job's record and stall from the stored ones, saved under the lock: the jobs of the
    domains read replace theirs (a job gone is forgotten), the other domains' stay (another run's
    -d), for a day after they were last looked at."""
    with state.locked():
        stored = state.load()
        kept: dict[str, Any] = {}
        for subject, value in stored.items():
            seen = seen_from(value, now)
            if seen is not None and now - seen.t < KEEP_SECONDS and subject.split("/", 1)[0] not in read:
                kept[subject] = value
        looks: dict[str, tuple[Seen, bool]] = {}
        for uuid, (_record, found) in read.items():
            for job in found.jobs:
                subject = key(uuid, job)
                seen, stalled = follow(seen_from(stored.get(subject), now), job, now, floor)
                looks[subject] = (seen, stalled)
                kept[subject] = {**seen._asdict(), "stalled": stalled}
        state.save(kept)
    return looks


def check(options: argparse.Namespace) -> Report:
    conn = virt.connect(options.uri)
    try:
        chosen, missing = domains.read(conn, ["state", "block"], options, fill=False,
                                       extra=BACKING)
        running = [r for r in chosen if not r.error and is_active(r)]
        answers, supported, phase = blockjobs.read_all(running, chain=True)
    finally:
        conn.close()
    now = time.time()
    read: dict[str, tuple[virt.DomainRecord, Found]] = {}
    for record, answer in zip(running, answers):
        if answer is virt.LATE:
            record.error = virt.late_error(phase)
        else:
            read[record.uuid] = (record, answer)
    state = StateFile(options.state_dir, CHECK, virt.resolve_uri(options.uri))
    looks = exchange(state, read, now, MIN_INTERVAL)
    backups = backup_overlays(catalog_journals(options.backup_state_dir))
    of = contexts(options)
    verdicts = judge_each(chosen, lambda r: judge_domain(r, read[r.uuid][1], looks, backups, now, of))
    jobs = sum(len(found.jobs) for _record, found in read.values())
    deepest = max((m for v in verdicts for m in v.of("chain_depth")), key=lambda m: m.value, default=None)
    summary = (f"{jobs} block job{'s' if jobs != 1 else ''}, none stalled or too old" if jobs
               else "no block jobs" + ("" if supported else " (the driver has none: blockJobInfo unsupported)"))
    if deepest is not None and deepest.value:
        summary += f"; deepest backing chain {deepest.value:g} ({deepest.domain} {deepest.device})"
    count = Context("blockjobs", minimum=0)(jobs).perf()
    return report(verdicts, missing, options, summary, [count])


def catalog_journals(folder: str) -> list[dict[str, Any]]:
    """kvm-backup's journals in ``folder`` (none when it cannot be read: the sensu user may not)."""
    from sensu_kvm.backup.journal import journals  # noqa: PLC0415

    return [j for j in journals(folder) if isinstance(j.get("uuid"), str)]


def parser() -> CheckParser:
    p = build_parser("check-kvm-blockjob", DESCRIPTION, EXAMPLES, state_dir=False)
    p.add_argument("--state-dir", type=state_dir_arg, default=DEFAULT_STATE_DIR, metavar="DIR",
                   help="where each job's progress and the time it was first seen are kept between runs, and "
                        f"with --per-domain the proxy clients sent results (default: {DEFAULT_STATE_DIR})")
    p.add_argument("--age-warning", type=duration_range, default=duration_range("6h"), metavar="DURATION",
                   help="WARNING when a job was first seen longer ago (default: 6h)")
    p.add_argument("--age-critical", type=duration_range, default=duration_range("24h"), metavar="DURATION",
                   help="CRITICAL when a job was first seen longer ago (default: 24h)")
    add_thresholds(p, None, "chain", "the backing images below a disk's active image", "3", "8")
    p.add_argument("--backup-state-dir", type=state_dir_arg, default=catalog.STATE_DIR, metavar="DIR",
                   help=f"kvm-backup's --state-dir, whose journals name the overlays of its runs (default: "
                        f"{catalog.STATE_DIR}; unreadable: no job is named as kvm-backup's)")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
