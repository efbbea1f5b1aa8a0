"""metrics-kvm's Graphite plaintext, sent to a real carbon-cache (Debian's graphite-carbon).

Each output goes to carbon's line receiver in one connection, as a TCP handler sends it; then the
whisper files carbon wrote are counted: one per line of the output (one per domain and metric),
one domain node per domain (no two domains merged), values read back with whisper-fetch, and no
line of carbon's logs says it refused a line or a metric. Three sources: the test driver with
the hostile names of tests/data/nodes/names.xml, real QEMU guests (tests/rig; the qemu tests run
under ``flock -o /tmp/spk-hv.lock`` by hand), and 1,000 test-driver domains.

Before issue 13 the first two merged domains: "web 1", "web.1" and "web_1" were all
``domain.web_1``, every three-letter CJK name ``___``, "café" and "caf_" both ``caf_``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import libvirt

from sensu_kvm.names import Names
from tests import nodes
from tests.conftest import DATA, node_uri, run
from tests.services.carbon import Carbon
from tests.services.conftest import JOB_PREFIX, QEMU_PREFIX

NAMES = node_uri("names.xml")
POOL_NODE = DATA / "nodes" / "pool-metrics.xml"  # six storage pools whose names collide as path nodes


def metrics(*args: str) -> tuple[str, dict[str, float]]:
    """metrics-kvm's Graphite output (which must succeed), and it as {path: value}; no path twice."""
    result = run("metrics-kvm", *args, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result
    lines = [line.split(" ") for line in result.stdout.splitlines()]
    assert all(len(parts) == 3 for parts in lines), [p for p in lines if len(p) != 3][:3]
    paths = Counter(parts[0] for parts in lines)
    assert max(paths.values()) == 1, [path for path, n in paths.items() if n > 1][:5]
    return result.stdout, {path: float(value) for path, value, _stamp in lines}


def stored(carbon: Carbon, scheme: str, output: tuple[str, dict[str, float]]) -> dict[str, set[str]]:
    """Send the output to carbon as it is and wait until it is all stored: the whisper files under
    scheme must be exactly the paths sent; each domain node's metrics (the rest of the path)."""
    text, sent = output
    carbon.send(text)
    found = carbon.wait_series(len(sent), under=scheme)
    assert found == set(sent)
    per_domain: dict[str, set[str]] = {}
    prefix = f"{scheme}.domain."
    for path in found:
        if path.startswith(prefix):
            node, metric = path[len(prefix):].split(".", 1)
            per_domain.setdefault(node, set()).add(metric)
    return per_domain


def last(carbon: Carbon, path: str) -> float | None:
    values = [value for _stamp, value in carbon.fetch(path) if value is not None]
    return values[-1] if values else None


def test_hostile_names_one_series_per_domain_and_metric(carbon: Carbon) -> None:
    scheme = "spk.names"
    per_domain = stored(carbon, scheme, metrics("-u", NAMES, "--fill", "--scheme", scheme))
    names = Names({name: nodes.domain_uuid(name) for name in nodes.HOSTILE})
    assert set(per_domain) == {names.graphite(name) for name in nodes.HOSTILE}
    assert len(per_domain) == len(nodes.HOSTILE)
    for name, state in nodes.HOSTILE.items():  # every domain has its own whole set of metrics
        active = state in (nodes.RUNNING, nodes.PAUSED)
        wanted = {"up", "state", "state_reason"} | ({"cpu_seconds", "block.vda.read_bytes"} if active else set())
        assert wanted <= per_domain[names.graphite(name)], name
    # The domains that used to share one node keep their own state: crashed, running, shut off...
    for name in ("web 1", "web.1", "web_1", "café", "caf_", "cafe", "日本語", "中文字", "p|q", "a=b", "a_b"):
        path = f"{scheme}.domain.{names.graphite(name)}.state"
        assert last(carbon, path) == nodes.HOSTILE[name], (name, path)
    assert carbon.log_problems() == []


def test_real_qemu_guests_one_series_per_domain_and_metric(carbon: Carbon, qemu_named: dict[str, bool]) -> None:
    scheme = "spk.qemu"
    per_domain = stored(carbon, scheme, metrics("-u", "qemu:///system", "--match", f"^{QEMU_PREFIX}",
                                                "--scheme", scheme))
    assert len(per_domain) == len(qemu_named)
    conn = libvirt.openReadOnly("qemu:///system")
    try:  # every domain of the host, as metrics-kvm builds its Names
        names = Names({dom.name(): dom.UUIDString() for dom in conn.listAllDomains(0)})
    finally:
        conn.close()
    for name, running in qemu_named.items():
        node = names.graphite(name)
        assert node in per_domain, (name, node, sorted(per_domain))
        assert last(carbon, f"{scheme}.domain.{node}.state") == (1 if running else 5), name
        if running:  # what only a running QEMU reports, each in its own series
            assert {"cpu_seconds", "memory_rss_bytes", "block.vda.read_bytes", "vcpu.0.seconds"} <= per_domain[node]
    assert carbon.log_problems() == []


def test_a_thousand_domains_stored_whole(carbon: Carbon, tmp_path: Path) -> None:
    scheme = "spk.many"
    domains = nodes.many(1000)
    uri = f"test://{nodes.write(tmp_path / 'many.xml', domains)}"
    output = metrics("-u", uri, "--fill", "--scheme", scheme)
    per_domain = stored(carbon, scheme, output)
    sent = output[1]
    assert len(per_domain) == 1000
    # every domain has as many series as it sent lines: none was written into another's
    lines_of = Counter(path.split(".")[3] for path in sent if path.startswith(f"{scheme}.domain."))
    assert {node: len(metrics_) for node, metrics_ in per_domain.items()} == dict(lines_of)
    names = Names({name: nodes.domain_uuid(name) for name in domains})
    name = "say \"hi\" 7"
    assert last(carbon, f"{scheme}.domain.{names.graphite(name)}.state") == domains[name]
    assert carbon.log_problems() == []


def test_names_too_long_for_a_file_name_are_cut(carbon: Carbon, tmp_path: Path) -> None:
    scheme = "spk.long"
    domains = {"日" * 100: nodes.RUNNING, "日" * 100 + "x": nodes.RUNNING, "a" * 300: nodes.PAUSED, "ok": nodes.RUNNING}
    uri = f"test://{nodes.write(tmp_path / 'long.xml', domains)}"
    per_domain = stored(carbon, scheme, metrics("-u", uri, "--scheme", scheme))
    assert len(per_domain) == len(domains)
    names = Names({name: nodes.domain_uuid(name) for name in domains})
    for name, state in domains.items():
        assert last(carbon, f"{scheme}.domain.{names.graphite(name)}.state") == state, name
    assert carbon.log_problems() == []


def test_storage_pools_one_series_per_pool_and_metric(carbon: Carbon) -> None:
    scheme = "spk.pools"
    text = metrics("-u", f"test://{POOL_NODE}", "--no-pools", "--scheme", scheme)[0]
    assert ".pool." not in text
    stored(carbon, scheme, metrics("-u", f"test://{POOL_NODE}", "--scheme", scheme))
    pools = nodes.pools(POOL_NODE)
    names = Names(pools)
    for name, volumes in {"images": 2, "a.b": 1, "a_b": 0, "x|y=1 'q' te\tst": 0, "x_y_1__q__te_st": 0}.items():
        node = f"{scheme}.pool.{names.graphite(name)}"
        assert (last(carbon, f"{node}.volumes"), last(carbon, f"{node}.state")) == (volumes, 2), name
    assert last(carbon, f"{scheme}.pool.images.available_bytes") == 60 * 2**30
    assert len({names.graphite(name) for name in pools}) == len(pools)
    assert carbon.log_problems() == []


def test_block_jobs_of_a_real_qemu_guest_stored(carbon: Carbon, qemu_blockjob: str) -> None:
    """metrics-kvm --block-jobs on a real ready active commit (tests/services/conftest.py)."""
    scheme = "spk.jobs"
    per_domain = stored(carbon, scheme, metrics("-u", "qemu:///system", "--block-jobs", "--match", f"^{JOB_PREFIX}",
                                                "--scheme", scheme))
    (node,) = per_domain
    jobs = {"blockjob.vda." + f for f in ("type", "progress_current", "progress_end", "progress_ratio",
                                          "bandwidth_bytes_per_second")}
    assert jobs | {"block_jobs", "up"} <= per_domain[node]
    assert last(carbon, f"{scheme}.domain.{node}.block_jobs") == 1
    assert last(carbon, f"{scheme}.domain.{node}.blockjob.vda.progress_ratio") == 1.0
    assert last(carbon, f"{scheme}.domain.{node}.blockjob.vda.type") == 4
    assert carbon.log_problems() == []
