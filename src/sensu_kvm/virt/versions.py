"""Version facts as text: libvirt's version numbers (major * 1,000,000 + minor * 1,000 + micro) and
the versions a backup records. The one place that turns a libvirt version number into text."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from sensu_kvm import __version__


def version_text(number: int) -> str:
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
