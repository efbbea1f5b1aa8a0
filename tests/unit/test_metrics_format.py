"""metrics-kvm's formats on statistics recorded from real QEMU guests, parsed back by real parsers."""

import json

from line_protocol_parser import parse_line
from prometheus_client.parser import text_string_to_metric_families

from sensu_kvm import metrics
from sensu_kvm.names import Names
from tests.conftest import DATA


def points():
    first, _ = json.loads((DATA / "blkstat-qemu-writer.json").read_text())
    broken = metrics.domain_points('bad "one", =x', {}, "cannot read: gone")
    return metrics.host_points({"kernel": 10**9, "user": 2 * 10**9, "idle": 3, "iowait": 0},
                               {"total": 1024}) + metrics.domain_points(first["name"], first["stats"], None) + broken


def test_domain_points_cover_every_group():
    measurements = {p.measurement for p in points()}
    assert measurements == {"host", "domain", "vcpu", "block"}
    domain = next(p for p in points() if p.measurement == "domain" and p.fields["up"] == 1)
    assert domain.fields["memory_actual_bytes"] == 128 * 2**20
    assert domain.fields["cpu_seconds"] > 0


def test_influxdb_round_trip():
    lines = metrics.influxdb(points(), "kvm1", 1_700_000_000_000_000_000).splitlines()
    parsed = [parse_line(line) for line in lines]
    block = next(p for p in parsed if p["measurement"] == "kvm_block")
    assert block["tags"] == {"host": "kvm1", "domain": "spk-test-writer", "device": "vda"}
    assert isinstance(block["fields"]["write_ops"], int)
    bad = next(p for p in parsed if p["tags"].get("domain") == 'bad "one", =x')
    assert bad["fields"] == {"up": 0, "error": "cannot read: gone"}


def test_prometheus_round_trip():
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus(points()))}
    assert families["kvm_block_write_bytes"].type == "counter"
    assert families["kvm_host_memory_total_bytes"].samples[0].value == 1024 * 1024
    up = {s.labels["domain"]: s.value for s in families["kvm_domain_up"].samples}
    assert up == {"spk-test-writer": 1, 'bad "one", =x': 0}


def test_graphite_paths():
    text = metrics.graphite(points(), "kvm1.kvm", 1_700_000_000)
    lines = dict(line.rsplit(" ", 2)[0:2] for line in text.splitlines())
    assert lines["kvm1.kvm.host.cpu_user_seconds"] == "2"
    assert "kvm1.kvm.domain.spk-test-writer.block.vda.write_bytes" in lines
    assert lines["kvm1.kvm.domain.bad__one____x.up"] == "0"


def test_json_document():
    doc = json.loads(metrics.as_json(points(), "kvm1", 1.5))
    assert doc["host"] == "kvm1"
    assert doc["points"][-1] == {"measurement": "domain", "tags": {"domain": 'bad "one", =x'},
                                 "fields": {"up": 0}, "error": "cannot read: gone"}


def near_misses():
    """Domains whose Graphite nodes were one before issue 13: web 1, web.1 and web_1; two CJK names."""
    uuids = {"web 1": "11111111-0000-0000-0000-000000000000", "web.1": "22222222-0000-0000-0000-000000000000",
             "web_1": "33333333-0000-0000-0000-000000000000", "日本語": "44444444-0000-0000-0000-000000000000",
             "中文字": "55555555-0000-0000-0000-000000000000", "spare": "66666666-0000-0000-0000-000000000000"}
    states = {"web 1": 1, "web.1": 6, "web_1": 5, "日本語": 1, "中文字": 3, "spare": 5}
    return Names(uuids), [p for name, state in states.items() if name != "spare"
                          for p in metrics.domain_points(name, {"state.state": state}, None)]


def test_graphite_keeps_near_miss_domains_apart():
    names, pts = near_misses()
    lines = dict(line.rsplit(" ", 2)[0:2] for line in metrics.graphite(pts, "h.kvm", 1, names).splitlines())
    states = {path.split(".")[3]: value for path, value in lines.items() if path.endswith(".state")}
    assert states == {"web_1-11111111": "1", "web_1-22222222": "6", "web_1": "5", "日本語": "1", "中文字": "3"}


def test_graphite_nodes_do_not_depend_on_the_selection():
    names, pts = near_misses()  # built from every domain of the host, then one domain chosen
    one = [p for p in pts if p.tags["domain"] == "web.1"]
    assert metrics.graphite(one, "h.kvm", 1, names).splitlines()[0] == "h.kvm.domain.web_1-22222222.up 1 1"


