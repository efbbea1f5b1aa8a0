"""check-kvm-pool: the host's storage pools: state, space used and left, and thin-provisioning overcommit."""

from __future__ import annotations

import argparse
import re

from sensu_kvm import activity, virt
from sensu_kvm.argtypes import concurrency_arg, name_arg, regex_arg, shown, uri_arg
from sensu_kvm.contexts import Context, Measurement
from sensu_kvm.domains import highest
from sensu_kvm.names import Names
from sensu_kvm.output import Finding, Report, Status, summarise, worst
from sensu_kvm.plugin import CheckParser, add_thresholds, build_parser, run_check
from sensu_kvm.pools import (  # noqa: F401 (Pool, the states and is_local are this check's vocabulary too)
    BUILDING,
    DEGRADED,
    INACCESSIBLE,
    INACTIVE,
    RUNNING,
    STATE_WORDS,
    Pool,
    is_local,
    list_pools,
    read_pool,
    read_pools,
)
from sensu_kvm.ranges import Range
from sensu_kvm.sizes import size_text

NAME = "CheckKvmPool"

EXAMPLES = """\
  check-kvm-pool                                   every pool: state, used % (WARNING 80, CRITICAL 90), overcommit
  check-kvm-pool -p default -p images -w 70 -c 85  two pools, stricter
  check-kvm-pool --available-critical 20G          CRITICAL when a pool has less than 20 GiB left
  check-kvm-pool --overcommit-warning 150 --overcommit-critical 300   thin pools may promise 1.5x their size
  check-kvm-pool --exclude '^iso'                  skip the ISO pools"""

DESCRIPTION = """\
Every storage pool of the host (virsh pool-list --all), on a read-only connection: its state,
the used % of its capacity against -w/-c (default WARNING above 80%, CRITICAL above 90%), the
bytes still available against --available-warning/--available-critical (a size: alert below
it; no default), and its overcommit: the sum of its volumes' capacities in % of the pool's
capacity (a thin pool whose guests could write more than it holds), against
--overcommit-warning/--overcommit-critical (default WARNING above 100%). A pool that is
inactive is WARNING, CRITICAL when it is marked autostart; building or degraded is WARNING;
inaccessible is CRITICAL; a directory pool on this host whose target directory is gone is
CRITICAL. A pool named with -p that does not exist is CRITICAL. Perfdata per pool: used %,
available bytes, overcommit % and the number of volumes. One call lists the pools; then each
pool's info is read, and for an inactive one its autostart flag, for an active one its volumes
and each volume's size (and on this host its XML), the pools on concurrent calls within -t."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def size_arg(text: str) -> Range:
    """A size ('20G', '500MiB', '1073741824'): alert when the value is below it; perfdata in bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {shown(text)}: a number of bytes, or with K, M, G, T or P")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not value < 2**64:  # also infinity: more than any pool holds
        raise argparse.ArgumentTypeError(f"invalid size {shown(text)}: above 16 EiB")
    size = int(value)
    return Range(float(size), float("inf"), False, f"{size}:")


def contexts(options: argparse.Namespace) -> tuple[Context, Context, Context, Context]:
    return (Context("used", "%", options.warning, options.critical, 0, 100, digits=3),
            Context("available", "B", options.available_warning, options.available_critical, 0),
            Context("overcommit", "%", options.overcommit_warning, options.overcommit_critical, 0, digits=3),
            Context("volumes", "", minimum=0))


def judge_pool(pool: Pool, shown: str, label: str, options: argparse.Namespace) -> tuple[Finding, list[Measurement]]:
    """The finding on one pool and its measurements (pure); ``shown`` and ``label`` are its name as
    a status line shows it and as a perfdata label has it (names.Names)."""
    if pool.error:
        return Finding(pool.name, Status.UNKNOWN, f"pool {shown}: {pool.error}"), []
    if pool.state == INACTIVE:
        status = Status.CRITICAL if pool.autostart else Status.WARNING
        why = " (marked autostart)" if pool.autostart else ""
        return Finding(pool.name, status, f"pool {shown} is inactive{why}"), []
    if pool.state == INACCESSIBLE:
        return Finding(pool.name, Status.CRITICAL, f"pool {shown} is inaccessible"), []
    if pool.target_missing:
        return Finding(pool.name, Status.CRITICAL, f"pool {shown}: target directory {pool.target} is missing"), []
    used_of, available_of, overcommit_of, volumes_of = contexts(options)
    statuses = [Status.WARNING] if pool.state in (BUILDING, DEGRADED) else [Status.OK]
    head = f"pool {shown}" + (f" is {STATE_WORDS[pool.state]}," if pool.state in (BUILDING, DEGRADED) else "")
    measured = [volumes_of(len(pool.volumes), label)]
    if pool.capacity <= 0:
        return Finding(pool.name, worst(statuses), f"{head} has no capacity"), measured
    used = used_of(pool.allocation / pool.capacity * 100, label)
    available = available_of._replace(maximum=pool.capacity)(pool.available, label)
    promised = sum(pool.volumes)
    overcommit = overcommit_of(promised / pool.capacity * 100, label)
    measured = [used, available, overcommit, *measured]
    statuses += [used.status, available.status, overcommit.status]
    text = (f"{head} {used.value:.1f}% used, {size_text(pool.available)} of {size_text(pool.capacity)} available, "
            f"{len(pool.volumes)} volume{'s' if len(pool.volumes) != 1 else ''} of {size_text(promised)} "
            f"({overcommit.value:.0f}% of capacity)")
    if overcommit.status is not Status.OK:
        text += f": overcommitted, the volumes could grow past the pool by {size_text(max(0, promised - pool.capacity))}"
    return Finding(pool.name, worst(statuses), text), measured


