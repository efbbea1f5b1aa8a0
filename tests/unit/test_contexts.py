"""Contexts judge typed measurements and give their perfdata; checks decide nothing from text."""

from __future__ import annotations

from pathlib import Path

from sensu_kvm.checks import blkstat, vcpu
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict
from sensu_kvm.output import Finding, Status
from sensu_kvm.ranges import Range
from sensu_kvm.statefile import Rate, compare
from sensu_kvm.virt import DomainRecord


def test_a_context_judges_a_value_and_gives_its_perfdata() -> None:
    usage = Context("vcpu_usage", "%", Range.parse("80"), Range.parse("90"), 0, 100, digits=3)
    m = usage(85.12345, "web1")
    assert (m.domain, m.metric, m.device, m.uom, m.status) == ("web1", "vcpu_usage", "", "%", Status.WARNING)
    assert str(m.perf()) == "web1_vcpu_usage=85.123%;80;90;0;100"
    assert usage(95, "web1").status is Status.CRITICAL
    assert usage(10, "web1").status is Status.OK


def test_the_status_is_judged_on_the_value_as_measured_not_as_rounded() -> None:
    pct = Context("used_pct", "%", Range.parse("95"), None, 0, 100, digits=2)
    m = pct(95.001, "db", "/")
    assert m.reported == 95.0
    assert m.status is Status.WARNING  # 95.001 is above 95 even though perfdata shows 95
    assert str(m.perf()) == "db_used_pct_/=95%;95;;0;100"


def test_digits_zero_keeps_the_whole_part() -> None:
    age = Context("oldest_age", "s", Range.parse("~:100"), None, 0, digits=0)
    m = age(100.9, "old")
    assert m.reported == 100 and isinstance(m.reported, int)
    assert m.status is Status.WARNING
    assert str(m.perf()) == "old_oldest_age=100s;~:100;;0"


def test_labels() -> None:
    assert Context("running", minimum=0, maximum=3)(2).label == "running"
    assert Context("chain_depth", minimum=1)(3, "web1", "vda").label == "web1_chain_depth_vda"
    fs = Context("fs_used", "%", label="fs_{device}_used")
    assert fs(50, device="/var").label == "fs_/var_used"
    assert not Context("x").judges and Context("x", critical=Range.parse("1")).judges


def test_a_verdict_gives_its_measurements_by_metric_and_as_perfdata() -> None:
    count, depth = Context("snapshots", minimum=0), Context("chain_depth", minimum=1)
    verdict = Verdict(Finding("a_snapshots", Status.OK, "a_snapshots: fine"),
                      [count(2, "a_snapshots"), depth(1, "a_snapshots", "vda")])
    assert [m.value for m in verdict.of("snapshots")] == [2]
    assert [p.label for p in verdict.perfdata] == ["a_snapshots_snapshots", "a_snapshots_chain_depth_vda"]


def test_rates_say_whether_they_are_a_first_sample() -> None:
    assert Rate(None).first and Rate(None).reason == "first sample"
    reset = compare({"t": 1.0, "x": 5}, {"t": 2.0, "x": 1}, ["x"], 0.5)[0]
    assert not reset.first and reset.reason == "counters reset (domain restarted), new sample"
    measured = Rate({"x": 1.0}, 2.0)
    assert not measured.first and measured.why is None


def test_vcpu_summary_names_the_busiest_domain_from_its_measurement() -> None:
    """A domain whose name ends like a perfdata suffix is just a name."""
    options = vcpu.parser().parse_args(["-w", "99"])
    records = [DomainRecord(n, n, {"state.state": 1, "vcpu.current": 1, "vcpu.maximum": 1, "vcpu.0.time": 0})
               for n in ("x_vcpu_usage", "y")]
    verdicts = [vcpu.judge_domain(r, Rate({"time": 0.5e9 if r.name == "y" else 0.25e9}, 2.0),
                                  {"vcpus": 1, "time": 0}, options) for r in records]
    assert [m.domain for v in verdicts for m in v.of("vcpu_usage")] == ["x_vcpu_usage", "y"]
    assert [str(p) for p in verdicts[0].perfdata] == ["x_vcpu_usage_vcpu_usage=25%;99;;0",
                                                      "x_vcpu_usage_vcpus=1;;;0;1"]


NODE = """<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>
  <memory>8388608</memory>
  {domains}
</node>"""
DOMAIN = """<domain type='test'><name>{name}</name><memory>131072</memory><os><type>hvm</type></os>
  <test:runstate>5</test:runstate></domain>"""


def test_blkstat_first_sample_is_not_found_in_a_domain_name(tmp_path: Path) -> None:
    """Bug fixed: the 'first sample' summary was chosen by finding 'rates on the next run' in the
    findings' text, so a shut-off domain of that name made the check claim a sample was taken."""
    node = tmp_path / "node.xml"
    node.write_text(NODE.format(domains="".join(DOMAIN.format(name=n) for n in ("rates on the next run", "b"))))
    options = blkstat.parser().parse_args(["-u", f"test://{node}", "--state-dir", str(tmp_path / "state")])
    report = blkstat.check(options)
    assert (report.status, report.summary) == (Status.OK, "0 disks measured")
    assert sorted(f.text for f in report.findings) == ["b shut off: not measured",
                                                       "rates on the next run shut off: not measured"]
