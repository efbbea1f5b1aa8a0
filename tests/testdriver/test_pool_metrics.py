"""metrics-kvm's storage pool metrics (issue 16) as real processes on libvirt's test driver
(tests/data/nodes/pool-metrics.xml: two domains and six pools whose names collide once each
consumer's rules are applied), parsed back by the real parsers; --listen serves them too."""

import json
import re

from line_protocol_parser import parse_line
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import node_uri, run
from tests.listener import families, listening

NODE = node_uri("pool-metrics.xml")
POOLS = {"images": 2, "a.b": 1, "a_b": 0, "x|y=1 'q' te\tst": 0, "x_y_1__q__te_st": 0, 'say "hi"\\ =1,2': 0}
GIB = 2**30
PORT = 21210  # 21200-21299: the pool metrics work's range


def metrics(*args: str) -> str:
    result = run("metrics-kvm", "-u", NODE, *args)
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout


def test_every_pool_in_json_with_the_sizes_check_kvm_pool_reads():
    doc = json.loads(metrics("-f", "json"))
    pools = {p["tags"]["pool"]: p["fields"] for p in doc["points"] if p["measurement"] == "pool"}
    assert {name: f["volumes"] for name, f in pools.items()} == POOLS
    assert pools["images"] == {"up": 1, "state": 2, "capacity_bytes": 100 * GIB, "allocation_bytes": 40 * GIB,
                               "available_bytes": 60 * GIB, "volumes": 2}
    check = run("check-kvm-pool", "-u", NODE, "-p", "images")  # the same reading code, the same figures
    assert "images_available=64424509440B;" in check.stdout and "images_volumes=2;" in check.stdout, check


def test_graphite_gives_each_pool_a_node_of_its_own():
    paths = [line.split(" ")[0] for line in metrics("-s", "kvm").splitlines() if line.startswith("kvm.pool.")]
    nodes = {path.split(".")[2] for path in paths}
    assert len(nodes) == len(POOLS)  # injective: 'a.b' and 'a_b', the tab name and the plain one stay apart
    assert {"images", "a_b", "x_y_1__q__te_st"} <= nodes
    assert all(re.fullmatch(r"kvm\.pool\.[\w-]+\.(up|state|capacity_bytes|allocation_bytes|available_bytes|volumes)",
                            path, re.ASCII) for path in paths), paths
    assert "kvm.pool.images.volumes" in paths


def test_influxdb_lines_parse_back_one_series_per_pool():
    parsed = [parse_line(line) for line in metrics("-f", "influxdb").splitlines()]
    pools = {p["tags"]["pool"]: p for p in parsed if p["measurement"] == "kvm_pool"}
    assert len(pools) == len(POOLS)
    assert {"a.b", "a_b", "images", "x_y_1__q__te_st", "x|y=1 'q' te st", 'say "hi"/ =1,2'} == set(pools)
    assert pools["a.b"]["fields"]["volumes"] == 1 and isinstance(pools["a.b"]["fields"]["capacity_bytes"], int)


def test_prometheus_labels_are_the_pool_names_themselves():
    found = {f.name: f for f in text_string_to_metric_families(metrics("-f", "prometheus"))}
    volumes = {s.labels["pool"]: s.value for s in found["kvm_pool_volumes"].samples}
    assert volumes == POOLS
    assert {s.labels["pool"]: s.value for s in found["kvm_pool_state"].samples}["images"] == 2


def test_pools_whatever_the_domains_chosen_and_none_with_no_pools():
    chosen = metrics("-d", "web1")
    assert ".domain.web1.up 1 " in chosen and ".domain.db1." not in chosen
    assert sum(".pool." in line and line.split(" ")[0].endswith(".volumes") for line in chosen.splitlines()) == 6
    without = metrics("--no-pools", "-f", "prometheus")
    assert "kvm_pool" not in without and 'kvm_domain_up{domain="web1"} 1' in without


def test_listen_serves_the_pools():
    with listening(PORT, "-u", NODE) as server:
        scraped = server.metrics()
    expected = families(metrics("-f", "prometheus"))
    got = families(scraped)
    pool_families = sorted(name for name in expected if name.startswith("kvm_pool_"))
    assert len(pool_families) == 6
    assert {n: got[n] for n in pool_families} == {n: expected[n] for n in pool_families}


def test_pools_not_read_in_time_say_up_0_and_one_line(tmp_path, fault_env):
    pools = "".join(f"<pool type='dir'><name>pool-{i:04d}</name><uuid>6c2d8f9b-2e1b-4d40-8b21-{i:012d}</uuid>"
                    f"<target><path>/pools/{i}</path></target></pool>" for i in range(40))
    (tmp_path / "many.xml").write_text(f"<node>{pools}</node>")
    env = {**fault_env, "SPK_FAULT": "slow-pool-calls:0.5"}
    result = run("metrics-kvm", "-u", f"test://{tmp_path / 'many.xml'}", "-f", "prometheus", "-t", "2",
                 "--concurrency", "2", env=env)
    assert result.returncode == 0, result
    up = re.findall(r'^kvm_pool_up\{pool="pool-\d{4}"\} (\d)$', result.stdout, re.M)
    found = re.fullmatch(r"metrics-kvm: time ran out while reading the storage pools' sizes of 40 pools: (\d+) storage "
                         r"pools not read \(up 0\); raise -t or --concurrency\n", result.stderr)
    assert found and len(up) == 40 and up.count("0") == int(found.group(1)) > 20, result
    volumes = re.findall(r'^kvm_pool_volumes\{pool="pool-\d{4}"\} 0$', result.stdout, re.M)
    assert len(volumes) == up.count("1") > 0  # what was read is there whole


def test_a_pool_that_fails_is_up_0_and_one_that_vanished_is_left_out(fault_env):
    env = {**fault_env, "SPK_FAULT": "pool-fails:a.b"}
    result = run("metrics-kvm", "-u", NODE, "-f", "json", env=env)
    assert result.returncode == 0, result
    assert result.stderr == "metrics-kvm: 1 storage pool not read (up 0): injected fault: cannot read the pool\n"
    pools = {p["tags"]["pool"]: p for p in json.loads(result.stdout)["points"] if p["measurement"] == "pool"}
    assert pools["a.b"]["fields"] == {"up": 0} and pools["a.b"]["error"] == "injected fault: cannot read the pool"
    assert pools["images"]["fields"]["up"] == 1
    env = {**fault_env, "SPK_FAULT": "pool-gone:a.b"}  # undefined between the listing and its read
    result = run("metrics-kvm", "-u", NODE, "-f", "prometheus", env=env)
    assert (result.returncode, result.stderr) == (0, ""), result
    assert 'pool="a.b"' not in result.stdout and 'kvm_pool_up{pool="images"} 1' in result.stdout
