"""The QEMU guest agent and monitor through libvirt, each call under a deadline.

Agent and monitor calls (virDomainQemuAgentCommand, virDomainGetGuestInfo,
virDomainQemuMonitorCommand) are refused on a read-only connection: they need a read-write one
(polkit/ACL permission ``domain:write``). Parsing (the agent channel in the domain XML, the file
systems in libvirt's guest information) is pure and separate from the calls.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any, NamedTuple

# the calls are made in virt.agent and virt.monitor, each under its deadline; re-exported for the tools
from sensu_kvm.virt.agent import FS_INFO, HOSTNAME_INFO, OS_INFO, agent_command, guest_info  # noqa: F401
from sensu_kvm.virt.monitor import monitor_command  # noqa: F401

AGENT_CHANNEL = "org.qemu.guest_agent.0"

# Read-only images of a fixed size are always 100 % used: not judged unless asked.
DEFAULT_EXCLUDED_FS_TYPES = ("squashfs", "iso9660", "udf")

READ_WRITE_NOTE = ("guest agent and QEMU monitor queries need a read-write libvirt connection "
                   "(libvirt refuses them on the read-only socket; ACL permission domain:write)")


class Channel(NamedTuple):
    """The guest agent's virtio channel in a domain's XML."""

    kind: str  # unix, pty, ...
    state: str  # connected, disconnected, or "" (an inactive domain's XML has no state)

    @property
    def connected(self) -> bool | None:
        """True or False when libvirt says whether the agent opened the port, None when it does not."""
        return {"connected": True, "disconnected": False}.get(self.state)


class FileSystem(NamedTuple):
    """One mounted file system as the guest agent reports it."""

    mountpoint: str
    name: str  # the guest's device name (vda1, dm-0, ...)
    fstype: str
    total: int | None  # bytes; None when the agent does not say (older agents)
    used: int | None
    disks: tuple[str, ...]  # the domain's disk targets (aliases) behind it, when known

    @property
    def used_percent(self) -> float | None:
        if self.total is None or self.used is None or self.total <= 0:
            return None
        return 100.0 * self.used / self.total


def agent_channel(domain_xml: str) -> Channel | None:
    """The org.qemu.guest_agent.0 channel of a domain, None when it has none (pure)."""
    if AGENT_CHANNEL not in domain_xml:  # most domains: no parse (a tenth of a millisecond each)
        return None
    root = ET.fromstring(domain_xml)
    for channel in root.iterfind("devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
            return Channel(channel.get("type", ""), target.get("state", ""))
    return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def file_systems(info: dict[str, Any]) -> list[FileSystem]:
    """The file systems in virDomainGetGuestInfo's typed parameters (``fs.N.*``), in order (pure)."""
    found = []
    for n in range(int(info.get("fs.count", 0) or 0)):
        key = f"fs.{n}."
        disks = tuple(str(info[f"{key}disk.{d}.alias"]) for d in range(int(info.get(f"{key}disk.count", 0) or 0))
                      if f"{key}disk.{d}.alias" in info)
        found.append(FileSystem(str(info.get(key + "mountpoint", "")), str(info.get(key + "name", "")),
                                str(info.get(key + "fstype", "")), _int(info.get(key + "total-bytes")),
                                _int(info.get(key + "used-bytes")), disks))
    return found


def pick_file_systems(found: list[FileSystem], mounts: list[str], excluded_types: list[str]) -> list[FileSystem]:
    """The file systems to judge: those mounted at ``mounts`` (all when empty), minus excluded types,
    each mount point once (pure)."""
    chosen: dict[str, FileSystem] = {}
    for fs in found:
        if mounts and fs.mountpoint not in mounts:
            continue
        if fs.fstype in excluded_types:
            continue
        chosen.setdefault(fs.mountpoint, fs)
    return sorted(chosen.values(), key=lambda f: f.mountpoint)


def section(info: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The keys of one group of guest information, without the prefix (``os.`` -> id, name, ...)."""
    return {k[len(prefix):]: v for k, v in info.items() if k.startswith(prefix)}



def ping(dom: Any, seconds: float) -> float:
    """guest-ping; the seconds it took to answer."""
    started = time.monotonic()
    agent_command(dom, "guest-ping", seconds)
    return time.monotonic() - started


def agent_info(dom: Any, seconds: float) -> dict[str, Any]:
    """guest-info: the agent's version and its commands ({} when it says nothing)."""
    answer = agent_command(dom, "guest-info", seconds)
    return answer if isinstance(answer, dict) else {}
