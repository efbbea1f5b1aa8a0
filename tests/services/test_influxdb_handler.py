"""handler-kvm-influxdb between a Sensu stand-in and a real InfluxDB 1.x (tests/services/influxdb.py).

Sensu itself cannot run here (no Debian package), so these tests stand in for the Sensu Core 1.x
server, following its source (sensu/sensu, lib/sensu/server): process.rb's create_event builds
the event from the client and the whole check result (the output is cut to 255 characters only in
the copy stored in Redis, truncate_check_output, not in the event handlers get); mutate.rb's
default "json" mutator serialises it; handle.rb's pipe_handler spawns the handler's command with
that JSON on stdin, and udp_handler sends the mutated data as one datagram (send_datagram), which
with the only_check_output mutator is the check output itself: the shipped handler-influxdb.json
before this handler.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import nodes
from tests.conftest import run
from tests.services import influxdb as influxdb_service
from tests.services.influxdb import InfluxDB
from tests.services.test_influxdb import assert_stored_whole, domain_rows, expected, metrics

HANDLER = "handler-kvm-influxdb"
SECRET = "s3cr3t-never-shown"
MAX_UDP_PAYLOAD = 65_507  # IPv4: 65,535 minus the IP and UDP headers


def sensu_core_event(output: str, status: int = 0) -> str:
    """The event Sensu Core 1.x pipes to a handler for a standalone metric check (process.rb
    create_event: id, client, check with history, occurrences, action, timestamp; event_silenced?
    adds silenced and silenced_by), serialised by the default json mutator."""
    now = int(time.time())
    event: dict[str, Any] = {
        "id": "5c9b3b4e-1f7c-4f0e-9a0b-5f3c8d2e7a61",
        "client": {"name": "kvm1", "address": "127.0.0.1", "subscriptions": ["client:kvm1"],
                   "version": "1.10.0", "timestamp": now},
        "check": {"name": "metrics-kvm", "command": "metrics-kvm -u qemu:///system -t 10 --format influxdb",
                  "type": "metric", "standalone": True, "interval": 60, "timeout": 20, "handlers": ["influxdb"],
                  "issued": now, "executed": now, "duration": 0.4, "output": output, "status": status,
                  "history": [str(status)], "total_state_change": 0},
        "occurrences": 1, "occurrences_watermark": 1, "last_ok": now, "action": "create", "timestamp": now,
        "silenced": False, "silenced_by": [],
    }
    return json.dumps(event)


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> str:
    """metrics-kvm -f influxdb --fill on 1,000 test-driver domains (3,251 lines, about 640 KB)."""
    path = nodes.write(tmp_path_factory.mktemp("nodes") / "many.xml", nodes.many(1000))
    return metrics(f"test://{path}", "--fill")


def handle(influxdb: InfluxDB, db: str, event: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return run(HANDLER, "--url", influxdb.url, "--database", db, *args, stdin=event, env=env)


def one_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return str(lines[0])


def test_a_thousand_domains_through_the_pipe_handler_are_stored_whole(influxdb: InfluxDB, database: str,
                                                                       thousand: str) -> None:
    lines = len(thousand.splitlines())
    result = handle(influxdb, database, sensu_core_event(thousand), "--batch-lines", "1000")
    assert result.returncode == 0, result
    assert f"{lines} points written to {influxdb.url} database {database} in 4 batches" in one_line(result)
    assert_stored_whole(influxdb, database, [thousand])
    assert len(domain_rows(influxdb, database, "say \"hi\" 7")) == 1


def test_the_old_one_datagram_handler_loses_everything(influxdb: InfluxDB, thousand: str) -> None:
    """Sensu Core's udp handler with only_check_output sends the whole output as one datagram."""
    payload = thousand.encode()
    assert len(payload) > 600_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OSError, match="Message too long"):
        sock.sendto(payload, (influxdb.host, influxdb.udp_port))
    # the largest datagram that can be sent at all, cut at a line boundary, is stored whole
    head = payload[:MAX_UDP_PAYLOAD].rsplit(b"\n", 1)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert sock.sendto(head, (influxdb.host, influxdb.udp_port)) == len(head)
        with pytest.raises(OSError, match="Message too long"):
            sock.sendto(payload[:MAX_UDP_PAYLOAD + 1], (influxdb.host, influxdb.udp_port))
    fields, _ = expected(head.decode())
    deadline = time.monotonic() + 10  # the UDP listener writes its batch after 200 ms (batch-timeout)
    while influxdb.count(influxdb.udp_database, "kvm_domain", "up") < fields["kvm_domain"]["up"]:
        assert time.monotonic() < deadline, "the datagram was not stored"
        time.sleep(0.1)
    time.sleep(0.5)  # a second batch would land within the batch-timeout: there must be none
    stored = influxdb.count(influxdb.udp_database, "kvm_domain", "up")
    # exactly what the one datagram carried, and that is a small part of the 1,000 domains (about
    # an eighth: the line lengths, so the count, vary with the values of the run)
    assert stored == fields["kvm_domain"]["up"], stored
    assert stored < 1000 // 4, stored


