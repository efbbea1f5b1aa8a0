"""metrics-kvm's formats on statistics recorded from real QEMU guests, parsed back by real parsers."""

import json

from line_protocol_parser import parse_line
from prometheus_client.parser import text_string_to_metric_families

from sensu_kvm import metrics
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
