"""check-kvm-netstat as real processes against libvirt's test driver.

The test driver's bulk call gives no net.* group, so these runs take the per-domain fallback
(one interfaceStats call per interface). Its counters grow with the wall clock, so their rates
are known: the test reads them itself through libvirt and compares. It names every interface
testnet<N> whatever <target dev> the XML says, so an interface without one is shown on real
QEMU only (tests/hypervisor/test_netstat_qemu.py, tests/unit/test_netstat_eval.py).
"""

from __future__ import annotations

import time

import libvirt
import pytest

from tests import nodes
from tests.conftest import node_uri, run
from tests.perfdata_consumers import perfdata

DEFAULT = "test:///default"
NAMES = node_uri("names.xml")
METRICS = [f"{way}_{what}_ps" for way in ("rx", "tx") for what in ("bytes", "packets", "errors", "drops")]


def measured_rates(uri: str, name: str, interface: str, seconds: float = 0.5) -> dict[str, float]:
    """What the test driver's counters of one interface grow by per second, read here directly."""
    conn = libvirt.openReadOnly(uri)
    try:
        dom = conn.lookupByName(name)
        t1, a = time.time(), dom.interfaceStats(interface)
        time.sleep(seconds)
        t2, b = time.time(), dom.interfaceStats(interface)
    finally:
        conn.close()
    return {metric: (y - x) / (t2 - t1) for metric, x, y in zip(METRICS, a, b)}


def value(item: str) -> float:
    return float(item.split(";", maxsplit=1)[0])


def test_rates_across_two_runs_for_every_running_domain(tmp_path):
    args = ["-u", NAMES, "--state-dir", str(tmp_path)]
    first = run("check-kvm-netstat", *args)
    active = [n for n, state in nodes.HOSTILE.items() if state in (nodes.RUNNING, nodes.PAUSED)]
    assert (first.returncode, first.stdout) == (
        0, f"CheckKvmNetstat OK: first sample taken, rates on the next run (or use --interval) | interfaces={len(active)};;;0\n")
    time.sleep(0.5)
    second = run("check-kvm-netstat", *args, "--min-interval", "0.3", "-m", "tx_bytes_ps", "-w", "1e12")
    assert second.returncode == 0, second
    assert second.stdout.startswith("CheckKvmNetstat OK: "), second.stdout
    seen = perfdata(second.stdout)
    assert seen.pop("interfaces") == f"{len(active)};;;0"
    assert len(seen) == len(active) * len(METRICS)  # every metric of the one interface of each
    expected = measured_rates(NAMES, "plain", "testnet0")
    for metric in ("rx_bytes_ps", "rx_packets_ps", "tx_bytes_ps", "tx_packets_ps"):
        assert value(seen[f"plain_{metric}_testnet0"]) == pytest.approx(expected[metric], rel=0.1), metric
    for metric in ("rx_errors_ps", "rx_drops_ps", "tx_errors_ps", "tx_drops_ps"):  # they step ~3 times a second
        assert 0 <= value(seen[f"plain_{metric}_testnet0"]) < 10, metric
    assert float(seen["plain_tx_bytes_ps_testnet0"].split(";")[1]) == 1e12  # -w of the chosen metric only
    assert seen["plain_rx_bytes_ps_testnet0"].split(";")[1:3] == ["", ""]


def test_thresholds_of_the_chosen_metric(tmp_path):
    def status(*args: str) -> tuple[int, str]:
        result = run("check-kvm-netstat", "-u", DEFAULT, "--interval", "0.2", "--state-dir", str(tmp_path), *args)
        return result.returncode, result.stdout

    code, out = status("-m", "rx_bytes_ps", "-w", "1000")
    assert code == 1 and out.startswith("CheckKvmNetstat WARNING: test: testnet0 rx_bytes_ps "), out
    code, out = status("-m", "rx_bytes_ps", "-w", "1000", "-c", "5000")
    assert code == 2 and out.startswith("CheckKvmNetstat CRITICAL: test: testnet0 rx_bytes_ps "), out
    code, out = status("-m", "rx_bytes_ps", "-w", "1e9", "-c", "1e10")
    assert code == 0, out
    code, out = status("-m", "tx_drops_ps", "-w", "0", "-c", "0")  # the test driver drops nothing it sends
    assert code == 0, out
    code, out = status()  # the default: rx_drops_ps, WARNING above 1, CRITICAL above 10
    drops = perfdata(out)["test_rx_drops_ps_testnet0"]
    assert drops.endswith(";1;10;0")
    # the test driver's drop counter steps about 3 times a second: 0 or ~5/s over 0.2 s
    assert code == (0 if value(drops) <= 1 else 1 if value(drops) <= 10 else 2), out
    assert out.startswith(f"CheckKvmNetstat {['OK', 'WARNING', 'CRITICAL'][code]}: test: testnet0 rx_drops_ps "), out


def test_interface_selection(tmp_path):
    args = ["-u", NAMES, "-d", "plain", "-d", "café", "--interval", "0.2", "--state-dir", str(tmp_path)]
    result = run("check-kvm-netstat", *args, "-m", "rx_packets_ps", "-w", "1", "--interface", "testnet0",
                 "--interface", "testnet0")
    assert result.returncode == 1, result
    assert result.stdout.startswith("CheckKvmNetstat WARNING: 2 of 2 domains not OK: "), result.stdout
    assert set(perfdata(result.stdout)) == {"interfaces", *(f"{d}_{m}_testnet0" for d in ("plain", "café") for m in METRICS)}
    assert perfdata(result.stdout)["interfaces"] == "2;;;0"
    result = run("check-kvm-netstat", *args, "--interface", "testnet0", "--interface", "vnet9")
    assert (result.returncode, result.stdout, result.stderr) == (
        3, "CheckKvmNetstat UNKNOWN: --interface vnet9: no such interface on the 2 running domains selected "
           "(interfaces there: testnet0)\n", "")
    result = run("check-kvm-netstat", *args, "-d", "nosuch", "--interface", "vnet9")
    assert result.returncode == 2  # a missing domain named with -d is CRITICAL, and said first
    assert result.stdout.startswith("CheckKvmNetstat CRITICAL: nosuch not found; --interface vnet9: ")


def test_not_running_domains_are_not_measured(tmp_path):
    result = run("check-kvm-netstat", "-u", NAMES, "-d", "a_b", "-d", "web.1", "--state-dir", str(tmp_path), "-v")
    assert result.returncode == 0, result
    assert "OK: a_b shut off: not measured" in result.stdout.splitlines()
    assert perfdata(result.stdout) == {"interfaces": "0;;;0"}


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "drops"], "argument -m/--metric: invalid choice: 'drops'"),
    (["--interval", "0"], "argument --interval: '0' is not between 0 and 86400 seconds"),
    (["--min-interval", "nan"], "argument --min-interval: 'nan' is not a finite number"),
    (["-w", "9:1"], "invalid range '9:1'"),
    (["--interface"], "argument --interface: expected one argument"),
])
def test_bad_input_is_one_line_exit_3(args, message, tmp_path):
    result = run("check-kvm-netstat", "-u", DEFAULT, "--state-dir", str(tmp_path), *args)
    assert (result.returncode, result.stdout) == (3, "")
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []  # changes nothing
