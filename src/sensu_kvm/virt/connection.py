"""Opening a connection: read-only unless asked, under a deadline, wrapped so that every later
call runs under the per-call deadline too (virt.deadline)."""

from __future__ import annotations

import os
from typing import Any

import libvirt

from sensu_kvm import activity
from sensu_kvm.errors import ConnectError
from sensu_kvm.uris import scrub, shown_uri
from sensu_kvm.virt.deadline import Timed, run_with_deadline
from sensu_kvm.virt.errors import reason

DEFAULT_URI = "qemu:///system"


def _ignore_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is registered."""


libvirt.registerErrorHandler(_ignore_error, None)


def resolve_uri(uri: str | None) -> str:
    """The URI given, else ``LIBVIRT_DEFAULT_URI``, else ``qemu:///system``.

    An empty URI given on purpose is refused (the option types refuse it first): libvirt would
    take it for its own default, which may be the real host when a test or remote one was meant."""
    if uri is not None and not uri.strip():
        raise ConnectError("empty libvirt URI: give one such as qemu:///system, or none for the default")
    return uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


# None until a command sets one: the checks keep libvirt's own connection, since their process
# watchdog (plugin.py) already bounds them and the proxy costs measurable time on their hot path
# (docs/decisions.md, "Deadlines"); the tools and the handler set their --timeout.
_default: dict[str, float | None] = {"timeout": None}
_UNSET = -1.0


def set_default_timeout(seconds: float | None) -> None:
    """The per-call deadline of the connections ``connect`` opens from now on when it is given
    none: a tool sets its ``--timeout`` here once, so that every connection of the command
    (the engines open theirs too) has it. None: libvirt's own connections, with no deadline."""
    _default["timeout"] = seconds


def connect(uri: str | None, readonly: bool = True, timeout: float | None = _UNSET) -> Any:
    """Open a connection (read-only unless asked); failures become ConnectError.

    With a ``timeout`` (seconds; by default the one set_default_timeout set, if any) the opening
    runs under that deadline and the connection comes back wrapped in virt.deadline.Timed: every
    call on it, and on every object it returns, runs under the same per-call deadline.
    ``timeout=None`` (the default when no command set one) gives libvirt's own connection, for
    callers that run under a process watchdog of their own (the checks).
    """
    if timeout == _UNSET:
        timeout = _default["timeout"]
    target = resolve_uri(uri)
    shown = shown_uri(target)
    activity.doing(f"connecting to {shown}")

    def open_it() -> libvirt.virConnect:
        return libvirt.openReadOnly(target) if readonly else libvirt.open(target)

    try:
        if timeout is None:
            conn = open_it()
        else:
            conn = run_with_deadline(open_it, timeout, "virConnectOpen",
                                     f"cannot connect to {shown}: virConnectOpen did not answer within {timeout:g}s")
    except libvirt.libvirtError as err:
        raise ConnectError(f"cannot connect to {shown}: {scrub(reason(err), target)}") from err
    except UnicodeError as err:  # a URI that is not valid UTF-8 cannot be passed to libvirt
        raise ConnectError(f"cannot connect to {shown}: the URI is not valid UTF-8") from err
    if conn is None:  # very old bindings returned None instead of raising
        raise ConnectError(f"cannot connect to {shown}")
    return conn if timeout is None else Timed(conn, timeout)
