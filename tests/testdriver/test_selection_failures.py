"""What metrics-kvm and the checks say when they cannot do what they were asked (issue 13).

metrics-kvm's stdout goes to a time-series database (carbon, InfluxDB, Prometheus): a failure
writes nothing there that a consumer would ingest, only the error on stderr and exit 3; in the
Prometheus format stdout says ``kvm_up 0`` (the exporters' way of saying "down"). A domain named
with -d that does not exist is CRITICAL (exit 2) with no metric of any kind for it; --match or
--exclude that select nothing are UNKNOWN. check-kvm-host says a missing -d domain as every check
does; check-kvm-blkstat's --device that names no disk of the running domains is UNKNOWN, not
"no disks measured". The real consumers take these outputs in tests/services/test_prometheus.py.
The hung-libvirtd timeout is in test_hung_libvirtd.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import node_uri, refuses, run

NAMES = node_uri("names.xml")
DEFAULT = "test:///default"
NO_DAEMON = "qemu+unix:///system?socket=/nonexistent/spk-no-libvirtd.sock"
KVM_UP_0 = ("# HELP kvm_up 1 when metrics-kvm read the host's statistics, 0 when it failed (it exits 3, the error "
            "on stderr)\n# TYPE kvm_up gauge\nkvm_up 0\n")


def failed(form: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run metrics-kvm that must fail: exit 3, one line on stderr naming the command, and on stdout
    nothing (kvm_up 0 in the Prometheus format); that line."""
    result = run("metrics-kvm", "-f", form, *args, env=env)
    assert result.returncode == 3, result
    assert result.stdout == (KVM_UP_0 if form == "prometheus" else ""), result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("metrics-kvm: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("form", ["graphite", "influxdb", "prometheus", "json"])
def test_metrics_no_libvirtd_writes_no_data(form: str) -> None:
    line = failed(form, "-u", NO_DAEMON)
    assert line.startswith("metrics-kvm: cannot connect to qemu+unix:///system"), line
    assert "UNKNOWN" not in line


@pytest.mark.parametrize("form", ["graphite", "prometheus"])
def test_metrics_internal_error_writes_no_data(form: str, fault_env: dict[str, str]) -> None:
    line = failed(form, "-u", NAMES, env={**fault_env, "SPK_FAULT": "crash-in-gather"})
    assert line.startswith("metrics-kvm: internal error: RuntimeError: "), line


@pytest.mark.parametrize("form", ["graphite", "prometheus"])
@pytest.mark.parametrize("selection", [["--match", "zzz"], ["--exclude", "."], ["-d", "plain", "--exclude", "pl"]])
def test_metrics_a_selection_of_nothing_is_unknown(form: str, selection: list[str]) -> None:
    assert failed(form, "-u", NAMES, *selection) == "metrics-kvm: no domain matches --match/--exclude"


@pytest.mark.parametrize("form", ["graphite", "influxdb", "prometheus", "json"])
def test_metrics_missing_domain_is_critical_without_a_line_for_it(form: str) -> None:
    result = run("metrics-kvm", "-u", NAMES, "--fill", "-f", form, "-d", "plain", "-d", "nosuch", "-d", "web 1")
    assert result.returncode == 2, result
    assert result.stderr == "metrics-kvm: CRITICAL: domain not found: nosuch\n"
    assert "nosuch" not in result.stdout
    assert "plain" in result.stdout and "web" in result.stdout
    if form == "prometheus":
        assert "\nkvm_up 1\n" in result.stdout


def test_metrics_only_missing_domains_leave_the_host_alone() -> None:
    result = run("metrics-kvm", "-u", NAMES, "-d", "nosuch", "-d", "gone")
    assert result.returncode == 2, result
    assert result.stderr == "metrics-kvm: CRITICAL: domains not found: nosuch, gone\n"
    assert all(".host." in line for line in result.stdout.splitlines()), result.stdout


def test_metrics_bad_input_is_still_one_line() -> None:
    assert "invalid choice" in refuses("metrics-kvm", 3, "-u", NAMES, "-f", "carbon")


def test_host_missing_domain_is_critical(tmp_path) -> None:
    result = run("check-kvm-host", "-u", DEFAULT, "--state-dir", str(tmp_path), "-d", "nosuch")
    assert result.returncode == 2, result
    assert result.stdout.splitlines()[0] == "CheckKvmHost CRITICAL: 1 of 4 resources not OK: domain nosuch not found"
    assert "CRITICAL: domain nosuch not found" in result.stdout.splitlines()[1:]
    named = run("check-kvm-host", "-u", DEFAULT, "--state-dir", str(tmp_path), "-d", "test")
    assert named.returncode == 0, named


def test_host_selection_of_nothing_is_unknown(tmp_path) -> None:
    result = run("check-kvm-host", "-u", DEFAULT, "--state-dir", str(tmp_path), "--match", "zzz")
    assert result.returncode == 3, result
    assert result.stdout.startswith("CheckKvmHost UNKNOWN: 1 of 4 resources not OK: no domain matches --match/--exclude")


@pytest.mark.parametrize(("devices", "unmatched"), [(["vdz"], "vdz"), (["vda", "vdz", "sdq"], "vdz, sdq")])
def test_blkstat_device_that_matches_no_disk_is_unknown(tmp_path, devices: list[str], unmatched: str) -> None:
    args = [arg for device in devices for arg in ("--device", device)]
    result = run("check-kvm-blkstat", "-u", NAMES, "--state-dir", str(tmp_path), *args)
    assert (result.returncode, result.stderr) == (3, ""), result
    assert result.stdout == (f"CheckKvmBlkstat UNKNOWN: --device {unmatched}: no such disk on the 19 running domains "
                             "selected (disks there: vda)\n")


def test_blkstat_device_and_missing_domain_say_both(tmp_path) -> None:
    result = run("check-kvm-blkstat", "-u", NAMES, "--state-dir", str(tmp_path), "-d", "plain", "-d", "nosuch",
                 "--device", "vdz")
    assert result.returncode == 2, result
    assert result.stdout == ("CheckKvmBlkstat CRITICAL: nosuch not found; --device vdz: no such disk on the 1 running "
                             "domain selected (disks there: vda)\n")


def test_blkstat_device_with_nothing_running_is_not_measured(tmp_path) -> None:
    result = run("check-kvm-blkstat", "-u", NAMES, "--state-dir", str(tmp_path), "-d", "a_b", "--device", "vdz")
    assert (result.returncode, result.stdout) == (0, "CheckKvmBlkstat OK: a_b shut off: not measured\n"), result


def test_blkstat_device_that_matches_is_measured(tmp_path) -> None:
    result = run("check-kvm-blkstat", "-u", NAMES, "--state-dir", str(tmp_path), "-d", "plain", "--device", "vda")
    assert result.returncode == 2, result  # the test driver's disks are full: allocation 100%
    assert result.stdout.startswith("CheckKvmBlkstat CRITICAL: plain: vda allocation 100.0%")
