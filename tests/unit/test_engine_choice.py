"""Which engine `kvm-backup create` takes (create.choose_engine, pull.unusable), without libvirt: the
default is auto, auto takes the backup API where it can be used and otherwise the overlay engine,
saying why in one line (a qcow2 v2 disk too: it cannot hold a bitmap); an explicit --engine is obeyed or
refused."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from sensu_kvm.backup import create, pull
from sensu_kvm.backup.disks import Disk
from sensu_kvm.errors import Refused
from sensu_kvm.tools import backup, settle

CAPS_YES = "<domainCapabilities><backup supported='yes'/></domainCapabilities>"
CAPS_NO = "<domainCapabilities><backup supported='no'/></domainCapabilities>"


def unsupported(*_args: Any) -> str:
    err = libvirt.libvirtError("this function is not supported by the connection driver: "
                               "virConnectGetDomainCapabilities")
    err.err = (libvirt.VIR_ERR_NO_SUPPORT, 0, str(err), 2, None, None, None, -1, -1)
    raise err


class Conn:
    def __init__(self, caps: str | None) -> None:
        self.caps = caps

    def getDomainCapabilities(self, *_args: Any) -> str:
        return unsupported() if self.caps is None else self.caps


class Dom:
    """A running domain whose binding has the backup API (``backupBegin``)."""

    def name(self) -> str:
        return "web1"

    def isActive(self) -> bool:
        return True

    def backupBegin(self, *_args: Any) -> None:
        raise AssertionError("choose_engine never begins a job")


class OldDom:
    """A domain of a libvirt binding without the backup API."""

    def name(self) -> str:
        return "web1"

    def isActive(self) -> bool:
        return True


@pytest.fixture
def libnbd(monkeypatch: pytest.MonkeyPatch) -> None:
    """libnbd's Python binding is there (whether or not this machine has it)."""
    monkeypatch.setattr(pull.nbd, "available", lambda: "")


def opts(engine: str | None = None) -> create.Options:
    return create.Options(mode=None, dest="/tmp/d") if engine is None else \
        create.Options(mode=None, dest="/tmp/d", engine=engine)


def test_the_default_engine_is_auto() -> None:
    top = backup.parser()
    o = settle(top, top.parse_args(["create", "web1", "--dest", "/tmp/d"]), backup.catalog.STATE_DIR)
    assert o.engine == "auto"
    assert opts().engine == "auto"


def test_the_help_says_auto_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        backup.parser().parse_args(["create", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: auto" in text and "else overlay, saying why on stderr" in text


def test_auto_takes_the_api_where_it_can(libnbd: None) -> None:
    assert create.choose_engine(opts(), Conn(CAPS_YES), Dom(), "live") == ("api", "")


@pytest.mark.parametrize(("conn", "dom", "why"), [
    (Conn(CAPS_NO), Dom(), "this libvirt/QEMU has no incremental backup support (domain capabilities: no "
                           "<backup supported='yes'/>)"),
    (Conn(CAPS_YES), OldDom(), "this libvirt Python binding has no backup API (backupBegin)"),
    (Conn(None), Dom(), "this libvirt driver cannot report backup support (this function is not supported by "
                        "the connection driver: virConnectGetDomainCapabilities)"),
])
def test_auto_without_the_api_takes_overlay_and_says_why_in_one_line(libnbd: None, conn: Conn, dom: Any,
                                                                     why: str) -> None:
    engine, said = create.choose_engine(opts(), conn, dom, "live")
    assert engine == "overlay"
    assert said == f"overlay engine: the backup API cannot be used: {why}"
    assert "\n" not in said


def test_auto_without_libnbd_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull.nbd, "available", lambda: "libnbd's Python binding is not installed")
    assert create.choose_engine(opts(), Conn(CAPS_YES), Dom(), "live") == (
        "overlay", "overlay engine: the backup API cannot be used: libnbd's Python binding is not installed")


def test_an_explicit_engine_is_obeyed_or_refused(libnbd: None) -> None:
    assert create.choose_engine(opts("overlay"), Conn(CAPS_YES), Dom(), "live") == ("overlay", "")
    assert create.choose_engine(opts("api"), Conn(CAPS_YES), Dom(), "live") == ("api", "")
    with pytest.raises(Refused, match=r"^web1: the backup API cannot be used: this libvirt/QEMU has no"):
        create.choose_engine(opts("api"), Conn(CAPS_NO), Dom(), "live")


@pytest.mark.parametrize("mode", ["stop", "suspend", "offline"])
def test_other_modes_copy_the_files_and_only_an_asked_api_is_told(libnbd: None, mode: str) -> None:
    for engine in ("auto", "overlay"):
        assert create.choose_engine(opts(engine), Conn(CAPS_YES), Dom(), mode) == ("files", "")
    engine, said = create.choose_engine(opts("api"), Conn(CAPS_YES), Dom(), mode)
    assert engine == "files" and said.startswith(f"--engine api applies to live backups; a {mode} backup")


def qcow2_image(path: Path, compat: str) -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"compat={compat}", str(path), "1M"], check=True)
    return str(path)


def test_a_qcow2_v2_disk_takes_overlay_under_auto_and_is_refused_by_api(libnbd: None, tmp_path: Path) -> None:
    v3 = Disk("vda", "disk", "file", qcow2_image(tmp_path / "v3.qcow2", "1.1"), "qcow2", True, "")
    v2 = Disk("vdb", "disk", "file", qcow2_image(tmp_path / "v2.qcow2", "0.10"), "qcow2", True, "")
    raw = Disk("vdc", "disk", "file", str(tmp_path / "v2.qcow2"), "raw", True, "")  # not read as qcow2
    cdrom = v2._replace(target="sda", device="cdrom", copy=False, why="a cdrom")
    assert create.choose_engine(opts(), Conn(CAPS_YES), Dom(), "live", [v3, raw, cdrom]) == ("api", "")
    why = (f"vdb: {v2.source} is a qcow2 v2 image (compat=0.10), which cannot hold a dirty bitmap (qemu-img amend "
           "-o compat=1.1 upgrades it, the guest shut off)")
    assert create.choose_engine(opts(), Conn(CAPS_YES), Dom(), "live", [v3, v2]) == (
        "overlay", f"overlay engine: the backup API cannot be used: {why}")
    with pytest.raises(Refused, match=r"^web1: the backup API cannot be used: vdb: .* is a qcow2 v2 image"):
        create.choose_engine(opts("api"), Conn(CAPS_YES), Dom(), "live", [v3, v2])
    assert create.choose_engine(opts("overlay"), Conn(CAPS_YES), Dom(), "live", [v2]) == ("overlay", "")
