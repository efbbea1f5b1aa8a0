"""Fixtures for the real-hypervisor tier: libvirtd + QEMU (TCG) on qemu:///system.

Every domain is named spk-test-*, and every one is destroyed and undefined at the end of the
session, even when a test fails (and at the start, in case an earlier run was killed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.rig import rig


@pytest.fixture(scope="session")
def conn() -> Iterator[libvirt.virConnect]:
    with rig.own_domains() as connection:
        yield connection


@pytest.fixture(scope="session")
def images(conn: libvirt.virConnect) -> Iterator[Path]:
    with rig.images_of(conn) as path:
        yield path


def own_fixtures(prefix: str) -> tuple[Any, Any]:
    """Module-scoped ``conn`` and ``images`` fixtures for a test module whose domains are named
    ``prefix*``: that module cleans up only its own domains and images (``conn, images =
    own_fixtures(PREFIX)`` at its top)."""

    @pytest.fixture(scope="module")
    def conn() -> Iterator[libvirt.virConnect]:
        with rig.own_domains(prefix) as connection:
            yield connection

    @pytest.fixture(scope="module")
    def images(conn: libvirt.virConnect) -> Iterator[Path]:
        with rig.images_of(conn, prefix) as path:
            yield path

    return conn, images


@pytest.fixture(scope="session")
def guest() -> tuple[Path, Path]:
    """The tiny Linux guest's kernel and initrd (built once, cached)."""
    return rig.ensure_guest()


@pytest.fixture(scope="session")
def linux_guests(conn: libvirt.virConnect, images: Path, guest: tuple[Path, Path]) -> Iterator[dict[str, libvirt.virDomain]]:
    """Tiny Linux guests, started together: 'busy' spins its vCPU, 'writer' writes its disk, and
    'enospc' writes to a qcow2 on a 24 MiB file system until QEMU pauses it (error_policy stop)."""
    kernel, initrd = guest
    with rig.small_fs(images / "small", 24) as small:
        plan = {
            "busy": ("cpu", rig.make_qcow2(images / "busy.qcow2")),
            "writer": ("write", rig.make_qcow2(images / "writer.qcow2", "1G")),
            "enospc": ("write", rig.make_qcow2(small / "enospc.qcow2", "256M")),
        }
        doms = {}
        for role, (mode, disk) in plan.items():
            xml = rig.linux_guest_xml(f"spk-test-{role}", disk, kernel, initrd, mode, images / f"{role}.log")
            doms[role] = conn.defineXML(xml)
            doms[role].create()
        for role in plan:
            rig.wait_serial(images / f"{role}.log", timeout=120)
        yield doms
        rig.cleanup(conn)  # before the small file system is unmounted


def paused_by_enospc(dom: libvirt.virDomain, timeout: float = 180) -> None:
    rig.wait_for(lambda: dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR],
                 timeout=timeout, what=f"{dom.name()} to pause on ENOSPC")


def define_noos(conn: libvirt.virConnect, images: Path, name: str) -> libvirt.virDomain:
    disk = rig.make_qcow2(images / f"{name}.qcow2")
    return conn.defineXML(rig.noos_domain_xml(name, disk))


def record(name: str, payload: object) -> None:
    """With SPK_RECORD_DIR set, keep what a real hypervisor returned as a unit-test fixture."""
    folder = os.environ.get("SPK_RECORD_DIR")
    if folder:
        Path(folder, name).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def restore_copies(conn: libvirt.virConnect, prefix: str) -> list[str]:
    """The domains kvm-backup test-restore made whose name starts with ``prefix`` (ktr-...)."""
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))


def remove_restore_copies(conn: libvirt.virConnect, prefix: str) -> None:
    """Whatever a failing test left of its test-restore copies (they are not named like its domains)."""
    for name in restore_copies(conn, prefix):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


def no_copies_left_fixture(prefix: str) -> Any:
    """A module fixture that removes, after the module, what its tests left of test-restore copies
    named ``prefix``* (a failing test's)."""
    @pytest.fixture(scope="module")
    def no_copies_left(conn: libvirt.virConnect) -> Iterator[None]:
        yield
        remove_restore_copies(conn, prefix)
    return no_copies_left


def api_backup(dom: libvirt.virDomain, dest: Path, state: Path, *args: str) -> dict[str, Any]:
    """kvm-backup create --engine api --compress none of ``dom``, which must succeed; its summary."""
    from tests.conftest import run  # noqa: PLC0415

    done = run("kvm-backup", "create", dom.name(), "--dest", str(dest), "--state-dir", str(state), "--engine", "api",
               "--compress", "none", "--json", *args, "-u", rig.URI, timeout=300)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["backups"]
    assert result["ok"] and result["engine"] == "api", result
    return dict(result)
