"""Which connection each command opens: read-only for everything that only reads (real processes on
libvirt's test driver; tests/faults/sitecustomize.py logs every connection the process opens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensu_kvm.registry import BY_NAME, Access, Kind
from tests.conftest import node_uri, run
from tests.entrypoints import commands

MIXED = node_uri("mixed.xml")
SNAPS = node_uri("snapshots.xml")


def connections(tmp_path: Path, fault_env: dict[str, str], command: str, *args: str, stdin: str = "",
                code: int | None = 0) -> tuple[list[str], str]:
    """The kinds of connection ('read-only', 'read-write') the command opened, and its stderr."""
    log = tmp_path / f"connections-{len(list(tmp_path.iterdir()))}.log"
    env = {**fault_env, "SPK_FAULT": "log-connections", "SPK_CALL_LOG": str(log)}
    result = run(command, *args, env=env, stdin=stdin)
    assert code is None or result.returncode == code, result
    assert "Traceback" not in result.stderr
    opened = log.read_text().splitlines() if log.exists() else []
    return [line.split(" ", 1)[0] for line in opened], result.stdout + result.stderr


def event(domain: str) -> str:
    return json.dumps({"client": {"name": domain, "type": "proxy"}, "occurrences": 1, "action": "create",
                       "check": {"name": "check-kvm-domstate", "status": 2, "output": "x", "source": domain}})


def test_handler_dry_run_reads_on_a_read_only_connection_and_creates_nothing(tmp_path, fault_env):
    state = tmp_path / "state"
    kinds, said = connections(tmp_path, fault_env, "handler-kvm-remediate", "-u", MIXED, "--state-dir", str(state),
                              "--match", ".", "--dry-run", stdin=event("grüße-ü"))
    assert kinds == ["read-only"]
    assert "grüße-ü is paused (unknown): would resume it (dry run, attempt 1 of 3)" in said
    assert not state.exists()  # no lock file, no state file, no folder
    kinds, said = connections(tmp_path, fault_env, "handler-kvm-remediate", "-u", MIXED, "--state-dir", str(state),
                              "--match", ".", stdin=event("grüße-ü"))
    assert kinds == ["read-only", "read-write"]  # it decides on a read-only connection, acts on a read-write one
    assert "grüße-ü is now running" in said


def test_handler_that_has_nothing_to_do_never_opens_a_read_write_connection(tmp_path, fault_env):
    for args, said in ((["--match", "."], "web1 is running"), ([], "web1: not selected")):
        kinds, text = connections(tmp_path, fault_env, "handler-kvm-remediate", "-u", MIXED, "--state-dir",
                                  str(tmp_path / "state"), *args, stdin=event("web1"))
        assert (kinds, said in text) == (["read-only"], True), text


@pytest.mark.parametrize(("args", "kinds"), [
    (["list", "old"], ["read-only"]),
    (["list", "old", "--tree", "--json"], ["read-only"]),
    (["info", "old", "after-upgrade"], ["read-only"]),
    (["dumpxml", "old", "after-upgrade"], ["read-only"]),
    (["dumpxml", "old", "after-upgrade", "--security-info"], ["read-write"]),  # libvirt: secrets need read-write
    (["chain", "old"], ["read-only"]),
    (["prune", "--all", "--older-than", "1d", "--dry-run"], ["read-only"]),
    # the test driver's images do not exist: the deletion itself is refused, after connecting
    (["prune", "old", "--keep", "1"], ["read-write"]),
    (["delete", "old", "before-upgrade"], ["read-write"]),
])
def test_snapshot_subcommands_that_read_connect_read_only(tmp_path, fault_env, args, kinds):
    code = 1 if args[0] in ("prune", "delete") and "--dry-run" not in args else 0
    assert connections(tmp_path, fault_env, "kvm-snapshot", *args, "-u", SNAPS, code=code)[0] == kinds


def test_inspect_opens_read_write_only_for_agent_and_monitor(tmp_path, fault_env):
    kinds, _ = connections(tmp_path, fault_env, "kvm-inspect", "test", "-u", "test:///default", "--read-only")
    assert kinds == ["read-only"]
    kinds, _ = connections(tmp_path, fault_env, "kvm-inspect", "batch", "-u", MIXED)  # shut off: nothing to ask
    assert kinds == ["read-only"]
    kinds, _ = connections(tmp_path, fault_env, "kvm-inspect", "web1", "-u", MIXED)  # running: agent and monitor
    assert kinds == ["read-only", "read-write"]


@pytest.mark.parametrize("command", commands(Kind.CHECK, Kind.METRICS, Kind.GUEST_CHECK))
def test_checks_connect_as_the_registry_says(tmp_path, fault_env, command):
    """Every check (from the entry points) opens the connections its registry entry says: read-only,
    none at all, or read-write besides only for the guest agent calls."""
    entry = BY_NAME[command]
    assert entry.check is not None
    args = [] if entry.access is Access.NONE else ["-u", MIXED]
    if "--state-dir" in entry.check.go_options:  # the rate checks, and the backup receipts
        args += ["--state-dir", str(tmp_path / "s")]
    log = tmp_path / "checks.log"
    env = {**fault_env, "SPK_FAULT": "log-connections", "SPK_CALL_LOG": str(log)}
    result = run(command, *args, env=env)
    assert result.returncode in (0, 1, 2, 3) and "Traceback" not in result.stdout + result.stderr, result
    kinds = [line.split(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []
    if entry.access is Access.READ_ONLY:
        assert kinds == ["read-only"]
    elif entry.access is Access.NONE:
        assert kinds == []
    else:
        assert entry.access is Access.READ_ONLY_AGENT_READ_WRITE
        assert kinds[:1] == ["read-only"] and set(kinds) <= {"read-only", "read-write"}, kinds
