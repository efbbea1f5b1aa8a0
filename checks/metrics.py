"""metrics-kvm: every domain and host statistic from one bulk call, for a time-series database."""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from sensu_kvm import domains, metrics, virt
from sensu_kvm.argtypes import metric_prefix_arg
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
  metrics-kvm -u test:///default --fill        fill in per domain what the test driver's bulk call lacks"""

DESCRIPTION = """\
Every domain's statistics (state and reason, CPU, balloon, vCPU, block, interface) and the host's
CPU and memory counters, from one bulk call, as raw counters and gauges in base units (bytes,
seconds) for a time-series database to turn into rates. What a driver's bulk call lacks (libvirt's
test driver has only the state) is left out unless --fill asks for it per domain. A domain whose statistics fail still
yields its 'up' metric, set to 0, with the error (InfluxDB and JSON). Formats: graphite
(plaintext), influxdb (line protocol; each field of one type whatever its value: seconds floats,
0.0 included, counts, bytes and states integers), prometheus (text exposition 0.0.4), json.

stdout holds data only. A run that cannot do its job (libvirtd unreachable, -t ran out, an
internal error, --match/--exclude selecting no domain) exits 3 with the reason in one line on
stderr and nothing on stdout, but for 'kvm_up 0' in the Prometheus format (whose every output
holds kvm_up 1). A -d domain that does not exist is CRITICAL (exit 2): the others' metrics on
stdout, no line for it, its name on stderr."""


def check(options: argparse.Namespace) -> Report:
    conn = virt.connect(options.uri)
    try:
        chosen, missing = domains.read(conn, GROUPS, options, fill=options.fill)
        # every domain of the host, before -d/--match/--exclude choose (read attaches it)
        names = chosen[0].names if chosen and chosen[0].names is not None else Names()
        if not chosen and not missing and (options.match or options.exclude):
            raise BadRequest("no domain matches --match/--exclude")
        node: list[dict[str, int]] = [{}, {}]
        for n, read in enumerate((virt.node_cpu_stats, virt.node_memory_stats)):
            with contextlib.suppress(KvmError):  # a driver without node statistics (the test driver)
                node[n] = read(conn)
        host_points = metrics.host_points(*node)
    finally:
        conn.close()
    points = host_points + [p for r in chosen for p in metrics.domain_points(r.name, r.stats, r.error)]
    now = time.time()
    host = os.uname().nodename.split(".")[0]
    if options.format == "graphite":
        text = metrics.graphite(points, options.scheme or f"{graphite_node(host)}.kvm", int(now), names)
    elif options.format == "influxdb":
        text = metrics.influxdb(points, host, int(now * 1e9), names)
    elif options.format == "prometheus":
        text = metrics.prometheus(points, names)
    else:
        text = metrics.as_json(points, host, now)
    if missing:  # CRITICAL, as the checks say it; no metric of any kind for a domain that is not there
        shown = ", ".join(names.text(name) for name in missing)
        return Report(Status.CRITICAL, text, details=[f"CRITICAL: domain{'s' if len(missing) > 1 else ''} "
                                                      f"not found: {shown}"], raw=True)
    return Report(Status.OK, text, raw=True)


def failure(options: argparse.Namespace) -> str:
    """What stdout says when the run fails (exit 3, the error on stderr): Prometheus's own way of
    saying "down", ``kvm_up 0``; nothing in the other formats."""
    return metrics.prometheus_up(0) if options.format == "prometheus" else ""


def parser() -> CheckParser:
    p = build_parser("metrics-kvm", DESCRIPTION, EXAMPLES)
    p.add_argument("-f", "--format", choices=("graphite", "influxdb", "prometheus", "json"), default="graphite",
                   help="output format (default: graphite)")
    p.add_argument("-s", "--scheme", type=metric_prefix_arg, metavar="PREFIX",
                   help="Graphite path prefix (default: <short hostname>.kvm)")
    p.add_argument("--fill", action="store_true",
                   help="read per domain what the driver's bulk call lacks (QEMU's lacks nothing; "
                        "costs several calls per domain on drivers such as libvirt's test driver)")
    return p


def main() -> None:
    run_check(NAME, parser(), check, failure)


if __name__ == "__main__":
    main()