def evaluate(pools: list[Pool], missing: list[str], options: argparse.Namespace, names: Names,
             late: str = "") -> Report:
    """The check's report on the pools read and the -p names that do not exist (pure)."""
    findings = []
    measured: list[Measurement] = []
    for pool in pools:
        finding, values = judge_pool(pool, names.text(pool.name), names.label(pool.name), options)
        findings.append(finding)
        measured += values
    findings += [Finding(n, Status.CRITICAL, f"pool {names.text(n)} not found") for n in missing]
    if not findings and (options.match or options.exclude):
        return Report(Status.UNKNOWN, "no pool matches --match/--exclude")
    status, problems, details = summarise(findings, "pool", options.verbose)
    if late:
        unread = sum(1 for p in pools if virt.LATE_MARK in p.error)
        problems = (f"time ran out while {late} ({unread} of {len(findings)} pools not read within "
                    f"-t {options.timeout:g}s); " + problems).rstrip("; ")
    if len(findings) == 1 and not late:
        summary = findings[0].text
    elif problems:
        summary = problems
    elif not findings:
        summary = "no storage pools defined"
    else:
        fullest = max((m for m in measured if m.metric == "used"), key=lambda m: m.value, default=None)
        summary = f"{len(findings)} pools OK" + (f", the fullest {fullest.value:.1f}% used" if fullest else "")
    perf = [m.perf() for m in measured]
    return Report(status, summary, perf, details, aggregates=highest(measured))


def check(options: argparse.Namespace) -> Report:
    uri = virt.resolve_uri(options.uri)
    conn = virt.connect(options.uri)
    try:
        every, names = list_pools(conn)
        chosen = [p for p in every if (not options.pool or p.name() in options.pool)
                  and (options.match is None or options.match.search(p.name()))
                  and (options.exclude is None or not options.exclude.search(p.name()))]
        missing = [n for n in dict.fromkeys(options.pool) if n not in names]
        local = is_local(uri)
        pools = read_pools(chosen, lambda p: read_pool(p, local))
    finally:
        conn.close()
    late = activity.late_phases()
    return evaluate(sorted(pools, key=lambda p: p.name), missing, options, names, late[0] if late else "")


def parser() -> CheckParser:
    p = build_parser("check-kvm-pool", DESCRIPTION, EXAMPLES, domains=False)
    p.add_argument("-u", "--uri", type=uri_arg, help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    p.add_argument("-p", "--pool", type=name_arg, action="append", default=[], metavar="NAME",
                   help="only this pool; repeat for more (a named pool that is missing is CRITICAL)")
    p.add_argument("--match", type=regex_arg, metavar="REGEX", help="only pools whose name matches REGEX")
    p.add_argument("--exclude", type=regex_arg, metavar="REGEX", help="skip pools whose name matches REGEX")
    p.add_argument("--concurrency", type=concurrency_arg, metavar="CALLS",
                   help="libvirt calls made at once, each for one pool (default: what libvirtd serves one "
                        "client at once, max_client_requests in /etc/libvirt/libvirtd.conf, else 5)")
    add_thresholds(p, ("-w", "-c"), "", "the used % of a pool's capacity", "80", "90")
    for level in ("warning", "critical"):
        p.add_argument(f"--available-{level}", type=size_arg, metavar="SIZE", dest=f"available_{level}",
                       help=f"{level} when a pool has fewer bytes available than SIZE (K, M, G, T: powers of "
                            "1024; no default)")
    add_thresholds(p, None, "overcommit", "the volumes' capacities in % of the pool's capacity", "100", None)
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
