"""metrics-kvm: every domain and host statistic from one bulk call, for a time-series database."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any, NamedTuple

from sensu_kvm import activity, blockjobs, domains, metrics, pools, virt
from sensu_kvm.argtypes import listen_arg, metric_prefix_arg
from sensu_kvm.errors import BadRequest, KvmError
from sensu_kvm.names import Names, graphite_node
from sensu_kvm.output import Report, Status
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "MetricsKvm"
GROUPS = ["state", "cpu", "balloon", "vcpu", "interface", "block"]

EXAMPLES = """\
  metrics-kvm                                  Graphite plaintext, scheme <short hostname>.kvm
  metrics-kvm --scheme kvm.dc1.host7           another Graphite prefix
  metrics-kvm --format influxdb                InfluxDB line protocol, tags host, domain, device
  metrics-kvm --format prometheus              Prometheus text (Sensu Go output_metric_format prometheus_text)
  metrics-kvm --format json -d kvm1
  metrics-kvm --no-pools                       the domains and the host only, no storage pools
  metrics-kvm --block-jobs --format influxdb   also each running domain's block jobs (a call per disk)
  metrics-kvm -u test:///default --fill        fill in per domain what the test driver's bulk call lacks
  metrics-kvm --listen 127.0.0.1:9177 -t 8     serve http://127.0.0.1:9177/metrics to a Prometheus that
                                               scrapes it (scrape_timeout above -t); SIGTERM ends it"""

DESCRIPTION = """\
Every domain's statistics (state and reason, CPU, balloon, vCPU, block, interface) and the host's
CPU and memory counters, from one bulk call, as raw counters and gauges in base units (bytes,
seconds) for a time-series database to turn into rates; and every storage pool of the host
(whatever -d/--match/--exclude select, as the host's counters): its state, capacity, allocation,
available bytes and number of volumes (one call lists the pools, then two per active pool, the
pools on concurrent calls within -t; --no-pools leaves them out). What a driver's bulk call
lacks (libvirt's test driver has only the state) is left out unless --fill asks for it per
domain. A domain or pool whose statistics fail still yields its 'up' metric, set to 0, with the
error (InfluxDB and JSON). Formats: graphite
(plaintext), influxdb (line protocol; each field of one type whatever its value: seconds floats,
0.0 included, counts, bytes and states integers), prometheus (text exposition 0.0.4), json.
--block-jobs adds the block jobs of the running domains (one call per disk: off by default):
block_jobs per domain, and per job its type, progress (current, end, ratio) and bandwidth,
tagged with the disk and the job's type.

stdout holds data only. A run that cannot do its job (libvirtd unreachable, -t ran out, an
internal error, --match/--exclude selecting no domain) exits 3 with the reason in one line on
stderr and nothing on stdout, but for 'kvm_up 0' in the Prometheus format (whose every output
holds kvm_up 1). A -d domain that does not exist is CRITICAL (exit 2): the others' metrics on
stdout, no line for it, its name on stderr.

--listen ADDRESS keeps one read-only connection open and answers each GET /metrics with the text
--format prometheus prints (same selection options), HTTP 200 with kvm_up 0 while libvirtd cannot
be read or does not answer within -t; the reason on stderr once per outage, a line when it is back.
Other paths answer 404, other methods 405. A busy or bad address: one line, exit 3."""


def check(options: argparse.Namespace) -> Report:
    conn = virt.connect(options.uri)
    try:
        data = read(conn, options)
    finally:
        conn.close()
    return render(options, data)


class Read(NamedTuple):
    """Everything one run reads from libvirt (--listen reads it on its own long-lived connection)."""

    points: list[metrics.Point]
    names: Names  # every domain of the host, before -d/--match/--exclude choose
    missing: list[str]  # the -d domains that do not exist
    pools: Names  # every storage pool of the host
    notes: list[str]  # what stderr says of the pools when they could not be listed


def read(conn: Any, options: argparse.Namespace) -> Read:
    """The points of the host, of the chosen domains and of every storage pool, with the names."""
    chosen, missing = domains.read(conn, GROUPS, options, fill=options.fill)
    # every domain of the host, before -d/--match/--exclude choose (read attaches it)
    names = chosen[0].names if chosen and chosen[0].names is not None else Names()
    if not chosen and not missing and (options.match or options.exclude):
        raise BadRequest("no domain matches --match/--exclude")
    node: list[dict[str, int]] = [{}, {}]
    for n, reader in enumerate((virt.node_cpu_stats, virt.node_memory_stats)):
        with contextlib.suppress(KvmError):  # a driver without node statistics (the test driver)
            node[n] = reader(conn)
    jobs = read_jobs(chosen) if options.block_jobs else {}
    points = metrics.host_points(*node) + [p for r in chosen
                                           for p in metrics.domain_points(r.name, r.stats, r.error, jobs.get(r.uuid))]
    pool_points, pool_names, notes = read_pools(conn) if options.pools else ([], Names(), [])
    return Read(points + pool_points, names, missing, pool_names, notes)


def read_pools(conn: Any) -> tuple[list[metrics.Point], Names, list[str]]:
    """The point of every storage pool (info and number of volumes, the pools on concurrent calls
    within the time budget), their names, and a note for stderr when they could not be listed (a
    driver without storage pools, or the time already spent on the domains): the domains' metrics
    are printed all the same."""
    if activity.left() <= 0:
        return [], Names(), ["storage pools not read: time ran out before they were listed; raise -t"]
    try:
        every, names = pools.list_pools(conn)
    except KvmError as err:
        return [], Names(), [f"storage pools not read: {err}"]
    read = pools.read_pools(every, lambda p: pools.read_pool(p, False, sizes=False), "reading the storage pools' sizes")
    return [metrics.pool_point(p.name, p.state, p.capacity, p.allocation, p.available, p.volume_count, p.error or None)
            for p in sorted(read, key=lambda p: p.name) if not p.gone], names, []  # undefined meanwhile: no pool


def read_jobs(chosen: list[virt.DomainRecord]) -> dict[str, tuple[blockjobs.Job, ...]]:
    """--block-jobs: the block jobs of each running domain read, by UUID (one blockJobInfo call per
    disk; a driver without block jobs is asked once). A domain whose jobs could not be read, or
    not in time, has none here: its point has no block_jobs field."""
    running = [r for r in chosen if not r.error and domains.is_active(r)]
    answers, _supported, _phase = blockjobs.read_all(running, chain=False)
    return {r.uuid: found.jobs for r, found in zip(running, answers)
            if found is not virt.LATE and not found.error}


def render(options: argparse.Namespace, data: Read) -> Report:
    """The output of one run in its format (stdout), and a -d domain that is missing (CRITICAL)."""
    points, names, missing, pool_names = data.points, data.names, data.missing, data.pools
    now = time.time()
    host = os.uname().nodename.split(".")[0]
    form = output_format(options)
    if form == "graphite":
        text = metrics.graphite(points, options.scheme or f"{graphite_node(host)}.kvm", int(now), names, pool_names)
    elif form == "influxdb":
        text = metrics.influxdb(points, host, int(now * 1e9), names, pool_names)
    elif form == "prometheus":
        text = metrics.prometheus(points, names)
    else:
        text = metrics.as_json(points, host, now)
    notes = unread(points) + data.notes
    if missing:  # CRITICAL, as the checks say it; no metric of any kind for a domain that is not there
        shown = ", ".join(names.text(name) for name in missing)
        return Report(Status.CRITICAL, text, details=[f"CRITICAL: domain{'s' if len(missing) > 1 else ''} "
                                                      f"not found: {shown}", *notes], raw=True)
    return Report(Status.OK, text, details=notes, raw=True)


def unread(points: list[metrics.Point]) -> list[str]:
    """What stderr says of the domains whose points say up 0 because they were busy or not read
    in time (their error is in the data too): one line for each kind, with the count."""
    errors = [p.error for p in points if p.measurement == "domain" and p.error]
    notes = []
    late = sum(1 for e in errors if e.startswith(virt.LATE_MARK))
    if late:
        phases = activity.late_phases()
        notes.append(f"time ran out while {phases[0] if phases else 'reading'}: {late} domains not read "
                     f"(up 0); raise -t or --concurrency")
    busy = sum(1 for e in errors if e == virt.BUSY)
    if busy:
        notes.append(f"{busy} domain{'s' if busy != 1 else ''} busy (another operation holds its libvirt job): up 0")
    failed = [p.error for p in points if p.measurement == "pool" and p.error]
    late_pools = [e for e in failed if e.startswith(virt.LATE_MARK)]
    if late_pools:
        notes.append(f"time ran out{late_pools[0].removeprefix(virt.LATE_MARK)}: {len(late_pools)} storage pools not read "
                     f"(up 0); raise -t or --concurrency")
    if len(failed) > len(late_pools):
        notes.append(f"{len(failed) - len(late_pools)} storage pool{'s' if len(failed) - len(late_pools) != 1 else ''}"
                     " not read (up 0): " + next(e for e in failed if not e.startswith(virt.LATE_MARK)))
    return notes


def output_format(options: argparse.Namespace) -> str:
    """--format, else prometheus with --listen and graphite without."""
    return str(options.format or ("prometheus" if options.listen else "graphite"))


def failure(options: argparse.Namespace) -> str:
    """What stdout says when the run fails (exit 3, the error on stderr): Prometheus's own way of
    saying "down", ``kvm_up 0``; nothing in the other formats."""
    return metrics.prometheus_up(0) if output_format(options) == "prometheus" else ""


def listen(parser: CheckParser, options: argparse.Namespace) -> int | None:
    """--listen: serve the Prometheus text of every scrape from one long-lived connection
    (sensu_kvm.listen) until SIGTERM; None without --listen (the one-shot run)."""
    if options.listen is None:
        return None
    if output_format(options) != "prometheus":
        parser.error(f"argument --listen: serves the Prometheus text only, not --format {options.format}")
    from sensu_kvm import listen as resident  # noqa: PLC0415 (http.server only for the server)

    scraper = resident.Scraper(parser.prog, options.uri, options.timeout, lambda conn: read(conn, options),
                               lambda data: render(options, data), failure(options))
    return resident.serve(parser.prog, options.listen, scraper)


def parser() -> CheckParser:
    p = build_parser("metrics-kvm", DESCRIPTION, EXAMPLES)
    p.add_argument("-f", "--format", choices=("graphite", "influxdb", "prometheus", "json"),
                   help="output format (default: graphite; prometheus with --listen)")
    p.add_argument("-s", "--scheme", type=metric_prefix_arg, metavar="PREFIX",
                   help="Graphite path prefix (default: <short hostname>.kvm)")
    p.add_argument("--fill", action="store_true",
                   help="read per domain what the driver's bulk call lacks (QEMU's lacks nothing; "
                        "costs several calls per domain on drivers such as libvirt's test driver)")
    p.add_argument("--no-pools", dest="pools", action="store_false",
                   help="leave out the storage pools (one call lists them, then two calls per active pool: "
                        "its info and its number of volumes, within -t)")
    p.add_argument("--block-jobs", action="store_true",
                   help="also read the block jobs of every running domain: one blockJobInfo call per disk (libvirt "
                        "has no bulk call for them); adds block_jobs to each domain and a blockjob point per job "
                        "(type, progress, bandwidth)")
    p.add_argument("--listen", type=listen_arg, metavar="ADDRESS",
                   help="stay running and serve the Prometheus text at http://ADDRESS/metrics, HOST:PORT or "
                        "[IPv6]:PORT (no default: choose one), from one read-only connection kept open and "
                        "re-opened when libvirtd restarts; one scrape at a time, each within -t (kvm_up 0 while "
                        "libvirtd cannot be read); SIGTERM ends it")
    return p


def main() -> None:
    run_check(NAME, parser(), check, failure, listen)


if __name__ == "__main__":
    main()
