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
