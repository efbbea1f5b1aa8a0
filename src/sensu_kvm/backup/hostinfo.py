"""What the host says now: versions, live disk sources and chains, QEMU processes holding a file."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sensu_kvm import domxml, virt
from sensu_kvm.errors import KvmError
from sensu_kvm.virt import api

# --- libvirt flows ---------------------------------------------------------------------------------


def _fail(err: Exception, what: str) -> KvmError:
    """A libvirt error translated in the one place (virt.translate); anything else with ``what``."""
    if isinstance(err, api.Error):
        return virt.translate(err, what)
    return KvmError(f"{what}: {err}")


def live_sources(dom: Any) -> dict[str, str]:
    """target -> top image of each disk in the live (or, when shut off, inactive) XML."""
    return {d.target: d.source for d in domxml.disks(dom.XMLDesc(0)) if d.source}


def live_chains(xml: str) -> dict[str, list[str]]:
    """target -> the images of each disk's chain, top first, from its <source> and <backingStore>s
    (in the live XML: what QEMU uses now)."""
    return {target: [layer.path for layer in layers] for target, layers in domxml.chains(xml).items()}


QEMU_PID_DIR = "/run/libvirt/qemu"


def qemu_pids() -> set[int]:
    """Every QEMU process of the host: libvirt's pid files, and any process named qemu-*."""
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(QEMU_PID_DIR):
            if name.endswith(".pid"):
                with contextlib.suppress(OSError, ValueError), open(os.path.join(QEMU_PID_DIR, name)) as f:
                    pids.add(int(f.read().strip()))
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("qemu"):
                        pids.add(int(entry))
    return pids


def holders(path: str) -> list[int]:
    """QEMU processes that have ``path`` open (by inode, or by name when it was deleted)."""
    try:
        st = os.stat(path)
        inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    real = os.path.realpath(path)
    found = []
    for pid in sorted(qemu_pids()):
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{folder}/{fd}")
                if link in (real, f"{real} (deleted)"):
                    found.append(pid)
                    break
                if inode and link.startswith("/"):
                    st = os.stat(f"{folder}/{fd}")
                    if (st.st_dev, st.st_ino) == inode:
                        found.append(pid)
                        break
            except OSError:
                continue
    return found


def in_use(conn: Any, path: str) -> str:
    """Why ``path`` must not be deleted ("" when nothing uses it): a running domain has it in a disk
    chain, or a QEMU process has it open."""
    try:
        doms = conn.listAllDomains(api.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except api.Error as err:
        raise _fail(err, "cannot list the running domains") from err
    for other in doms:
        try:
            chains = live_chains(other.XMLDesc(0))
        except api.Error:
            continue  # gone meanwhile
        for target, chain in chains.items():
            if path in chain:
                return f"{other.name()} has it in the chain of {target}"
    pids = holders(path)
    if pids:
        return f"QEMU process {pids[0]} has it open"
    return ""


def agent_answers(dom: Any, xml: str) -> bool:
    """Whether the domain has a guest agent channel and the agent answers a ping within 2 s."""
    return "org.qemu.guest_agent.0" in xml and api.agent_answers(dom, 2)
