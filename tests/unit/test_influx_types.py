"""InfluxDB field types: one per field, declared in metrics.ALL_FIELDS, never taken from the value.

InfluxDB 1.x keeps the type a field first had in a shard and refuses a whole batch in which one
value has another type ("field type conflict"): an idle disk's write_seconds must be 0.0, not 0i.
"""

from __future__ import annotations

import json

import pytest
from line_protocol_parser import parse_line

from sensu_kvm import metrics
from tests.conftest import DATA


def test_every_field_has_a_type_and_seconds_are_floats() -> None:
    for (measurement, name), field in metrics.ALL_FIELDS.items():
        assert field.type in (metrics.INT, metrics.FLOAT), (measurement, name)
        want = metrics.FLOAT if name.endswith(("seconds", "_ratio")) else metrics.INT  # Field: "and any ratio"
        assert field.type == want, (measurement, name)


@pytest.mark.parametrize(("value", "kind", "text"), [
    (0, metrics.FLOAT, "0.0"), (3, metrics.FLOAT, "3.0"), (1.5e-05, metrics.FLOAT, "1.5e-05"),
    (0, metrics.INT, "0i"), (134217728.0, metrics.INT, "134217728i"), (2**63 - 1, metrics.INT, f"{2**63 - 1}i"),
    (float("nan"), metrics.FLOAT, None), (float("inf"), metrics.INT, None),
])
def test_values_keep_their_fields_type(value: float, kind: str, text: str | None) -> None:
    assert metrics.influx_value(value, kind) == text


def _types(text: str) -> dict[tuple[str, str], set[type]]:
    seen: dict[tuple[str, str], set[type]] = {}
    for line in text.splitlines():
        point = parse_line(line)
        for name, value in point["fields"].items():
            seen.setdefault((point["measurement"], name), set()).add(type(value))
    return seen


def test_zero_and_fractional_seconds_have_one_type_in_one_batch() -> None:
    first, second = json.loads((DATA / "blkstat-qemu-writer.json").read_text())
    idle = {**first["stats"], "block.0.wr.times": 0, "block.0.rd.times": 0, "vcpu.0.wait": 0}
    points = (metrics.domain_points("idle", idle, None) + metrics.domain_points("busy", second["stats"], None)
              + metrics.domain_points("gone", {}, 'cannot read: "x" \\ gone\nagain'))
    text = metrics.influxdb(points, "kvm1", 1_700_000_000_000_000_000)
    assert "write_seconds=0.0," in text
    for (measurement, name), kinds in _types(text).items():
        if name == "error":
            assert kinds == {str}
            continue
        declared = metrics.ALL_FIELDS[(measurement.removeprefix("kvm_"), name)].type
        assert kinds == ({float} if declared == metrics.FLOAT else {int}), (measurement, name, kinds)
    gone = [parse_line(line) for line in text.splitlines() if "domain=gone" in line]
    assert gone[0]["fields"] == {"up": 0, "error": 'cannot read: "x" \\ gone\\nagain'}


def test_handler_batches_keep_the_order_and_both_limits() -> None:
    from sensu_kvm.handlers.influxdb import batches  # noqa: PLC0415 (the handler's pure part)

    lines = [f"m,n={n:02d} f=1i 1" for n in range(12)]
    by_lines = list(batches(lines, 5))
    assert [len(b) for b in by_lines] == [5, 5, 2] and [line for b in by_lines for line in b] == lines
    size = len(lines[0]) + 1
    assert [len(b) for b in batches(lines, 100, max_bytes=3 * size)] == [3, 3, 3, 3]
    assert [len(b) for b in batches(["x" * 50, "m f=1i"], 100, max_bytes=10)] == [1, 1]  # a long line alone