@pytest.mark.parametrize(("stdin", "words"), [
    ("", "no event on standard input"),
    ("this is not json", "event is not JSON"),
    ('{"check": {"status": 0}}', "not a Sensu event"),
    (sensu_core_event(""), "the check printed nothing"),
    (sensu_core_event("MetricsKvm UNKNOWN: cannot connect", status=3), "the check failed (status 3)"),
    (sensu_core_event("kvm1.kvm.domain.web1.up 1 1796000000"), "line 1 of the check's output is not InfluxDB line"),
])
def test_bad_events_are_one_line_exit_2_nothing_written(influxdb: InfluxDB, database: str, stdin: str,
                                                        words: str) -> None:
    result = handle(influxdb, database, stdin)
    assert result.returncode == 2, result
    assert words in one_line(result)
    assert influxdb.series(database) == []


@pytest.mark.parametrize(("args", "words"), [
    (["--url", f"http://sensu:{SECRET}@127.0.0.1:8086"], "the URL holds a user or password"),
    (["--url", "ftp://127.0.0.1"], "is not an http:// or https:// URL"),
    (["--url", "http://127.0.0.1:99999"], "has a bad port"),
    (["--batch-lines", "0"], "argument --batch-lines: '0' is below 1"),
    (["--timeout", "nan"], "argument --timeout"),
    (["--database", ""], "argument --database: empty name"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_line_exit_2(args: list[str], words: str) -> None:
    result = run(HANDLER, *args, stdin=sensu_core_event("m f=1i 1"))
    assert result.returncode == 2, result
    line = one_line(result)
    assert line.startswith(HANDLER) and words in line, line
    assert SECRET not in result.stderr


def test_influxdb_down_is_exit_1_saying_none_written(thousand: str) -> None:
    with socket.socket() as sock:  # a port of this project's range that nobody listens on
        sock.bind(("127.0.0.1", 18003))
        result = run(HANDLER, "--url", "http://127.0.0.1:18003", stdin=sensu_core_event(thousand))
    assert result.returncode == 1, result
    line = one_line(result)
    assert "cannot reach InfluxDB at http://127.0.0.1:18003" in line and "0 of 3251 points written" in line, line


def test_influxdb_refusing_is_exit_1_with_counts(influxdb: InfluxDB, database: str) -> None:
    first = "kvm_domain,domain=a,host=h up=1i 1000\nkvm_domain,domain=b,host=h up=1i 1000"
    conflict = "kvm_domain,domain=c,host=h up=1i 2000\nkvm_domain,domain=d,host=h up=1.5 2000"
    assert handle(influxdb, database, sensu_core_event(first)).returncode == 0
    result = handle(influxdb, database, sensu_core_event(first + "\n" + conflict), "--batch-lines", "2")
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    # InfluxDB stores the point that fits and drops the other ("partial write ... dropped=1")
    assert ('refused batch 2 of 2 (2 points, 1 not stored): HTTP 400 partial write: field type conflict: input '
            'field "up" on measurement "kvm_domain" is type float, already exists as type integer') in lines[0], lines
    assert lines[1].endswith(f"3 of 4 points written to {influxdb.url} database {database}; 1 refused"), lines
    assert influxdb.count(database, "kvm_domain", "up") == 3
    missing = run(HANDLER, "--url", influxdb.url, "--database", "nosuch", stdin=sensu_core_event(first))
    assert missing.returncode == 1 and "HTTP 404 database not found" in missing.stderr, missing


@pytest.fixture(scope="module")
def secured() -> Iterator[InfluxDB]:
    """A second influxd with authentication on, and its admin."""
    server = influxdb_service.start(http_port=18020, udp_port=18021, rpc_port=18022, admin=("admin", SECRET))
    try:
        server.create_database("kvm")
        yield server
    finally:
        server.stop()


def test_credentials_from_the_environment_or_a_private_file(secured: InfluxDB, tmp_path: Path) -> None:
    event = sensu_core_event("kvm_domain,domain=a,host=h up=1i 1000")
    bare = run(HANDLER, "--url", secured.url, stdin=event)
    assert bare.returncode == 1 and "HTTP 401" in bare.stderr, bare
    wrong = run(HANDLER, "--url", secured.url, stdin=event, env={"INFLUX_USERNAME": "admin", "INFLUX_PASSWORD": "no"})
    assert wrong.returncode == 1 and "HTTP 401 authorization failed" in wrong.stderr, wrong
    good = run(HANDLER, "--url", secured.url, stdin=event, env={"INFLUX_USERNAME": "admin", "INFLUX_PASSWORD": SECRET})
    assert good.returncode == 0 and "1 points written" in good.stderr, good
    path = tmp_path / "influxdb.credentials"
    path.write_text(f"admin:{SECRET}\n")
    path.chmod(0o644)
    loose = run(HANDLER, "--url", secured.url, "--credentials-file", str(path), stdin=event)
    assert loose.returncode == 2 and "readable by other users (mode 0644): chmod 600 it" in one_line(loose), loose
    path.chmod(0o600)
    from_file = run(HANDLER, "--url", secured.url, "--credentials-file", str(path), stdin=event)
    assert from_file.returncode == 0, from_file
    for result in (bare, wrong, good, loose, from_file):
        assert SECRET not in result.stdout + result.stderr
    assert secured.count("kvm", "kvm_domain", "up") == 1  # the same point twice: one point
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_shipped_definitions_carry_a_thousand_domains(influxdb: InfluxDB, tmp_path: Path) -> None:
    """conf.d/examples/metrics-kvm-influxdb.json.example's command, its output piped as Sensu Core
    would to conf.d/handler-influxdb.json's command (pointed at the test InfluxDB: the last --url
    and --database win)."""
    conf_d = Path(__file__).resolve().parents[2] / "conf.d"
    check = json.loads((conf_d / "examples" / "metrics-kvm-influxdb.json.example").read_text())["checks"]["metrics-kvm"]
    handler = json.loads((conf_d / "handler-influxdb.json").read_text())["handlers"]["influxdb"]
    assert check["type"] == "metric" and check["handlers"] == ["influxdb"]
    assert handler["type"] == "pipe" and "severities" not in handler and "mutator" not in handler
    argv = shlex.split(check["command"])
    assert argv[:3] == ["metrics-kvm", "-u", "qemu:///system"]
    uri = f"test://{nodes.write(tmp_path / 'many.xml', nodes.many(1000))}"
    output = run(argv[0], *argv[3:], "-u", uri, "--fill").stdout
    command = shlex.split(handler["command"])
    influxdb.create_database("shipped")
    try:
        result = run(command[0], *command[1:], "--url", influxdb.url, "--database", "shipped",
                     stdin=sensu_core_event(output), timeout=handler["timeout"])
        assert result.returncode == 0, result
        assert_stored_whole(influxdb, "shipped", [output])
        assert len(influxdb.series("shipped", "kvm_domain")) == 1000
    finally:
        influxdb.drop_database("shipped")
