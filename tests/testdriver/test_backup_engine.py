"""kvm-backup create's engine on libvirt's test driver, which has no backup API (no domain capabilities
either): the default (auto) says in one line that it takes the overlay engine and why, before the run goes
on (here to the test driver's missing image); --engine overlay says nothing of it; --engine api fails the
domain with the reason; a suspend backup copies the files (kvm-backup/1) whatever the engine, quietly."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import node_uri, run

DEFAULT = ["-u", "test:///default"]
NO_CAPS = ("the backup API cannot be used: this libvirt driver cannot report backup support (this function is "
           "not supported by the connection driver: virConnectGetDomainCapabilities)")
NO_IMAGE = "kvm-backup: backup failed: test: vda: the image /guest/diskimage1 does not exist or is not a file"


def create(tmp_path: Path, uri: list[str], *args: str) -> tuple[int, str, str]:
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    result = run("kvm-backup", *uri, "create", *args, "--dest", str(dest), "--state-dir", str(tmp_path / "state"))
    return result.returncode, result.stdout, result.stderr


def test_auto_says_it_takes_overlay_and_why(tmp_path: Path) -> None:
    code, out, err = create(tmp_path, DEFAULT, "test")
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"kvm-backup: test: overlay engine: {NO_CAPS}", NO_IMAGE], err


def test_explicit_engines(tmp_path: Path) -> None:
    code, _out, err = create(tmp_path, DEFAULT, "test", "--engine", "overlay")
    assert code == 1 and err.splitlines() == [NO_IMAGE], err
    code, _out, err = create(tmp_path, DEFAULT, "test", "--engine", "api")
    assert code == 1 and err.splitlines() == [f"kvm-backup: backup failed: test: {NO_CAPS}"], err


@pytest.mark.parametrize("engine", [[], ["--engine", "auto"], ["--engine", "overlay"]])
def test_a_suspend_backup_copies_the_files_quietly(tmp_path: Path, engine: list[str]) -> None:
    code, out, err = create(tmp_path, ["-u", node_uri("mixed.xml")], "web1", "--mode", "suspend", "--compress", "none",
                            "--json", *engine)
    assert (code, err) == (0, ""), err
    (summary,) = json.loads(out)["backups"]
    assert (summary["engine"], summary["mode"]) == ("files", "suspend")
    with tarfile.open(summary["archive"]) as tar:
        member = tar.extractfile("kvm-backup.json")
        assert member is not None
        assert json.loads(member.read())["format"] == "kvm-backup/1"
