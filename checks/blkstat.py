"""check-kvm-blkstat: I/O rates, latency and allocation of each domain's disks."""

from __future__ import annotations

import argparse
from typing import Any

from sensu_kvm import devicerates, virt
from sensu_kvm.contexts import Context
from sensu_kvm.devicerates import Metric
from sensu_kvm.domains import Verdict
from sensu_kvm.output import Report
from sensu_kvm.plugin import CheckParser, run_check
from sensu_kvm.statefile import Rate

NAME = "CheckKvmBlkstat"

COUNTERS = ("rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times", "fl.reqs", "fl.times")


METRICS = {m.name: m for m in (
    Metric("read_iops", "", "read operations per second"),
    Metric("write_iops", "", "write operations per second"),
    Metric("read_bps", "", "bytes read per second"),
    Metric("write_bps", "", "bytes written per second"),
    Metric("read_latency", "ms", "average read latency in ms"),
    Metric("write_latency", "ms", "average write latency in ms"),
    Metric("flush_latency", "ms", "average flush latency in ms"),
    Metric("flushes", "", "flushes per second"),
    Metric("allocation", "%", "allocation in % of capacity", rate=False),
)}
DEFAULTS = {"allocation": ("85", "95")}

EXAMPLES = """\
  check-kvm-blkstat                               allocation of every disk (WARNING 85%, CRITICAL 95%)
  check-kvm-blkstat -m write_iops -w 500 -c 2000  write IOPS of every disk
  check-kvm-blkstat -m read_latency -w 20 -c 100 -d db1 --device vdb
  check-kvm-blkstat -m write_bps -c 100000000 --interval 5
  check-kvm-blkstat -m write_iops -v --min-interval 20  rates between runs over at least 20 s"""

DESCRIPTION = f"""\
Per disk of each running domain: read and write IOPS, read and write bytes/s, average read,
write and flush latency in ms, flushes/s (rates between this run and the previous one, kept in
--state-dir, or two samples --interval apart), and allocation in % of capacity (a thin qcow2
nearing its virtual size; no maximum: a qcow2's allocation can pass its capacity). -m/--metric
chooses what -w/-c judge; perfdata carries them all, labelled <domain>_<metric>_<disk>, never
quoted (a domain name in its label form: see the README, "Domain names in the output"), in the
order domain, metric, disk. The first run has no rates: it says so, judges allocation, and is OK.
A rate between runs covers at least --min-interval (5 s): a run that comes sooner after the last
sample (runs that overlap, a retry) reports the previous run's rates, marked so in its line (see
-v), and keeps the older sample for the next run.
Metrics: {', '.join(METRICS)}. Default: allocation, WARNING above 85%, CRITICAL above 95%."""


def disks(record: virt.DomainRecord) -> list[tuple[str, dict[str, Any]]]:
    """(device, its block.N.* statistics) for each disk with a source."""
    stats = record.stats
    found = []
    for n in range(int(stats.get("block.count", 0))):
        prefix = f"block.{n}."
        device = stats.get(prefix + "name")
        if not device or (prefix + "path") not in stats:
            continue  # an empty CD-ROM drive
        found.append((device, {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}))
    return found


def values(rate: Rate, block: dict[str, Any]) -> dict[str, float]:
    """Every metric that can be computed for one disk (allocation always, the others from its rates)."""
    result: dict[str, float] = {}
    capacity = block.get("capacity")
    if capacity and "allocation" in block:
        result["allocation"] = block["allocation"] / capacity * 100
    per_second = rate.per_second
    if per_second is None:
        return result

    def latency(times: str, reqs: str) -> float:
        ops = per_second.get(reqs, 0.0)
        return per_second.get(times, 0.0) / ops / 1e6 if ops else 0.0

    result.update({
        "read_iops": per_second.get("rd.reqs", 0.0), "write_iops": per_second.get("wr.reqs", 0.0),
        "read_bps": per_second.get("rd.bytes", 0.0), "write_bps": per_second.get("wr.bytes", 0.0),
        "read_latency": latency("rd.times", "rd.reqs"), "write_latency": latency("wr.times", "wr.reqs"),
        "flush_latency": latency("fl.times", "fl.reqs"), "flushes": per_second.get("fl.reqs", 0.0),
    })
    return result


KIND = devicerates.Kind("blkstat", "block", "disk", "--device", "device", METRICS, COUNTERS, disks, values,
                        DEFAULTS)


def judge_domain(record: virt.DomainRecord, found: dict[str, Rate], options: argparse.Namespace,
                 of: dict[str, Context] | None = None) -> Verdict:
    """The verdict on one domain's disks from each disk's rates, keyed UUID/device (pure;
    ``of`` is ``devicerates.contexts(KIND, options)``, made once for all domains)."""
    return devicerates.judge_domain(KIND, record, found, options, of)


def check(options: argparse.Namespace) -> Report:
    return devicerates.check(KIND, options)


def parser() -> CheckParser:
    return devicerates.parser(KIND, "check-kvm-blkstat", DESCRIPTION, EXAMPLES, "allocation", "DISK",
                              "only this disk (target name such as vda); repeat for more. A DISK that no running "
                              "domain selected has is UNKNOWN (a typo is not 'no disks measured')")


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
