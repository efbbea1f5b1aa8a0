"""metrics-kvm's Prometheus text, checked by promtool and scraped by a real Prometheus server
(Debian's prometheus 2.42).

Every Prometheus output (the hostile names of tests/data/nodes/names.xml, real QEMU guests, 1,000
test-driver domains, and the ``kvm_up 0`` of a failed run) must pass ``promtool check metrics``
(parsed and linted clean), be scraped whole (``up`` 1, ``scrape_samples_scraped`` = every sample
line, nothing logged at warn or error), and answer an HTTP API query for one hostile-named
domain's series by its exact name. The exposition endpoint is a small HTTP server in the test
process (tests/services/prometheus.py): in production that is the exporter or scrape wrapper.
The qemu test makes domains on qemu:///system: run it under ``flock -o /tmp/spk-hv.lock`` by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import nodes
from tests.conftest import DATA, node_uri, run
from tests.services.conftest import JOB_PREFIX, QEMU_PREFIX
from tests.services.prometheus import Prometheus, promtool_check

NAMES = node_uri("names.xml")
NO_DAEMON = "qemu+unix:///system?socket=/nonexistent/spk-no-libvirtd.sock"


def exposition(*args: str, code: int = 0) -> str:
    """metrics-kvm -f prometheus, which must exit ``code``; its stdout, passed by promtool."""
    result = run("metrics-kvm", "-f", "prometheus", *args, timeout=120)
    assert result.returncode == code, result
    checked = promtool_check(result.stdout)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), checked
    return result.stdout


def samples(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def promql(name: str) -> str:
    """A PromQL string literal for name (Go's escapes: JSON's are a subset of them)."""
    return json.dumps(name, ensure_ascii=False)


def scraped_whole(prometheus: Prometheus, slot: str, text: str) -> None:
    prometheus.expose(slot, text)
    report = prometheus.scraped(slot)
    assert report == {"up": 1, "samples": samples(text), "error": ""}, report


def series(prometheus: Prometheus, slot: str, metric: str, domain: str) -> dict[str, float]:
    """The series of one metric for one domain, by its exact name: {labels as JSON: value}."""
    found = prometheus.query(f'{metric}{{exposition="{slot}",domain={promql(domain)}}}')
    assert all(item["metric"]["domain"] == domain for item in found), found
    return {json.dumps(item["metric"], sort_keys=True, ensure_ascii=False): float(item["value"][1]) for item in found}


def test_hostile_names_scraped_and_queried_by_name(prometheus: Prometheus) -> None:
    text = exposition("-u", NAMES, "--fill")
    try:
        scraped_whole(prometheus, "names", text)
        [count] = prometheus.query('count(kvm_domain_up{exposition="names"})')
        assert float(count["value"][1]) == len(nodes.HOSTILE)
        for name in ('say "hi"', "new\nline", "trail\\", "tab\tname", "web.1", "日本語"):
            assert list(series(prometheus, "names", "kvm_domain_state", name).values()) == [nodes.HOSTILE[name]], name
        reads = series(prometheus, "names", "kvm_block_read_bytes_total", "a=b")
        assert len(reads) == 1 and '"device": "vda"' in next(iter(reads))
    finally:
        prometheus.expose("names", "")
    assert prometheus.log_problems() == []


def test_real_qemu_guests_scraped_and_queried_by_name(prometheus: Prometheus, qemu_named: dict[str, bool]) -> None:
    text = exposition("-u", "qemu:///system", "--match", f"^{QEMU_PREFIX}")
    try:
        scraped_whole(prometheus, "qemu", text)
        for name, running in qemu_named.items():
            assert list(series(prometheus, "qemu", "kvm_domain_state", name).values()) == [1 if running else 5], name
        cpu = series(prometheus, "qemu", "kvm_domain_cpu_seconds_total", f"{QEMU_PREFIX}web 1")
        assert len(cpu) == 1 and next(iter(cpu.values())) > 0
    finally:
        prometheus.expose("qemu", "")
    assert prometheus.log_problems() == []


def test_a_thousand_domains_scraped_whole(prometheus: Prometheus, tmp_path: Path) -> None:
    domains = nodes.many(1000)
    text = exposition("-u", f"test://{nodes.write(tmp_path / 'many.xml', domains)}", "--fill")
    try:
        scraped_whole(prometheus, "many", text)
        [count] = prometheus.query('count(kvm_domain_up{exposition="many"})')
        assert float(count["value"][1]) == 1000
        name = "new\nline 17"
        assert list(series(prometheus, "many", "kvm_domain_state", name).values()) == [domains[name]]
    finally:
        prometheus.expose("many", "")
    assert prometheus.log_problems() == []


@pytest.mark.parametrize("why", [["-u", NO_DAEMON], ["-u", NAMES, "--match", "zzz"]])
def test_a_failed_run_says_down(prometheus: Prometheus, why: list[str]) -> None:
    text = exposition(*why, code=3)
    assert samples(text) == 1
    try:
        scraped_whole(prometheus, "failure", text)
        [down] = prometheus.query('kvm_up{exposition="failure"}')
        assert float(down["value"][1]) == 0
    finally:
        prometheus.expose("failure", "")


def test_storage_pools_scraped_and_queried_by_name(prometheus: Prometheus) -> None:
    node = DATA / "nodes" / "pool-metrics.xml"
    text = exposition("-u", f"test://{node}")
    try:
        scraped_whole(prometheus, "pools", text)
        [count] = prometheus.query('count(kvm_pool_up{exposition="pools"} == 1)')
        assert float(count["value"][1]) == len(nodes.pools(node))
        for name, volumes in {"images": 2, "a.b": 1, "a_b": 0, "x|y=1 'q' te\tst": 0, 'say "hi"\\ =1,2': 0}.items():
            found = prometheus.query(f'kvm_pool_volumes{{exposition="pools",pool={promql(name)}}}')
            assert [(item["metric"]["pool"], float(item["value"][1])) for item in found] == [(name, volumes)], name
        [free] = prometheus.query('kvm_pool_available_bytes{exposition="pools",pool="images"}')
        assert float(free["value"][1]) == 60 * 2**30
    finally:
        prometheus.expose("pools", "")
    assert prometheus.log_problems() == []


def test_block_jobs_of_a_real_qemu_guest_scraped_and_queried(prometheus: Prometheus, qemu_blockjob: str) -> None:
    """metrics-kvm --block-jobs on a real ready active commit (tests/services/conftest.py)."""
    text = exposition("-u", "qemu:///system", "--block-jobs", "--match", f"^{JOB_PREFIX}")
    try:
        scraped_whole(prometheus, "qemu", text)
        assert list(series(prometheus, "qemu", "kvm_domain_block_jobs", qemu_blockjob).values()) == [1]
        ratio = series(prometheus, "qemu", "kvm_blockjob_progress_ratio", qemu_blockjob)
        assert len(ratio) == 1 and next(iter(ratio.values())) == 1.0
        assert '"job_type": "active-commit"' in next(iter(ratio)) and '"device": "vda"' in next(iter(ratio))
        kind = series(prometheus, "qemu", "kvm_blockjob_type", qemu_blockjob)
        assert list(kind.values()) == [4]
    finally:
        prometheus.expose("qemu", "")
    assert prometheus.log_problems() == []
