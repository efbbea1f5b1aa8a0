"""Every command against a libvirtd that accepts the connection and never answers.

A UNIX socket server in this process accepts every connection and never writes a byte; each
installed command (the list comes from the entry points, so a new command cannot be missed) is
pointed at it with ``qemu+unix:///system?socket=PATH`` and must end within its timeout plus a
small margin, with one clear line and its documented exit code: 3 and an UNKNOWN status line for
checks, 3 and one line on stderr for metrics-kvm (whose stdout a database ingests: nothing there,
or Prometheus's ``kvm_up 0``), 1 and one line on stderr naming the call for the tools and the
handler.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import hung_socket, run
from tests.entrypoints import console_scripts

TIMEOUT = 2  # seconds given to each command
MARGIN = 4.0  # process start-up and a loaded machine

# How each command is run against the hung socket, beyond -u URI and its timeout option.
CHECK_ARGS: dict[str, list[str]] = {
    "check-kvm-backup-age": ["--backup-dir", "{tmp}"],
    "check-kvm-blkerror": [],
    "check-kvm-blockjob": ["--state-dir", "{tmp}", "--backup-state-dir", "{tmp}"],
    "check-kvm-blkstat": ["--state-dir", "{tmp}"],
    "check-kvm-domstate": [],
    "check-kvm-guest-agent": [],
    "check-kvm-host": ["--state-dir", "{tmp}"],
    "check-kvm-netstat": ["--state-dir", "{tmp}"],
    "check-kvm-memory": [],
    "check-kvm-pool": [],
    "check-kvm-snapshot-age": [],
    "check-kvm-vcpu": ["--state-dir", "{tmp}"],
}
METRICS = {"metrics-kvm"}
TOOL_RUNS: dict[str, list[list[str]]] = {
    "kvm-snapshot": [["list", "web1"], ["prune", "--all", "--keep", "1"]],
    "kvm-backup": [["create", "--all", "--dest", "{tmp}"], ["recover", "--all", "--state-dir", "{tmp}"]],
    "kvm-inspect": [["web1"]],
}
HANDLERS = {"handler-kvm-remediate"}
# never libvirt: a guest-side check (reads the guest's own /proc) and the InfluxDB handler (HTTP only)
NO_LIBVIRT = {"check-memory-percent", "handler-kvm-influxdb"}

EVENT = {"client": {"name": "kvm1"}, "check": {"name": "check-kvm-domstate", "status": 2, "source": "web1",
                                               "output": "CheckKvmDomstate CRITICAL: web1 crashed"}}


def commands() -> set[str]:
    return set(console_scripts())


@pytest.fixture(scope="module")
def hung() -> Iterator[tuple[str, Path]]:
    """A libvirt URI whose socket accepts and never answers, and a scratch folder."""
    with hung_socket() as path:
        scratch = path.parent / "scratch"
        scratch.mkdir()
        yield f"qemu+unix:///system?socket={path}", scratch


def test_every_command_is_covered() -> None:
    known = set(CHECK_ARGS) | METRICS | set(TOOL_RUNS) | HANDLERS | NO_LIBVIRT
    assert commands() == known, "a command was added or removed: say here how it is run against a hung libvirtd"


def _timed(command: str, *args: str, stdin: str = "") -> tuple[float, int, str, str]:
    started = time.monotonic()
    result = run(command, *args, timeout=TIMEOUT + 30, stdin=stdin)
    return time.monotonic() - started, result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("command", sorted(CHECK_ARGS))
def test_check_answers_unknown(hung: tuple[str, Path], command: str) -> None:
    uri, tmp = hung
    extra = [a.replace("{tmp}", str(tmp)) for a in CHECK_ARGS[command]]
    took, code, out, err = _timed(command, "-u", uri, "-t", str(TIMEOUT), *extra)
    assert took < TIMEOUT + MARGIN, (took, out, err)
    assert code == 3, (code, out, err)
    first = out.splitlines()[0]
    assert " UNKNOWN: " in first and "timed out" in first and "connecting" in first, out


@pytest.mark.parametrize("form", ["graphite", "prometheus"])
def test_metrics_time_out_with_no_data(hung: tuple[str, Path], form: str) -> None:
    uri, _tmp = hung
    took, code, out, err = _timed("metrics-kvm", "-u", uri, "-t", str(TIMEOUT), "-f", form)
    assert took < TIMEOUT + MARGIN, (took, out, err)
    assert code == 3, (code, out, err)
    assert out == ("" if form == "graphite" else
                   "# HELP kvm_up 1 when metrics-kvm read the host's statistics, 0 when it failed (it exits 3, the "
                   "error on stderr)\n# TYPE kvm_up gauge\nkvm_up 0\n")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"metrics-kvm: timed out after {TIMEOUT}s while connecting"), err


@pytest.mark.parametrize(("command", "args"), [(c, a) for c, runs in sorted(TOOL_RUNS.items()) for a in runs],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_tool_names_the_call(hung: tuple[str, Path], command: str, args: list[str]) -> None:
    uri, tmp = hung
    argv = [a.replace("{tmp}", str(tmp)) for a in args]
    took, code, out, err = _timed(command, *argv, "-u", uri, "--timeout", str(TIMEOUT))
    assert took < TIMEOUT + MARGIN, (took, out, err)
    assert code == 1, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}: cannot connect to qemu+unix:///system"), lines
    assert f"virConnectOpen did not answer within {TIMEOUT}s" in lines[0], lines


@pytest.mark.parametrize("command", ["kvm-snapshot", "kvm-backup"])
def test_tool_options_before_the_subcommand(hung: tuple[str, Path], command: str) -> None:
    uri, tmp = hung
    args = ["list", "web1"] if command == "kvm-snapshot" else ["recover", "--all", "--state-dir", str(tmp)]
    took, code, _out, err = _timed(command, "-u", uri, "--timeout", "1", *args)
    assert took < 1 + MARGIN, (took, err)
    assert code == 1 and "virConnectOpen did not answer within 1s" in err, err


@pytest.mark.parametrize("command", sorted(HANDLERS))
def test_handler_fails_in_time(hung: tuple[str, Path], command: str) -> None:
    uri, tmp = hung
    took, code, out, err = _timed(command, "-u", uri, "--timeout", str(TIMEOUT), "--state-dir", str(tmp),
                                  stdin=json.dumps(EVENT))
    assert took < TIMEOUT + MARGIN, (took, out, err)
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"{command}: failed: cannot connect" in lines[0]
    assert f"virConnectOpen did not answer within {TIMEOUT}s" in lines[0], lines


@pytest.mark.parametrize("command", sorted(NO_LIBVIRT))
def test_guest_side_check_has_no_libvirt_option(command: str) -> None:
    took, code, out, err = _timed(command, "--help")
    assert code == 0 and took < MARGIN, (code, err)
    assert "--uri" not in out, "a command that takes a libvirt URI must be tested against a hung libvirtd"
