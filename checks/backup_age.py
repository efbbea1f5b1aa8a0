"""check-kvm-backup-age: the newest backup of each domain that kvm-backup wrote, and its failures."""

from __future__ import annotations

import argparse
import time

from sensu_kvm import virt
from sensu_kvm.argtypes import duration_range, state_dir_arg
from sensu_kvm.backup import catalog, tested
from sensu_kvm.contexts import Context, Measurement
from sensu_kvm.domains import Verdict, judge_each, read, report
from sensu_kvm.durations import format_age
from sensu_kvm.errors import BadRequest
from sensu_kvm.output import Finding, Report, Status, worst
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "CheckKvmBackupAge"

EXAMPLES = """\
  check-kvm-backup-age --backup-dir /srv/backup               WARNING after 26h, CRITICAL after 50h
  check-kvm-backup-age --backup-dir /srv/backup -w 8d -c 15d  weekly backups
  check-kvm-backup-age --backup-dir /srv/backup --match '^web' --exclude test
  check-kvm-backup-age --backup-dir /srv/backup --require-tested 8d --require-tested-critical 15d"""

DESCRIPTION = """\
Per domain: the age of its newest published backup in --backup-dir (archives of kvm-backup, which
are verified before they are published) against -w/-c, given as durations (units s, m, h, d, w;
default WARNING after 26h, CRITICAL after 50h). No backup at all, or a failure marker (a failed
kvm-backup run) newer than the newest backup: CRITICAL. Backups sent to a remote destination count
through the receipt, and failures through the marker, that kvm-backup keeps in --state-dir. Perfdata
per domain: age in seconds and size in bytes of the newest backup. Reads file names and sizes only:
no archive is opened.

--require-tested DURATION (and --require-tested-critical DURATION) also judges the test restores
that `kvm-backup test-restore` recorded beside the archives (ARCHIVE.tested.json): WARNING
(CRITICAL) when no kept backup of the domain passed a test restore within DURATION, or when the
latest test restore of any of them failed or was refused (CRITICAL only with
--require-tested-critical). Perfdata: tested_age, the seconds since the last passed test."""


def contexts(options: argparse.Namespace) -> tuple[Context, Context]:
    """What the check measures per domain: the newest backup's age (whole seconds) and size."""
    return (Context("age", "s", options.warning, options.critical, 0, digits=0), Context("size", "B", minimum=0))


WITHOUT = "domains_without_backup"


def judge_domain(record: virt.DomainRecord, entries: list[catalog.Entry], failure: dict | None, now: float,
                 options: argparse.Namespace) -> Verdict:
    """The verdict on one domain's backups (pure)."""
    name, shown = record.name, record.text
    newest = max(entries, key=lambda e: e.created) if entries else None
    failed_after = failure is not None and (newest is None or failure["time"] > newest.created)
    if newest is None:
        text = f"{shown}: no backup in {options.backup_dir or 'the receipts of remote backups'}"
        if failure is not None:
            text += f"; the last run failed {format_age(now - failure['time'])} ago: {failure['error']}"
        return Verdict(Finding(name, Status.CRITICAL, text))
    age_of, size_of = contexts(options)
    age = age_of(max(0.0, now - newest.created), record.label)
    statuses = [age.status]
    text = f"{shown}: newest backup {format_age(age.value)} old ({len(entries)} kept)"
    if failed_after and failure is not None:
        statuses.append(Status.CRITICAL)
        text += f"; a later backup failed {format_age(now - failure['time'])} ago: {failure['error']}"
    measured = [age, size_of(newest.size, record.label)]
    if getattr(options, "require_tested", None) is not None or getattr(options, "require_tested_critical", None) \
            is not None:
        status, note, tested_age = judge_tested(entries, now, options, record.label)
        statuses.append(status)
        text += note
        if tested_age is not None:
            measured.append(tested_age)
    return Verdict(Finding(name, worst(statuses), text), measured)


