"""The tools' common options mean the same before and after the subcommand (tools.common_options)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from sensu_kvm.tools import backup, settle, snapshot

URI = "test:///default"


def parse(module: ModuleType, argv: list[str]) -> Any:
    top = module.parser()
    state = module.catalog.STATE_DIR if hasattr(module, "catalog") else None
    return settle(top, top.parse_args(argv), state)


@pytest.mark.parametrize("argv", [
    ["-u", URI, "--timeout", "7", "--state-dir", "/tmp/s", "create", "web1", "--dest", "/tmp/d"],
    ["create", "web1", "--dest", "/tmp/d", "-u", URI, "--timeout", "7", "--state-dir", "/tmp/s"],
    ["-u", URI, "create", "web1", "--dest", "/tmp/d", "--timeout", "7", "--state-dir", "/tmp/s"],
])
def test_backup_common_options_anywhere(argv: list[str]) -> None:
    o = parse(backup, argv)
    assert (o.uri, o.timeout, o.state_dir, o.command) == (URI, 7.0, "/tmp/s", "create")


def test_backup_defaults() -> None:
    o = parse(backup, ["recover", "--all"])
    assert (o.uri, o.timeout, o.state_dir) == (None, 30.0, backup.catalog.STATE_DIR)


def test_after_the_subcommand_wins_over_before() -> None:
    o = parse(snapshot, ["-u", "test:///a", "list", "web1", "-u", URI])
    assert o.uri == URI


@pytest.mark.parametrize("argv", [["--json", "list", "web1"], ["list", "web1", "--json"]])
def test_snapshot_json_before_or_after(argv: list[str]) -> None:
    o = parse(snapshot, ["-u", URI, *argv])
    assert o.json is True and o.timeout == 30.0


@pytest.mark.parametrize(("module", "argv", "said"), [
    (snapshot, ["--json", "create", "web1"], "--json: create has no JSON output"),
    (backup, ["-u", URI, "list", "/tmp"], "--uri: list does not talk to libvirt"),
    (backup, ["--timeout", "5", "verify", "/tmp/x.tar"], "--timeout: verify does not talk to libvirt"),
    (backup, ["--timeout", "0", "recover", "--all"], "argument --timeout: '0' is not between 0 and 86400 seconds"),
])
def test_refused_not_ignored(module: ModuleType, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse(module, argv)
    assert stop.value.code == 2
    assert said in capsys.readouterr().err
