"""The one module that talks to libvirt.

It opens connections, silences libvirt's default error printer, translates every
``libvirtError`` into the project's own exceptions, gathers statistics with one bulk call (with a
per-domain fallback) and runs the per-domain calls that have no bulk form under a deadline.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt

from sensu_kvm import activity
from sensu_kvm.errors import CallTimeout, ConnectError, LibvirtFailure, NotFound

DEFAULT_URI = "qemu:///system"

T = TypeVar("T")


def _ignore_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is registered."""


libvirt.registerErrorHandler(_ignore_error, None)

libvirtError = libvirt.libvirtError


def resolve_uri(uri: str | None) -> str:
    """The URI given, else ``LIBVIRT_DEFAULT_URI``, else ``qemu:///system``."""
    return uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def reason(err: libvirt.libvirtError) -> str:
    """libvirt's own message, without the noise of a Python exception."""
    message = err.get_error_message() or str(err)
    return " ".join(message.split())


def translate(err: libvirt.libvirtError, context: str) -> LibvirtFailure | NotFound:
    """One place that turns a libvirtError into our exception with a clear message."""
    if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(f"{context}: {reason(err)}")
    return LibvirtFailure(f"{context}: {reason(err)}")


def connect(uri: str | None, readonly: bool = True) -> libvirt.virConnect:
    """Open a connection (read-only unless asked); failures become ConnectError."""
    target = resolve_uri(uri)
    activity.doing(f"connecting to {target}")
    try:
        conn = libvirt.openReadOnly(target) if readonly else libvirt.open(target)
    except libvirt.libvirtError as err:
        raise ConnectError(f"cannot connect to {target}: {reason(err)}") from err
    if conn is None:  # very old bindings returned None instead of raising
        raise ConnectError(f"cannot connect to {target}")
    return conn


def call_with_deadline(func: Callable[[], T], seconds: float, what: str) -> T:
    """Run a libvirt call in a daemon thread and give up on it after ``seconds``.

    libvirt-python releases the GIL while it waits, so a call blocked in libvirt cannot hold the
    process; the abandoned thread dies with the process.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as err:  # handed to the caller below
            box["error"] = err

    worker = threading.Thread(target=target, name=what, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CallTimeout(f"{what}: no answer within {seconds:g}s")
    if "error" in box:
        err = box["error"]
        if isinstance(err, libvirt.libvirtError):
            raise translate(err, what) from err
        raise err
    return box["value"]


# Stats groups: libvirt's flag, the prefix of its keys, and a per-domain fallback.
def _state_fallback(dom: libvirt.virDomain) -> dict[str, Any]:
    state, why = dom.state()
    return {"state.state": state, "state.reason": why}


@dataclass(frozen=True)
class Group:
    flag: int
    prefix: str
    fallback: Callable[[libvirt.virDomain], dict[str, Any]] | None = None


GROUPS: dict[str, Group] = {
    "state": Group(libvirt.VIR_DOMAIN_STATS_STATE, "state.", _state_fallback),
    "cpu": Group(libvirt.VIR_DOMAIN_STATS_CPU_TOTAL, "cpu."),
    "balloon": Group(libvirt.VIR_DOMAIN_STATS_BALLOON, "balloon."),
    "vcpu": Group(libvirt.VIR_DOMAIN_STATS_VCPU, "vcpu."),
    "interface": Group(libvirt.VIR_DOMAIN_STATS_INTERFACE, "net."),
    "block": Group(libvirt.VIR_DOMAIN_STATS_BLOCK, "block."),
}


@dataclass
class DomainRecord:
    """One domain's statistics; ``error`` says why some of them could not be read."""

    name: str
    uuid: str
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    dom: Any = None


def _complete(record: DomainRecord, groups: Iterable[str]) -> None:
    """Fill groups the bulk call left out through their per-domain fallback, if they have one."""
    for name in groups:
        group = GROUPS[name]
        if group.fallback is None or any(k.startswith(group.prefix) for k in record.stats):
            continue
        try:
            record.stats.update(group.fallback(record.dom))
        except libvirt.libvirtError as err:
            record.error = f"{name} statistics unreadable: {reason(err)}"


def gather(conn: libvirt.virConnect, groups: Iterable[str]) -> list[DomainRecord]:
    """Statistics of every domain for the given groups: one bulk call, per-domain fallback."""
    wanted = list(groups)
    flags = 0
    for name in wanted:
        flags |= GROUPS[name].flag
    activity.doing(f"reading domain statistics ({', '.join(wanted)})")
    try:
        pairs = conn.getAllDomainStats(flags)
    except libvirt.libvirtError:
        try:
            doms = conn.listAllDomains(0)
        except libvirt.libvirtError as err:
            raise translate(err, "cannot list domains") from err
        pairs = [(dom, {}) for dom in doms]
    records = []
    for dom, stats in pairs:
        record = DomainRecord(dom.name(), dom.UUIDString(), dict(stats), None, dom)
        _complete(record, wanted)
        records.append(record)
    return records


def autostart_uuids(conn: libvirt.virConnect) -> set[str]:
    """UUIDs of the domains marked autostart, in one call."""
    activity.doing("listing autostart domains")
    try:
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
    except libvirt.libvirtError as err:
        raise translate(err, "cannot list autostart domains") from err
    return {dom.UUIDString() for dom in doms}


def disk_errors(dom: libvirt.virDomain, seconds: float) -> dict[str, int]:
    """virDomainGetDiskErrors for one domain, under a deadline."""
    return call_with_deadline(lambda: dict(dom.diskErrors()), seconds, f"{dom.name()}: disk errors")