def judge_tested(entries: list[catalog.Entry], now: float, options: argparse.Namespace,
                 label: str) -> tuple[Status, str, Measurement | None]:
    """(status, text to add, tested_age measurement or None) from the test-restore records beside a
    domain's archives (pure but for reading those small files)."""
    records = [r for r in (tested.read(e.path) for e in entries) if r is not None]
    missing = Status.CRITICAL if options.require_tested_critical is not None else Status.WARNING
    latest = max(records, key=lambda r: r.when) if records else None
    passed = [r for r in records if r.result == "passed"]
    statuses = []
    text = ""
    measurement: Measurement | None = None
    if passed:
        last = max(passed, key=lambda r: r.when)
        context = Context("tested_age", "s", options.require_tested, options.require_tested_critical, 0, digits=0)
        measurement = context(max(0.0, now - last.when), label)
        statuses.append(measurement.status)
        text += f"; last test restore passed {format_age(measurement.value)} ago"
    else:
        statuses.append(missing)
        text += "; no backup passed a test restore"
    if latest is not None and latest.result != "passed":
        statuses.append(missing)
        text += f"; the latest test restore {latest.result} {format_age(now - latest.when)} ago: {latest.message}"
    return worst(statuses), text, measurement


def check(options: argparse.Namespace) -> Report:
    now = time.time()
    entries: list[catalog.Entry] = []
    if options.backup_dir:
        try:
            entries = catalog.scan(options.backup_dir)
        except BadRequest as err:  # an unmounted backup volume must be loud
            return Report(Status.CRITICAL, f"{err} (not mounted?): no backup can be judged",
                          [Context(WITHOUT, minimum=0)(0).perf()])
    markers = catalog.read_markers(options.state_dir)
    if options.backup_dir:
        markers.update(catalog.read_markers(options.backup_dir))
    by_domain: dict[str, list[catalog.Entry]] = {}
    for entry in entries + catalog.read_receipts(options.state_dir):
        by_domain.setdefault(entry.domain, []).append(entry)
    conn = virt.connect(options.uri)
    try:
        chosen, missing = read(conn, ["state"], options, fill=False)
    finally:
        conn.close()
    verdicts = judge_each(chosen, lambda r: judge_domain(r, by_domain.get(r.name, []), markers.get(r.name),
                                                         now, options), active_only=False)
    without = sum(1 for r in chosen if r.name not in by_domain)
    where = options.backup_dir or "--state-dir receipts"
    return report(verdicts, missing, options, f"{len(verdicts)} domains backed up in {where}, none too old",
                  [Context(WITHOUT, minimum=0, maximum=len(chosen))(without).perf()])


def parser() -> CheckParser:
    p = build_parser("check-kvm-backup-age", DESCRIPTION, EXAMPLES, state_dir=False)  # its own: kvm-backup's
    p.add_argument("--backup-dir", metavar="DIR",
                   help="the local folder kvm-backup writes to (missing or unreadable: CRITICAL); without it only "
                        "the receipts of remote backups in --state-dir count")
    p.add_argument("--state-dir", type=state_dir_arg, default=catalog.STATE_DIR, metavar="DIR",
                   help=f"kvm-backup's state folder, for failures of remote backups (default: {catalog.STATE_DIR})")
    p.add_argument("-w", "--warning", type=duration_range, default=duration_range("26h"), metavar="DURATION",
                   help="WARNING when the newest backup is older (default: 26h)")
    p.add_argument("-c", "--critical", type=duration_range, default=duration_range("50h"), metavar="DURATION",
                   help="CRITICAL when the newest backup is older (default: 50h)")
    p.add_argument("--require-tested", type=duration_range, metavar="DURATION",
                   help="WARNING when no backup passed kvm-backup test-restore within DURATION, or the latest test "
                        "restore failed")
    p.add_argument("--require-tested-critical", type=duration_range, metavar="DURATION",
                   help="CRITICAL when no backup passed kvm-backup test-restore within DURATION (a failed latest "
                        "test restore is then CRITICAL too)")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