def test_prometheus_labels_are_the_names_themselves():
    names, pts = near_misses()
    text = metrics.prometheus(pts, names)
    assert text.startswith("# HELP kvm_up ") and "\nkvm_up 1\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["domain"]: s.value for s in families["kvm_domain_state"].samples} == {
        "web 1": 1, "web.1": 6, "web_1": 5, "日本語": 1, "中文字": 3}
    assert [s.value for s in families["kvm_up"].samples] == [1]


def test_prometheus_down_is_one_gauge():
    [family] = text_string_to_metric_families(metrics.prometheus_up(0) + "\n")
    assert (family.name, family.type, [s.value for s in family.samples]) == ("kvm_up", "gauge", [0])


def test_graphite_node_fits_a_file_name():
    long_cjk, longer = "日" * 100, "日" * 100 + "x"  # 300 bytes of UTF-8: carbon's whisper file cannot be made
    names = Names({long_cjk: "11111111-0000-0000-0000-000000000000", longer: "22222222-0000-0000-0000-000000000000"})
    pts = [p for name in (long_cjk, longer) for p in metrics.domain_points(name, {"state.state": 1}, None)]
    nodes = {line.split(".")[3] for line in metrics.graphite(pts, "h.kvm", 1, names).splitlines()}
    assert nodes == {"日" * 66 + "-11111111", "日" * 66 + "-22222222"}
    assert all(len(node.encode()) <= 255 for node in nodes)


# --- storage pools (issue 16) ---------------------------------------------------------------------

HOSTILE_POOLS = {"images": "5b1c7e8a-0000-4000-8000-000000000001", "a b": "5b1c7e8a-0000-4000-8000-000000000002",
                 "a_b": "5b1c7e8a-0000-4000-8000-000000000003", 'q"x\\\ny, =z': "5b1c7e8a-0000-4000-8000-000000000004",
                 "off": "5b1c7e8a-0000-4000-8000-000000000005", "gone": "5b1c7e8a-0000-4000-8000-000000000006"}


def pool_points():
    return [metrics.pool_point("images", 2, 100 * 2**30, 40 * 2**30, 60 * 2**30, 2),
            metrics.pool_point("a b", 2, 2**30, 0, 2**30, 0),
            metrics.pool_point("a_b", 3, 2**30, 2**29, 2**29, 1),
            metrics.pool_point('q"x\\\ny, =z', 2, 10, 5, 5, 7),
            metrics.pool_point("off", 0, 0, 0, 0, 0),
            metrics.pool_point("gone", 2, 0, 0, 0, 0, "not read: time ran out while reading the storage pools")]


def test_pool_points_leave_out_what_an_inactive_or_unread_pool_lacks():
    by_name = {p.tags["pool"]: p for p in pool_points()}
    assert by_name["images"].fields == {"up": 1, "state": 2, "capacity_bytes": 100 * 2**30,
                                        "allocation_bytes": 40 * 2**30, "available_bytes": 60 * 2**30, "volumes": 2}
    assert by_name["off"].fields == {"up": 1, "state": 0}  # libvirt says 0 bytes of an inactive pool: not a size
    assert (by_name["gone"].fields, by_name["gone"].error) == ({"up": 0}, "not read: time ran out while reading "
                                                                             "the storage pools")


def test_pools_in_graphite_are_one_injective_node_each():
    text = metrics.graphite(pool_points(), "h.kvm", 1, pools=Names(HOSTILE_POOLS))
    nodes = {line.split(".")[3] for line in text.splitlines()}
    assert {"images", "a_b", "a_b-5b1c7e8a", "off", "gone"} <= nodes and len(nodes) == 6
    assert "h.kvm.pool.images.capacity_bytes 107374182400 1" in text.splitlines()
    assert all(len(line.split(" ")) == 3 for line in text.splitlines())  # no space or newline in any path


def test_pools_in_influxdb_parse_back_with_their_names_and_types():
    lines = metrics.influxdb(pool_points(), "kvm1", 10**18, pools=Names(HOSTILE_POOLS)).splitlines()
    parsed = [parse_line(line) for line in lines]
    assert {p["measurement"] for p in parsed} == {"kvm_pool"}
    tags = [p["tags"]["pool"] for p in parsed]
    assert len(set(tags)) == 6 and 'q"x/ y, =z' in tags and "a b" in tags  # newline: a space; a backslash before it: /
    images = next(p for p in parsed if p["tags"]["pool"] == "images")
    assert images["fields"] == {"up": 1, "state": 2, "capacity_bytes": 100 * 2**30, "allocation_bytes": 40 * 2**30,
                                "available_bytes": 60 * 2**30, "volumes": 2}
    assert all(isinstance(v, int) for p in parsed for k, v in p["fields"].items() if k != "error")
    gone = next(p for p in parsed if p["tags"]["pool"] == "gone")
    assert gone["fields"] == {"up": 0, "error": "not read: time ran out while reading the storage pools"}


