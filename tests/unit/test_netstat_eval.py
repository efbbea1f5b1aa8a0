"""check-kvm-netstat's evaluation, pure, on the bulk records of a real QEMU guest (the tiny Linux
guest, stopped) whose tap drops every frame sent into it (tests/data/netstat-qemu-drops.json, written by
tests/hypervisor/test_netstat_qemu.py with SPK_RECORD_DIR set; its second NIC is user-mode, with
no host device, so the bulk call gives net.count 2 and no net.1.name)."""

import json

import pytest

from sensu_kvm import devicerates
from sensu_kvm.checks import netstat
from sensu_kvm.output import Status
from sensu_kvm.statefile import Rate, compare
from sensu_kvm.virt import DomainRecord
from tests.conftest import DATA


def records():
    first, second = json.loads((DATA / "netstat-qemu-drops.json").read_text())
    return [(entry, DomainRecord(entry["name"], entry["uuid"], dict(entry["stats"]), when=entry["t"]))
            for entry in (first, second)]


def rates(a, b):
    previous = devicerates.samples(netstat.KIND, [a[1]])
    current = devicerates.samples(netstat.KIND, [b[1]])
    return {key: compare(previous.get(key), sample, list(netstat.COUNTERS), floor=1.0)[0]
            for key, sample in current.items()}


def test_interface_without_target_dev_is_skipped_and_said():
    (_entry, rec), _ = records()
    assert [name for name, _stats in netstat.interfaces(rec)] == ["spknet0"]
    assert netstat.skipped(rec) == "1 interface without <target dev> not measured"
    assert netstat.skipped(DomainRecord("x", "u", {"net.count": 1, "net.0.name": "vnet0"})) == ""


def test_drop_rate_of_the_recorded_guest_and_its_thresholds():
    a, b = records()
    found = rates(a, b)
    expected = (b[0]["stats"]["net.0.rx.drop"] - a[0]["stats"]["net.0.rx.drop"]) / (b[0]["t"] - a[0]["t"])
    options = netstat.parser().parse_args(["-w", "10", "-c", "1000"])
    verdict = devicerates.judge_domain(netstat.KIND, b[1], found, options)
    labels = {p.label: p.value for p in verdict.perfdata}
    assert labels["spk-net-drops_rx_drops_ps_spknet0"] == pytest.approx(expected, rel=1e-3)
    assert labels["spk-net-drops_rx_packets_ps_spknet0"] == 0
    assert len(labels) == len(netstat.METRICS)
    assert verdict.finding.status is Status.WARNING
    assert verdict.finding.text.startswith("spk-net-drops: spknet0 rx_drops_ps ")
    assert verdict.finding.text.endswith("; 1 interface without <target dev> not measured")
    options = netstat.parser().parse_args(["-m", "tx_drops_ps", "-w", "0", "-c", "0"])
    assert devicerates.judge_domain(netstat.KIND, b[1], found, options).finding.status is Status.OK


def test_first_sample_has_no_rates():
    (_entry, rec), _ = records()
    options = netstat.parser().parse_args([])
    verdict = devicerates.judge_domain(netstat.KIND, rec, {}, options)
    assert (verdict.finding.status, verdict.pending) == (Status.OK, True)
    assert verdict.finding.text == ("spk-net-drops: first sample, rates on the next run; "
                                    "1 interface without <target dev> not measured")
    assert netstat.values(Rate(None), {}) == {}
