"""kvm-inspect as a real process on libvirt's test driver: running, paused and shut off domains,
text and JSON (parsed back), and the reasons given for what the test driver cannot answer."""

from __future__ import annotations

import json

import pytest

from tests.conftest import node_uri, run

MIXED = node_uri("mixed.xml")
SECTIONS = ["host", "state", "vcpus", "memory", "disks", "interfaces", "snapshots", "backing_chains",
            "guest_agent", "monitor"]


def inspect_json(uri: str, domain: str, *args: str) -> dict:
    result = run("kvm-inspect", "-u", uri, domain, "--json", *args)
    assert (result.returncode, result.stderr) == (0, ""), result
    return json.loads(result.stdout)


def test_default_running_domain_json():
    report = inspect_json("test:///default", "test")
    assert (report["domain"], report["uri"]) == ("test", "test:///default")
    sec = report["sections"]
    assert list(sec) == SECTIONS
    assert sec["host"]["data"]["cpus"] == 16 and sec["host"]["data"]["hostname"]
    assert "not supported by this hypervisor driver" in sec["host"]["data"]["unavailable"]["memory statistics"]
    assert sec["state"]["data"]["state"] == "running"
    assert sec["vcpus"]["data"]["current"] == 2 and len(sec["vcpus"]["data"]["vcpus"]) == 2
    assert sec["vcpus"]["data"]["vcpus"][0].keys() == {"number", "state", "cpu_time_ns", "host_cpu"}
    assert sec["memory"]["data"]["max_kib"] == 8388608 and "actual" in sec["memory"]["data"]["balloon_kib"]
    disk = sec["disks"]["data"][0]
    assert (disk["target"], disk["source"]) == ("vda", "/guest/diskimage1")
    assert disk["capacity"] > 0 and disk["io"]["rd_reqs"] >= 0
    assert disk["error"] == "unspecified error"  # the test driver's fake disk error
    assert sec["interfaces"]["data"][0]["target"] == "testnet0" and "rx_bytes" in sec["interfaces"]["data"][0]["counters"]
    assert sec["snapshots"]["data"] == {"count": 0, "current": None, "snapshots": []}
    assert sec["backing_chains"]["data"] == {"vda": [{"path": "/guest/diskimage1", "format": ""}]}
    agent = sec["guest_agent"]
    assert (agent["available"], agent["reason"]) == (
        False, "not configured: no org.qemu.guest_agent.0 channel in the domain XML (see the README)")
    monitor = sec["monitor"]
    assert monitor["available"] is False and monitor["reason"].startswith("not supported by this hypervisor driver")


def test_default_running_domain_text():
    result = run("kvm-inspect", "-u", "test:///default", "test")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == "kvm-inspect test on test:///default (read-write for agent and monitor)"
    heads = [line for line in lines if line.startswith("== ")]
    assert [h.split(":")[0] for h in heads] == ["== Host", "== State", "== vCPUs", "== Memory", "== Disks", "== Interfaces",
                                                "== Snapshots", "== Backing chains", "== Guest agent", "== QEMU monitor"]
    assert "  state: running" in lines
    assert "    capacity: 1099506450432 (1024.0 GiB)" in lines
    assert any(h.startswith("== Guest agent: not available: not configured") for h in heads)


@pytest.mark.parametrize(("domain", "state", "running"), [
    ("web1", "running", True), ("grüße-ü", "paused", True), ("batch", "shut off", False)])
def test_states_text_and_json(domain, state, running):
    report = inspect_json(MIXED, domain)
    sec = report["sections"]
    assert sec["state"]["data"]["state"] == state
    if running:
        assert "vcpus" in sec["vcpus"]["data"] and "balloon_kib" in sec["memory"]["data"]
        assert sec["monitor"]["reason"].startswith("not supported by this hypervisor driver")
    else:
        reason = "domain is shut off: no running QEMU to ask"
        assert sec["vcpus"]["data"]["unavailable"] == {"per-vCPU information": reason}
        assert sec["memory"]["data"]["unavailable"] == {"balloon statistics": reason}
        assert sec["monitor"]["reason"] == reason
        assert report["read_write"] is False
    text = run("kvm-inspect", "-u", MIXED, domain)
    assert text.returncode == 0, text
    assert f"kvm-inspect {domain} on {MIXED}" in text.stdout.splitlines()[0]
    assert f"  state: {state}" in text.stdout.splitlines()
    if not running:
        assert "== QEMU monitor: not available: domain is shut off: no running QEMU to ask" in text.stdout


def test_read_only_says_why():
    report = inspect_json("test:///default", "test", "--read-only")
    assert report["read_write"] is False
    assert report["sections"]["monitor"]["reason"] == "needs a read-write libvirt connection (--read-only given)"
    assert report["sections"]["disks"]["available"] is True


def test_snapshots_counted():
    report = inspect_json(node_uri("snapshots.xml"), "old")
    snaps = report["sections"]["snapshots"]["data"]
    assert snaps["count"] == 2 and {s["name"] for s in snaps["snapshots"]} >= {"before-upgrade"}


@pytest.mark.parametrize(("args", "code", "message"), [
    (["-u", "test:///default", "nope"], 2, "kvm-inspect: no domain named 'nope'"),
    (["-u", "test:///default"], 2, "the following arguments are required: domain"),
    (["-u", "test:///default", "test", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["-u", "qemu+unix:///system?socket=/nonexistent/sock", "test"], 1, "kvm-inspect: cannot connect to qemu+unix"),
])
def test_errors_are_one_line(args, code, message):
    result = run("kvm-inspect", *args)
    assert (result.returncode, result.stdout) == (code, ""), result
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
