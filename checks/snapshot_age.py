"""check-kvm-snapshot-age: snapshots that pile up, and overlays that nobody knows about."""

from __future__ import annotations

import argparse
import time

from sensu_kvm import domxml, virt
from sensu_kvm.argtypes import duration_range, regex_arg
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, judge_each, read, report
from sensu_kvm.durations import format_age
from sensu_kvm.errors import KvmError
from sensu_kvm.names import visible
from sensu_kvm.output import Finding, Report, Status, worst
from sensu_kvm.plugin import CheckParser, add_thresholds, build_parser, run_check
from sensu_kvm.snapshots import tree

NAME = "CheckKvmSnapshotAge"

EXAMPLES = """\
  check-kvm-snapshot-age                           oldest snapshot: WARNING after 3d, CRITICAL after 7d
  check-kvm-snapshot-age -w 12h -c 2d -d db1       stricter, for one domain
  check-kvm-snapshot-age --count-warning 5 --count-critical 20
  check-kvm-snapshot-age --allow-backing '^/srv/golden/'   linked clones of golden images are no overlays"""

DESCRIPTION = """\
Per domain: the age of its oldest snapshot against -w/-c, given as durations (units s, m, h, d,
w; default WARNING after 3d, CRITICAL after 7d); the number of snapshots against
--count-warning/--count-critical (default WARNING above 10); and disks of a running domain that
run on an overlay no snapshot's metadata knows about (left behind by a failed backup, or made
with --no-metadata): WARNING naming the disk and the overlay file. Perfdata per domain: snapshot
count, oldest and newest age in seconds, backing chain depth per disk. Snapshots have no bulk
call in libvirt: one call finds the domains that have any, whose snapshots are then listed, and
each domain's XML is read, on concurrent calls within -t."""


def contexts(options: argparse.Namespace) -> tuple[Context, Context, Context, Context]:
    """What the check measures per domain: the snapshot count, the oldest and newest snapshot's age
    (whole seconds in perfdata) and, per disk, the depth of its backing chain."""
    return (Context("snapshots", "", options.count_warning, options.count_critical, 0),
            Context("oldest_age", "s", options.warning, options.critical, 0, digits=0),
            Context("newest_age", "s", minimum=0, digits=0),
            Context("chain_depth", minimum=1))


def judge_domain(record: virt.DomainRecord, snapshots: list[tree.Snapshot], chains: dict[str, list[domxml.Layer]],
                 now: float, options: argparse.Namespace) -> Verdict:
    """The verdict on one domain's snapshots and disks (pure)."""
    count_of, oldest_of, newest_of, depth_of = contexts(options)
    statuses, notes = [Status.OK], []
    label = record.label
    count = count_of(len(snapshots), label)
    measured = [count]
    if count.status is not Status.OK:
        statuses.append(count.status)
        notes.append(f"{count.value} snapshots")
    if snapshots:
        oldest = min(snapshots, key=lambda s: s.created)
        newest = max(snapshots, key=lambda s: s.created)
        age = oldest_of(max(0.0, now - oldest.created), label)
        statuses.append(age.status)
        summary = (f"{count.value} snapshot{'s' if count.value != 1 else ''}, oldest '{visible(oldest.name)}' "
                   f"{format_age(age.value)} old")
        measured += [age, newest_of(max(0.0, now - newest.created), label)]
    else:
        summary = "no snapshots"
    for target, overlay in sorted(tree.unknown_overlays(chains, snapshots, options.allow_backing).items()):
        statuses.append(Status.WARNING)
        notes.append(f"{target} runs on {overlay.path}, an overlay no snapshot knows about")
    measured += [depth_of(len(layers), label, target) for target, layers in sorted(chains.items())]
    text = f"{record.text}: {summary}" + "".join(f"; {n}" for n in notes)
    return Verdict(Finding(record.name, worst(statuses), text), measured)


def snapshot_holders(conn: virt.virConnect) -> set[str] | None:
    """The UUIDs of the domains that have snapshots, in one call (most domains have none, and
    need no snapshot call at all); None where the filter is refused: any domain may have some."""
    try:
        return {d.UUIDString() for d in conn.listAllDomains(virt.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT)}
    except virt.libvirtError:
        return None


def check(options: argparse.Namespace) -> Report:
    conn = virt.connect(options.uri)
    now = time.time()
    try:
        chosen, missing = read(conn, ["state"], options)
        with_snapshots = snapshot_holders(conn)

        def one(record: virt.DomainRecord) -> Verdict:
            try:
                has = with_snapshots is None or record.uuid in with_snapshots
                snapshots = tree.read_snapshots(record.dom) if has else []
                chains = domxml.chains(record.dom.XMLDesc(0))
            except KvmError as err:
                return Verdict(Finding(record.name, Status.UNKNOWN, str(err)))
            except virt.libvirtError as err:
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {virt.reason(err)}"))
            except Exception as err:  # an XML that does not parse: this domain alone is UNKNOWN
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {type(err).__name__}: {err}"))
            return judge_domain(record, snapshots, chains, now, options)

        verdicts = judge_each(chosen, one, active_only=False, phase="reading snapshots and disks")
    finally:
        conn.close()
    total = sum(int(m.value) for v in verdicts for m in v.of("snapshots"))
    return report(verdicts, missing, options, f"{total} snapshots on {len(verdicts)} domains, none too old")


def parser() -> CheckParser:
    p = build_parser("check-kvm-snapshot-age", DESCRIPTION, EXAMPLES)
    p.add_argument("-w", "--warning", type=duration_range, default=duration_range("3d"), metavar="DURATION",
                   help="WARNING when the oldest snapshot is older (default: 3d)")
    p.add_argument("-c", "--critical", type=duration_range, default=duration_range("7d"), metavar="DURATION",
                   help="CRITICAL when the oldest snapshot is older (default: 7d)")
    add_thresholds(p, None, "count", "the number of snapshots", "10", None)
    p.add_argument("--allow-backing", type=regex_arg, metavar="REGEX",
                   help="backing files that are expected under a disk (golden images of linked clones)")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
