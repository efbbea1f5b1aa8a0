"""The one classifier: every libvirtError becomes one of the project's exceptions.

By libvirt's error code and domain only, never by matching the message text (which changes
between libvirt versions and is translated in some locales).
"""

from __future__ import annotations

import libvirt

from sensu_kvm.errors import (
    AccessDenied,
    AgentUnavailable,
    CallTimeout,
    Disconnected,
    LibvirtFailure,
    NotFound,
    ReadOnlyRefused,
    Unsupported,
)

libvirtError = libvirt.libvirtError

NOT_FOUND_CODES = frozenset({
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT, libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT,
    libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_INTERFACE, libvirt.VIR_ERR_NO_NODE_DEVICE, libvirt.VIR_ERR_NO_SECRET,
    libvirt.VIR_ERR_NO_NWFILTER, libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
})

CLASSES: dict[int, type[LibvirtFailure]] = {
    libvirt.VIR_ERR_OPERATION_DENIED: ReadOnlyRefused,
    libvirt.VIR_ERR_ACCESS_DENIED: AccessDenied,
    libvirt.VIR_ERR_AUTH_FAILED: AccessDenied,
    libvirt.VIR_ERR_AUTH_CANCELLED: AccessDenied,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE: AccessDenied,
    libvirt.VIR_ERR_NO_SUPPORT: Unsupported,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: Unsupported,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE: AgentUnavailable,
    libvirt.VIR_ERR_AGENT_UNSYNCED: AgentUnavailable,
    libvirt.VIR_ERR_NO_CONNECT: Disconnected,
    libvirt.VIR_ERR_INVALID_CONN: Disconnected,
}

_RPC_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


def reason(err: libvirt.libvirtError) -> str:
    """libvirt's own message, without the noise of a Python exception."""
    message = err.get_error_message() or str(err)
    return " ".join(message.split())


def kind(err: libvirt.libvirtError) -> type[LibvirtFailure] | type[NotFound] | type[CallTimeout]:
    """The project's exception class for a libvirtError, from its code and domain."""
    code = err.get_error_code()
    if code in NOT_FOUND_CODES:
        return NotFound
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return CallTimeout
    if code in CLASSES:
        return CLASSES[code]
    if code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC) and err.get_error_domain() in _RPC_DOMAINS:
        return Disconnected
    return LibvirtFailure


def translate(err: libvirt.libvirtError, context: str) -> LibvirtFailure | NotFound | CallTimeout:
    """One place that turns a libvirtError into our exception with a clear message."""
    return kind(err)(f"{context}: {reason(err)}")
