"""The resource checks and metrics-kvm as real processes against libvirt's test driver.

The test driver's bulk call returns only the state group, so these runs also exercise the
per-domain fallback for the other groups; its figures are fake but stable.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from line_protocol_parser import parse_line
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import node_uri, run
from tests.perfdata_consumers import perfdata

DEFAULT = "test:///default"
ODD = node_uri("odd-names.xml")


def test_vcpu_first_run_is_ok_and_says_so(tmp_path):
    result = run("check-kvm-vcpu", "-u", DEFAULT, "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert result.stdout == "CheckKvmVcpu OK: test first sample, usage on the next run | test_vcpus=2;;;0\n"
    # right after: no rate over a few ms (the default --min-interval is 5 s), the sample is kept
    second = run("check-kvm-vcpu", "-u", DEFAULT, "--state-dir", str(tmp_path))
    assert re.match(r"CheckKvmVcpu OK: test the last sample is only 0\.[0-9]+s old, under --min-interval 5s, "
                    r"usage on the next run \| test_vcpus=2;;;0\n\Z", second.stdout), second.stdout
    third = run("check-kvm-vcpu", "-u", DEFAULT, "--state-dir", str(tmp_path), "--min-interval", "0.01")
    assert third.stdout.startswith("CheckKvmVcpu OK: test vCPU usage "), third.stdout
    assert "test_vcpu_usage=" in third.stdout


def test_vcpu_expect_vcpus_mismatch_is_warning(tmp_path):
    result = run("check-kvm-vcpu", "-u", DEFAULT, "--expect-vcpus", "4", "--interval", "0.2", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert "2 vCPUs, expected 4" in result.stdout


def test_corrupt_state_file_is_rebuilt_silently(tmp_path):
    run("check-kvm-vcpu", "-u", DEFAULT, "--state-dir", str(tmp_path))
    (state,) = tmp_path.glob("vcpu-*.json")
    state.write_text("{garbage")
    result = run("check-kvm-vcpu", "-u", DEFAULT, "--state-dir", str(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")
    assert "first sample" in result.stdout
    assert json.loads(state.read_text())["version"] == 1


def test_unwritable_state_dir_is_unknown(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("check-kvm-vcpu", "-u", DEFAULT, "--state-dir", str(blocker / "sub"))
    assert result.returncode == 3
    assert result.stdout.startswith(f"CheckKvmVcpu UNKNOWN: cannot create state directory {blocker}/sub: ")
    assert len(result.stdout.splitlines()) == 1


def test_memory_guest_view_and_thresholds():
    result = run("check-kvm-memory", "-u", DEFAULT)
    assert result.returncode == 0
    assert result.stdout.startswith("CheckKvmMemory OK: test memory 50.0% used (guest view: 1024 of 2048 MiB in use) | ")
    assert "test_memory_used=50%;90;95;0" in result.stdout.split()  # no maximum: the host view can pass 100
    result = run("check-kvm-memory", "-u", DEFAULT, "-w", "40", "-c", "60")
    assert result.returncode == 1


def test_blkerror_reports_the_test_drivers_fake_error():
    result = run("check-kvm-blkerror", "-u", DEFAULT)
    assert result.returncode == 2
    assert result.stdout == ("CheckKvmBlkerror CRITICAL: test: vda: unspecified error\n"
                             "CRITICAL: test: vda: unspecified error\n| test_disk_errors=1;;;0\n")


def test_blkerror_skips_shut_off_domains():
    result = run("check-kvm-blkerror", "-u", ODD, "-d", "grüße.ü")
    assert (result.returncode, result.stdout) == (0, "CheckKvmBlkerror OK: grüße.ü shut off: not measured\n")


def test_blkstat_metric_choice_and_device_filter(tmp_path):
    first = run("check-kvm-blkstat", "-u", DEFAULT, "-m", "write_iops", "-w", "10", "--state-dir", str(tmp_path))
    assert first.returncode == 0
    assert "first sample, rates on the next run" in first.stdout
    result = run("check-kvm-blkstat", "-u", DEFAULT, "-m", "write_iops", "-w", "10", "--interval", "0.2",
                 "--device", "vda", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.startswith("CheckKvmBlkstat WARNING: test: vda write_iops ")
    for metric in ("read_iops", "write_bps", "read_latency", "flushes", "allocation"):
        assert f"test_{metric}_vda=" in result.stdout
    result = run("check-kvm-blkstat", "-u", DEFAULT, "--device", "vdz", "--state-dir", str(tmp_path))
    assert "test: no disks measured" in result.stdout


def test_blkstat_default_judges_allocation(tmp_path):
    result = run("check-kvm-blkstat", "-u", DEFAULT, "--state-dir", str(tmp_path))
    assert result.returncode == 2  # the test driver reports allocation above capacity
    assert perfdata(result.stdout)["test_allocation_vda"] == "100%;85;95;0"  # no maximum: it can pass 100


def test_host_cpu_and_memory(tmp_path):
    result = run("check-kvm-host", "-u", DEFAULT, "--interval", "0.2", "-v", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert any(line.startswith("OK: CPU ") for line in lines)
    assert any(line.startswith("OK: memory ") for line in lines)
    result = run("check-kvm-host", "-u", DEFAULT, "--memory-warning", "0:0.0001", "--state-dir", str(tmp_path))
    assert result.returncode == 1


@pytest.mark.parametrize(("args", "message"), [
    (["check-kvm-blkstat", "-m", "iops"], "argument -m/--metric: invalid choice: 'iops'"),
    (["check-kvm-vcpu", "--interval", "0"], "argument --interval: '0' is not between 0 and 86400 seconds"),
    (["check-kvm-vcpu", "--expect-vcpus", "-1"], "argument --expect-vcpus: '-1' is below 0"),
    (["check-kvm-vcpu", "--min-interval", "0"], "argument --min-interval: '0' is not between 0 and 86400 seconds"),
    (["check-kvm-blkstat", "--min-interval", "nan"], "argument --min-interval: 'nan' is not a finite number"),
    (["check-kvm-host", "--min-interval", "inf"], "argument --min-interval: 'inf' is not a finite number"),
    (["check-kvm-host", "--fs-critical", "9:1"], "invalid range '9:1'"),
    (["check-kvm-memory", "--view", "both"], "argument --view: invalid choice: 'both'"),
    (["metrics-kvm", "--format", "xml"], "argument -f/--format: invalid choice: 'xml'"),
])
def test_bad_options(args, message):
    result = run(*args, "-u", DEFAULT)
    assert result.returncode == 3
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


def test_metrics_graphite_paths_are_safe():
    result = run("metrics-kvm", "-u", ODD, "--fill", "--scheme", "dc1.kvm7")
    assert result.returncode == 0
    for line in result.stdout.splitlines():
        path, value, stamp = line.split(" ")
        assert path.startswith("dc1.kvm7.")
        assert all(part for part in path.split("."))
        float(value)
        int(stamp)
    assert "dc1.kvm7.domain.a_b_c_d.block.vda.read_bytes" in result.stdout
    assert "dc1.kvm7.domain.gr__e__.up 1 " in result.stdout


def test_metrics_influxdb_parses_back():
    result = run("metrics-kvm", "-u", ODD, "--fill", "--format", "influxdb")
    assert result.returncode == 0
    points = [parse_line(line) for line in result.stdout.splitlines()]
    domains = {p["tags"]["domain"] for p in points if p["measurement"] == "kvm_domain"}
    # names.influx: a backslash before a space (which would escape it) becomes '/'
    assert domains == {"a,b=c d", 'say "hi" / back', "grüße.ü"}
    block = next(p for p in points if p["measurement"] == "kvm_block")
    assert block["tags"]["device"] == "vda" and block["fields"]["read_bytes"] > 0
    assert all(p["time"] > 1_600_000_000 * 10**9 for p in points)


def test_metrics_prometheus_parses_back():
    result = run("metrics-kvm", "-u", ODD, "--fill", "--format", "prometheus")
    assert result.returncode == 0
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    up = {s.labels["domain"]: s.value for s in families["kvm_domain_up"].samples}
    assert up == {"a,b=c d": 1, 'say "hi" \\ back': 1, "grüße.ü": 1}
    assert families["kvm_block_read_bytes"].type == "counter"
    assert families["kvm_domain_state"].type == "gauge"


def test_metrics_json_parses_back():
    result = run("metrics-kvm", "-u", ODD, "--fill", "--format", "json")
    doc = json.loads(result.stdout)
    assert math.isclose(doc["timestamp"], doc["timestamp"])
    names = {p["tags"].get("domain") for p in doc["points"] if p["measurement"] == "domain"}
    assert names == {"a,b=c d", 'say "hi" \\ back', "grüße.ü"}


def test_metrics_failing_domain_yields_up_0(fault_env):
    env = {**fault_env, "SPK_FAULT": "bulk-stats-fail;state-fails:a,b=c d"}
    result = run("metrics-kvm", "-u", ODD, "--fill", "--format", "influxdb", env=env)
    assert result.returncode == 0, result
    points = [parse_line(line) for line in result.stdout.splitlines()]
    broken = next(p for p in points if p["tags"].get("domain") == "a,b=c d")
    assert broken["fields"]["up"] == 0
    assert "injected fault" in broken["fields"]["error"]
    fine = next(p for p in points if p["tags"].get("domain") == "grüße.ü")
    assert fine["fields"]["up"] == 1
    prom = run("metrics-kvm", "-u", ODD, "--fill", "--format", "prometheus", env=env)
    families = {f.name: f for f in text_string_to_metric_families(prom.stdout)}
    assert {s.labels["domain"]: s.value for s in families["kvm_domain_up"].samples}["a,b=c d"] == 0


def test_metrics_without_fill_report_what_the_bulk_call_returns():
    """The test driver's bulk call has only the state group: without --fill, only that is reported."""
    result = run("metrics-kvm", "-u", ODD, "--format", "influxdb")
    assert result.returncode == 0
    points = [parse_line(line) for line in result.stdout.splitlines()]
    assert {p["measurement"] for p in points} <= {"kvm_host", "kvm_domain"}
    domain = next(p for p in points if p["tags"].get("domain") == "a,b=c d")
    assert domain["fields"] == {"up": 1, "state": 1, "state_reason": 0}
