"""QEMU monitor calls (human monitor commands), under a deadline."""

from __future__ import annotations

from typing import Any

from sensu_kvm.virt.deadline import call_with_deadline, raw


def monitor_command(dom: Any, command: str, seconds: float) -> str:
    """A human monitor (HMP) command through libvirt, such as ``info status``; its text."""
    import libvirt_qemu  # type: ignore[import-untyped]  # noqa: PLC0415 (only agent and monitor users need it)

    plain = raw(dom)
    return str(call_with_deadline(
        lambda: libvirt_qemu.qemuMonitorCommand(plain, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP),
        seconds, f"{plain.name()}: QEMU monitor"))