def test_pools_in_prometheus_keep_their_names_as_labels():
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus(pool_points()))}
    assert {"kvm_pool_up", "kvm_pool_state", "kvm_pool_capacity_bytes", "kvm_pool_allocation_bytes",
            "kvm_pool_available_bytes", "kvm_pool_volumes"} <= set(families)
    volumes = {s.labels["pool"]: s.value for s in families["kvm_pool_volumes"].samples}
    assert volumes == {"images": 2, "a b": 0, "a_b": 1, 'q"x\\\ny, =z': 7}
    assert families["kvm_pool_state"].type == "gauge"
    assert {s.labels["pool"]: s.value for s in families["kvm_pool_up"].samples}["gone"] == 0


def test_pools_in_json_keep_the_names_and_the_error():
    doc = json.loads(metrics.as_json(pool_points(), "kvm1", 1.5))
    pools = {p["tags"]["pool"]: p for p in doc["points"]}
    assert set(pools) == set(HOSTILE_POOLS)
    assert pools["gone"]["error"].startswith("not read: time ran out")


def test_pools_not_read_are_one_line_each_kind_on_stderr():
    from sensu_kvm import virt  # noqa: PLC0415
    from sensu_kvm.checks import metrics as command  # noqa: PLC0415

    late = virt.late_error("reading the storage pools' sizes of 3 pools")
    points = [metrics.pool_point("p1", 2, 0, 0, 0, 0, late), metrics.pool_point("p2", 2, 0, 0, 0, 0, late),
              metrics.pool_point("p3", 2, 0, 0, 0, 0, "storage pool not found"), *pool_points()[:1]]
    assert command.unread(points) == [
        "time ran out while reading the storage pools' sizes of 3 pools: 2 storage pools not read (up 0); raise -t "
        "or --concurrency", "1 storage pool not read (up 0): storage pool not found"]
    assert command.unread(pool_points()[:5]) == []


def test_block_jobs_in_every_format():
    """--block-jobs: a ready active commit (as QEMU reported it: tests/data/blockjob-qemu-chain.json)
    on a domain with a hostile name, in the four formats, parsed back."""
    from sensu_kvm.blockjobs import Job  # noqa: PLC0415

    ready = json.loads((DATA / "blockjob-qemu-chain.json").read_text())["ready"]
    job = Job("vda", ready["type"], ready["cur"], ready["end"], 4 * 2**20)
    points = metrics.domain_points('web "1"', {"state.state": 1}, None, [job]) + \
        metrics.domain_points("idle", {"state.state": 1}, None, [])
    (influx,) = [parse_line(line) for line in metrics.influxdb(points, "kvm1", 1).splitlines()
                 if line.startswith("kvm_blockjob")]
    assert influx["tags"] == {"host": "kvm1", "domain": 'web "1"', "device": "vda", "job_type": "active-commit"}
    assert influx["fields"] == {"type": 4, "progress_current": 8388608, "progress_end": 8388608,
                                "progress_ratio": 1.0, "bandwidth_bytes_per_second": 4194304}
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus(points))}
    (sample,) = families["kvm_blockjob_progress_ratio"].samples
    assert (sample.labels, sample.value) == ({"domain": 'web "1"', "device": "vda", "job_type": "active-commit"}, 1.0)
    assert {s.labels["domain"]: s.value for s in families["kvm_domain_block_jobs"].samples} == {'web "1"': 1, "idle": 0}
    lines = metrics.graphite(points, "kvm", 1).splitlines()
    assert "kvm.domain.web__1_.blockjob.vda.progress_current 8388608 1" in lines
    assert "kvm.domain.idle.block_jobs 0 1" in lines
    doc = json.loads(metrics.as_json(points, "kvm1", 1.0))
    assert doc["points"][1] == {"measurement": "blockjob", "tags": {"domain": 'web "1"', "device": "vda",
                                                                     "job_type": "active-commit"},
                                "fields": {"type": 4, "progress_current": 8388608, "progress_end": 8388608,
                                           "progress_ratio": 1.0, "bandwidth_bytes_per_second": 4194304}}
    without = metrics.domain_points("idle", {"state.state": 1}, None)  # not asked: no field at all
    assert "block_jobs" not in without[0].fields
