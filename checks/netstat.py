"""check-kvm-netstat: receive and transmit rates, errors and drops of each domain's interfaces."""

from __future__ import annotations

import argparse
from typing import Any

from sensu_kvm import devicerates, virt
from sensu_kvm.devicerates import Metric
from sensu_kvm.output import Report
from sensu_kvm.plugin import CheckParser, run_check
from sensu_kvm.statefile import Rate

NAME = "CheckKvmNetstat"

# libvirt's names: rx is what the guest received (what the host sent into its tap), tx what it sent
COUNTERS = ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")
FROM = {"bytes": "bytes", "packets": "pkts", "errors": "errs", "drops": "drop"}

METRICS = {m.name: m for m in (
    Metric(f"{way}_{what}_ps", "", f"{what} {'received' if way == 'rx' else 'sent'} per second")
    for way in ("rx", "tx") for what in FROM)}
DEFAULTS = {"rx_drops_ps": ("1", "10")}

EXAMPLES = """\
  check-kvm-netstat                                 received packets dropped per second (WARNING 1, CRITICAL 10)
  check-kvm-netstat -m tx_errors_ps -w 0 -c 5       transmit errors of every interface
  check-kvm-netstat -m rx_bytes_ps -w 50000000 -d web1 --interface vnet3
  check-kvm-netstat -m tx_packets_ps -c 100000 --interval 5
  check-kvm-netstat -v --min-interval 20            rates between runs over at least 20 s"""

DESCRIPTION = f"""\
Per interface of each running domain: bytes, packets, errors and drops received and sent per
second, as the guest sees them (rx: what reached the guest, tx: what it sent), rates between this
run and the previous one, kept in --state-dir, or two samples --interval apart. -m/--metric
chooses what -w/-c judge; perfdata carries them all, labelled <domain>_<metric>_<interface>,
never quoted (a domain name in its label form: see the README, "Domain names in the output"), in
the order domain, metric, interface, then "interfaces", the number measured (on every run). The
first run has no rates: it says so and is OK. A rate between runs covers at least --min-interval
(5 s): a run that comes sooner after the last sample reports the previous run's rates, marked so
in its line (see -v), and keeps the older sample.
An interface without a host device (<target dev>, as a user-mode one) is not measured; -v says so.
Metrics: {', '.join(METRICS)}. Default: rx_drops_ps, WARNING above 1, CRITICAL above 10."""


def interfaces(record: virt.DomainRecord) -> list[tuple[str, dict[str, Any]]]:
    """(target dev, its net.N.* statistics) of each interface that has a host device."""
    stats = record.stats
    found = []
    for n in range(int(stats.get("net.count", 0))):
        prefix = f"net.{n}."
        name = stats.get(prefix + "name")
        if name:
            found.append((str(name), {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}))
    return found


def skipped(record: virt.DomainRecord) -> str:
    """What -v says of the interfaces not measured: those without <target dev>."""
    unnamed = int(record.stats.get("net.count", 0)) - len(interfaces(record))
    if unnamed <= 0:
        return ""
    return f"{unnamed} interface{'s' if unnamed > 1 else ''} without <target dev> not measured"


def values(rate: Rate, counters: dict[str, Any]) -> dict[str, float]:
    """Every metric of one interface, from its rates (none before the second sample)."""
    if rate.per_second is None:
        return {}
    per_second = rate.per_second
    return {f"{way}_{what}_ps": per_second.get(f"{way}.{key}", 0.0)
            for way in ("rx", "tx") for what, key in FROM.items()}


KIND = devicerates.Kind("netstat", "interface", "interface", "--interface", "interface", METRICS, COUNTERS,
                        interfaces, values, DEFAULTS, skipped, "interfaces")


def check(options: argparse.Namespace) -> Report:
    return devicerates.check(KIND, options)


def parser() -> CheckParser:
    return devicerates.parser(KIND, "check-kvm-netstat", DESCRIPTION, EXAMPLES, "rx_drops_ps", "NAME",
                              "only this interface (host device, <target dev> such as vnet3); repeat for more. "
                              "A NAME that no running domain selected has is UNKNOWN")


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
