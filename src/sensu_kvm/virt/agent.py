"""Guest agent calls, each under its own deadline (and libvirt's own agent timeout)."""

from __future__ import annotations

import json
import math
from typing import Any

import libvirt

from sensu_kvm.virt.deadline import call_with_deadline, raw

FS_INFO = libvirt.VIR_DOMAIN_GUEST_INFO_FILESYSTEM
OS_INFO = libvirt.VIR_DOMAIN_GUEST_INFO_OS
HOSTNAME_INFO = libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME


def agent_timeout(seconds: float) -> int:
    """libvirt's own wait for the agent, in whole seconds (at least 1): libvirtd gives up too, so an
    abandoned call does not keep the domain's agent busy for long."""
    return max(1, math.ceil(seconds))


def agent_command(dom: Any, command: str, seconds: float, arguments: dict[str, Any] | None = None) -> Any:
    """One guest agent command (``guest-ping``, ``guest-info``, ...); its ``return`` value."""
    import libvirt_qemu  # type: ignore[import-untyped]  # noqa: PLC0415 (only agent and monitor users need it)

    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    text = json.dumps(request)
    plain = raw(dom)
    answer = call_with_deadline(lambda: libvirt_qemu.qemuAgentCommand(plain, text, agent_timeout(seconds), 0),
                                seconds, f"{plain.name()}: guest agent {command}")
    try:
        return json.loads(answer).get("return") if answer else None
    except (ValueError, AttributeError):
        return None


def guest_info(dom: Any, types: int, seconds: float) -> dict[str, Any]:
    """virDomainGetGuestInfo for the given VIR_DOMAIN_GUEST_INFO_* types (0: all)."""
    plain = raw(dom)
    return dict(call_with_deadline(lambda: plain.guestInfo(types, 0), seconds, f"{plain.name()}: guest info"))
