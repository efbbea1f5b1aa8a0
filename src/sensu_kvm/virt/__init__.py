"""The only code that imports libvirt (and libvirt_qemu): everything that talks to libvirt.

Modules:

* ``connection`` -- opening a connection (read-only by default), libvirt's error printer silenced;
* ``deadline``   -- every call under a per-call deadline: the Timed proxy that ``connect`` returns;
* ``errors``     -- the one classifier from libvirtError to the project's exceptions (by code);
* ``stats``      -- the bulk statistics with the per-domain fallback; the host's counters;
* ``lookup``     -- domains by name, UUID or ID; every domain; the autostart ones;
* ``versions``   -- version facts of libvirt and the hypervisor;
* ``agent``, ``monitor`` -- guest agent and QEMU monitor commands (imported by name where they are
  used, not here: a check that needs no agent does not pay for loading it, ~2 ms a run).

The names below are the ones the rest of the code uses: ``from sensu_kvm import virt;
virt.connect(...)``. libvirt's own types and constants are re-exported for the modules that need
a flag (``virt.VIR_DOMAIN_RUNNING``) without importing libvirt themselves.
"""

from __future__ import annotations

import libvirt

from sensu_kvm.uris import scrub, shown_uri
from sensu_kvm.virt.connection import DEFAULT_URI, connect, resolve_uri, set_default_timeout
from sensu_kvm.virt.deadline import (
    DEFAULT_TIMEOUT,
    LONG_CALLS,
    LONG_FACTOR,
    Pending,
    Timed,
    api_name,
    call_with_deadline,
    raw,
    run_with_deadline,
    start,
    wrap,
)
from sensu_kvm.virt.errors import kind, reason, translate
from sensu_kvm.virt.lookup import (
    all_domains,
    autostart_uuids,
    domain_by_any,
    is_autostart,
    lookup_domain,
    metadata_element,
    qemu_log,
)
from sensu_kvm.virt.stats import (
    BUSY,
    GROUPS,
    LATE,
    LATE_MARK,
    DomainRecord,
    Group,
    concurrency,
    disk_errors,
    gather,
    in_parallel,
    late_error,
    node_cpu_stats,
    node_memory_stats,
    set_concurrency,
)
from sensu_kvm.virt.versions import client_version, hypervisor_version, lib_version, version_text

libvirtError = libvirt.libvirtError
virConnect = libvirt.virConnect
virDomain = libvirt.virDomain
virDomainSnapshot = libvirt.virDomainSnapshot


def __getattr__(name: str) -> object:
    """libvirt's constants (VIR_*) through this module, for code that must not import libvirt."""
    if name.startswith("VIR_"):
        return getattr(libvirt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUSY",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URI",
    "GROUPS",
    "LATE",
    "LATE_MARK",
    "LONG_CALLS",
    "LONG_FACTOR",
    "DomainRecord",
    "Group",
    "Pending",
    "Timed",
    "all_domains",
    "api_name",
    "autostart_uuids",
    "call_with_deadline",
    "client_version",
    "concurrency",
    "connect",
    "disk_errors",
    "domain_by_any",
    "gather",
    "hypervisor_version",
    "in_parallel",
    "is_autostart",
    "kind",
    "late_error",
    "lib_version",
    "libvirtError",
    "lookup_domain",
    "metadata_element",
    "node_cpu_stats",
    "node_memory_stats",
    "qemu_log",
    "raw",
    "reason",
    "resolve_uri",
    "run_with_deadline",
    "scrub",
    "set_concurrency",
    "set_default_timeout",
    "shown_uri",
    "start",
    "translate",
    "version_text",
    "virConnect",
    "virDomain",
    "virDomainSnapshot",
    "wrap",
]
