"""metrics-kvm -f influxdb into a real InfluxDB 1.x (Debian's influxdb 1.6.7, tests/services/influxdb.py).

Every point must be accepted by /write (HTTP 204: InfluxDB drops a whole batch on one bad line,
for example a field written as an integer in one point and as a float in another, "field type
conflict"), and read back: per measurement, as many values of each field as the output wrote, and
as many series as lines in one run (no two domains, disks or vCPUs share a series). Each case
writes into a database of its own, created fresh.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests import nodes
from tests.conftest import DATA, node_uri, succeeds
from tests.services.conftest import JOB_PREFIX
from tests.services.influxdb import InfluxDB


def _cut(text: str, separator: str, quotes: bool = False) -> list[str]:
    """Split at each separator that InfluxDB 1.x's parser (models/points.go) takes as one: not
    preceded by a backslash and, in a field set, not inside a double-quoted string."""
    parts, start, quoted = [], 0, False
    for at, char in enumerate(text):
        escaped = at > 0 and text[at - 1] == "\\"
        if quotes and char == '"' and not escaped:
            quoted = not quoted
        elif char == separator and not escaped and not quoted:
            parts.append(text[start:at])
            start = at + 1
    return [*parts, text[start:]]


def _split(line: str) -> tuple[str, list[str]]:
    """A line's series key and its field names."""
    key, _, rest = line.partition(" ")
    while key.endswith("\\") and rest:  # an escaped space inside the key
        more, _, rest = rest.partition(" ")
        key += " " + more
    pieces = _cut(rest, " ", quotes=True)
    assert len(pieces) == 2, line  # the field set and the time stamp
    return key, [_cut(field, "=")[0] for field in _cut(pieces[0], ",", quotes=True)]


def expected(text: str) -> tuple[dict[str, Counter[str]], Counter[str]]:
    """From line protocol: {measurement: Counter(field: values)} and Counter(measurement: lines)."""
    fields: dict[str, Counter[str]] = {}
    lines: Counter[str] = Counter()
    for line in text.splitlines():
        key, names = _split(line)
        measurement = _cut(key, ",")[0]
        lines[measurement] += 1
        fields.setdefault(measurement, Counter()).update(names)
    return fields, lines


def stored(influxdb: InfluxDB, db: str, measurement: str) -> Counter[str]:
    """How many values of each field the database holds for a measurement (SELECT count(*))."""
    results = influxdb.query(f'SELECT count(*) FROM "{measurement}"', db)
    series = results[0].get("series", [])
    if not series:
        return Counter()
    columns, values = series[0]["columns"], series[0]["values"][0]
    return Counter({c.removeprefix("count_"): int(v) for c, v in zip(columns, values, strict=True)
                    if c != "time" and v})


def write_runs(influxdb: InfluxDB, db: str, runs: list[str]) -> None:
    for n, text in enumerate(runs):
        answer = influxdb.write(db, text)
        assert answer.status == 204, f"run {n + 1} of {len(runs)}: HTTP {answer.status} {answer.body}"


def assert_stored_whole(influxdb: InfluxDB, db: str, runs: list[str]) -> None:
    """Every field value of every run is in the database, and one run's lines are as many series."""
    want: dict[str, Counter[str]] = {}
    for text in runs:
        fields, lines = expected(text)
        for measurement, counts in fields.items():
            want.setdefault(measurement, Counter()).update(counts)
    for measurement, counts in want.items():
        assert stored(influxdb, db, measurement) == counts, measurement
        assert len(influxdb.series(db, measurement)) == lines[measurement], measurement


def metrics(uri: str, *args: str) -> str:
    text = succeeds("metrics-kvm", "-u", uri, "-f", "influxdb", *args)
    assert text.strip(), "no output"
    return text


def domain_rows(influxdb: InfluxDB, db: str, name: str) -> list[list[object]]:
    """The kvm_domain rows of one domain, selected by its exact name (InfluxQL string literal)."""
    literal = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    results = influxdb.query(f'SELECT "up", "domain" FROM "kvm_domain" WHERE "domain" = {literal}', db)
    series = results[0].get("series", [])
    return list(series[0]["values"]) if series else []


def test_hostile_names_two_runs_stored_whole(influxdb: InfluxDB, database: str) -> None:
    uri = node_uri("names.xml")
    runs = [metrics(uri, "--fill")]
    time.sleep(0.01)  # another timestamp
    runs.append(metrics(uri, "--fill"))
    write_runs(influxdb, database, runs)
    assert_stored_whole(influxdb, database, runs)
    domains = influxdb.series(database, "kvm_domain")
    assert len(domains) == len(nodes.HOSTILE)
    for name in ("web 1", "a=b", "x,y", "it's", 'say "hi"', "café", "日本語"):  # names InfluxDB takes as they are
        rows = domain_rows(influxdb, database, name)
        assert len(rows) == 2, (name, rows)
        assert all(row[1] == 1 and row[2] == name for row in rows), rows


def test_a_thousand_domains_no_shared_series(influxdb: InfluxDB, database: str, tmp_path: Path) -> None:
    domains = nodes.many(1000)
    uri = f"test://{nodes.write(tmp_path / 'many.xml', domains)}"
    runs = [metrics(uri, "--fill")]
    write_runs(influxdb, database, runs)
    assert_stored_whole(influxdb, database, runs)
    assert len(influxdb.series(database, "kvm_domain")) == len(domains)
    assert len(domain_rows(influxdb, database, "web 1 3")) == 1


def pool_rows(influxdb: InfluxDB, db: str, name: str) -> list[list[object]]:
    """The kvm_pool rows of one storage pool, selected by its exact tag value."""
    literal = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    results = influxdb.query(f'SELECT "volumes", "available_bytes" FROM "kvm_pool" WHERE "pool" = {literal}', db)
    series = results[0].get("series", [])
    return [row[1:] for row in series[0]["values"]] if series else []


def test_storage_pools_two_runs_stored_whole(influxdb: InfluxDB, database: str) -> None:
    node = DATA / "nodes" / "pool-metrics.xml"
    uri = f"test://{node}"
    runs = [metrics(uri)]
    time.sleep(0.01)
    runs.append(metrics(uri))
    write_runs(influxdb, database, runs)
    assert_stored_whole(influxdb, database, runs)
    assert len(influxdb.series(database, "kvm_pool")) == len(nodes.pools(node))
    assert pool_rows(influxdb, database, "images") == [[2, 60 * 2**30]] * 2
    assert pool_rows(influxdb, database, "a.b") == [[1, 95 * 2**30]] * 2
    assert len(pool_rows(influxdb, database, 'say "hi"/ =1,2')) == 2  # a backslash before a space becomes /


def test_block_jobs_of_a_real_qemu_guest_stored_whole(influxdb: InfluxDB, database: str, qemu_blockjob: str) -> None:
    """metrics-kvm --block-jobs on a real ready active commit (tests/services/conftest.py), two runs."""
    runs = [metrics("qemu:///system", "--block-jobs", "--match", f"^{JOB_PREFIX}") for _ in range(2)]
    assert all("kvm_blockjob," in text for text in runs)
    write_runs(influxdb, database, runs)
    assert_stored_whole(influxdb, database, runs)
    (series,) = influxdb.series(database, "kvm_blockjob")
    assert "job_type=active-commit" in series and "device=vda" in series, series
    results = influxdb.query('SELECT "type", "progress_ratio", "progress_end" FROM "kvm_blockjob"', database)
    rows = results[0]["series"][0]["values"]
    assert len(rows) == 2 and all(row[1] == 4 and row[2] == 1.0 and row[3] > 0 for row in rows), rows
