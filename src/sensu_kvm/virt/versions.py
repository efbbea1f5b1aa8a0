"""Version facts of libvirt and the hypervisor: numbers, text, and the versions a backup records.
The one place that turns a libvirt version number into text."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import libvirt

from sensu_kvm import __version__
from sensu_kvm.virt.errors import translate


def version_text(number: int) -> str:
    """libvirt's version number (1,000,000 * major + 1,000 * minor + micro) as text: 9.0.0."""
    major, rest = divmod(number, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"


def versions(conn: Any) -> dict[str, str]:
    """kvm-backup, Python, libvirt and hypervisor versions (those the connection can tell)."""
    found = {"kvm-backup": __version__, "python": sys.version.split()[0]}
    with contextlib.suppress(Exception):
        found["libvirt"] = version_text(conn.getLibVersion())
    with contextlib.suppress(Exception):
        found["hypervisor"] = version_text(conn.getVersion())
    return found


def lib_version(conn: Any) -> int:
    """The version number of the libvirt the connection talks to (libvirtd's)."""
    try:
        return int(conn.getLibVersion())
    except libvirt.libvirtError as err:
        raise translate(err, "cannot read libvirt's version") from err


def hypervisor_version(conn: Any) -> int:
    """The hypervisor's version number (QEMU's, for qemu:// URIs)."""
    try:
        return int(conn.getVersion())
    except libvirt.libvirtError as err:
        raise translate(err, "cannot read the hypervisor's version") from err


def client_version() -> int:
    """The version number of the libvirt library this process is linked with."""
    return int(libvirt.getVersion())
