"""Version facts of libvirt and the hypervisor, as numbers and as text."""

from __future__ import annotations

from typing import Any

import libvirt

from sensu_kvm.virt.errors import translate


def version_text(number: int) -> str:
    """libvirt's version number (1000000 * major + 1000 * minor + release) as text: 9.0.0."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


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
