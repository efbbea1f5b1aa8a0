"""Every check's output is taken whole by Nagios 4, Icinga 2 and Sensu Go, for hostile names and
for 1,000 domains.

The installed checks run as real processes on libvirt's test driver (tests/data/nodes/names.xml,
and a node file of 1,000 domains made by tests/nodes.py); their output goes through parsers that
follow each consumer's source (tests/perfdata_consumers.py). The Sensu Go parser stands in for
the Sensu Go agent, which cannot run here (no Debian package); the real nagios4 and icinga2 run
the checks in tests/services.

"Whole" means: the output holds at most one ``|``; each consumer finds every perfdata item, with
the label the check wrote (nothing quoted, nothing glued, nothing prefixed); Nagios and Icinga 2
see every text line as text; every value lies within the bounds its item declares; no two items
share a label; and the status line stays within its byte budget whatever the number of domains.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sensu_kvm.checks import blkstat
from tests import nodes
from tests.conftest import node_uri, run
from tests.perfdata_consumers import taken_whole, text_lines

NAMES = node_uri("names.xml")


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = nodes.write(tmp_path_factory.mktemp("nodes") / "thousand.xml", nodes.many(1000))
    return f"test://{path}"


def runs(state: Path) -> list[tuple[str, ...]]:
    """Every check, with the options that make it say the most (rates sampled twice now)."""
    return [
        ("check-kvm-domstate",), ("check-kvm-domstate", "-v", "--expect-running"),
        ("check-kvm-blkerror", "-v"),
        ("check-kvm-memory", "-v"), ("check-kvm-memory", "--view", "host"),
        ("check-kvm-vcpu", "-v", "--interval", "0.2", "--state-dir", str(state)),
        ("check-kvm-blkstat", "-v", "--interval", "0.2", "--state-dir", str(state)),
        ("check-kvm-blkstat", "-m", "write_iops", "--interval", "0.2", "--state-dir", str(state)),
        ("check-kvm-snapshot-age", "-v"),
        ("check-kvm-backup-age", "-v", "--state-dir", str(state)),
        ("check-kvm-guest-agent", "-v", "-d", "p|q", "-d", "web 1", "-d", "a=b", "-d", "中文字"),
        ("check-kvm-guest-agent",),
        ("check-kvm-host", "-v", "--state-dir", str(state)),
        ("check-kvm-blockjob", "-v", "--state-dir", str(state)),
    ]


def test_every_check_over_hostile_names_is_taken_whole(tmp_path: Path) -> None:
    for argv in runs(tmp_path):
        result = run(argv[0], "-u", NAMES, *argv[1:])
        assert result.returncode in (0, 1, 2, 3) and result.stderr == "", (argv, result)
        items = taken_whole(result.stdout)
        # the test driver has no guest agent, and no balloon statistics for the domains of a node file
        assert items or argv[0] in ("check-kvm-guest-agent", "check-kvm-memory"), (argv, result.stdout)
    guest = run("check-memory-percent")
    taken_whole(guest.stdout)


def test_every_check_at_1000_domains_is_taken_whole_with_a_short_first_line(thousand: str, tmp_path: Path) -> None:
    for argv in runs(tmp_path):
        result = run(argv[0], "-u", thousand, *argv[1:])
        assert result.returncode in (0, 1, 2, 3) and result.stderr == "", (argv, result.stderr)
        taken_whole(result.stdout)
    blkstat = run("check-kvm-blkstat", "-u", thousand, "--interval", "0.2", "--state-dir", str(tmp_path))
    first = text_lines(blkstat.stdout)[0]
    assert first.endswith(" more") and len(first.encode()) < 300, first  # 286 KB of output, one short line
    assert len(taken_whole(blkstat.stdout)) == 750 * 9  # every disk of the 750 running domains, every metric


def test_the_perfdata_order_is_fixed_domain_then_metric_then_device(thousand: str, tmp_path: Path) -> None:
    """The test driver lists domains in another order on each connection: the output does not move."""
    for check in ("check-kvm-domstate", "check-kvm-blkerror", "check-kvm-snapshot-age"):
        first, second = (run(check, "-u", thousand, "-v").stdout for _ in range(2))
        assert first == second, check
    out = run("check-kvm-blkstat", "-u", NAMES, "--interval", "0.2", "--state-dir", str(tmp_path)).stdout
    labels = [item.split("=", 1)[0] for item in out.partition("|")[2].split()]
    domains = [label[:-len("_read_iops_vda")] for label in labels if label.endswith("_read_iops_vda")]
    assert len(domains) == 19 and domains == sorted(domains), domains  # 16 running and 3 paused
    assert labels == [f"{domain}_{metric}_vda" for domain in domains for metric in blkstat.METRICS]


def test_a_domain_keeps_its_label_whatever_the_selection() -> None:
    """Labels come from every domain of the host, so naming one domain gives the same label."""
    everything = run("check-kvm-blkerror", "-u", NAMES).stdout.partition("|")[2].split()
    for name in ("web 1", "web_1", "a=b", "caf_", "café", "x,y"):
        alone = run("check-kvm-blkerror", "-u", NAMES, "-d", name).stdout.partition("|")[2].split()
        assert len(alone) == 1 and alone[0] in everything, (name, alone)
    labels = [item.split("=", 1)[0] for item in everything]
    assert "web_1_disk_errors" in labels and "web-01_disk_errors" in labels and "db.example.com_disk_errors" in labels
