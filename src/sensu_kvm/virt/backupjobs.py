"""Backup jobs of libvirt's backup API in pull mode, and their checkpoints.

libvirt exports a frozen point-in-time view of each disk over NBD on a unix socket (QEMU keeps the
old data of every block the guest writes meanwhile in a scratch file per disk); the reader is
``virt.nbd``. A pull job never ends by itself: the caller ends it with ``abort`` (a normal end in
pull mode: libvirt stops the NBD server and deletes the scratch files). Each failure comes back as
the project's own exception (``virt.translate``) naming the domain, the disk and the call, as
``virt.jobs`` does for block jobs. Measured on libvirt 9.0 / QEMU 7.2: docs/decisions.md, issue 17.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sensu_kvm import virt
from sensu_kvm.domxml import xml_escape, xml_quoteattr
from sensu_kvm.errors import LibvirtFailure
from sensu_kvm.virt import api

# The DAC label of a running domain: the user and group its QEMU runs as (+UID:+GID).
_DAC_LABEL = re.compile(r"<seclabel\b[^>]*\bmodel='dac'[^>]*>\s*<label>\+(\d+):\+(\d+)</label>")


def backup_xml(socket: str, scratch: Mapping[str, str], since: str | None = None,
               skip: Iterable[str] = (), full: Iterable[str] = ()) -> str:
    """The ``<domainbackup mode='pull'>`` for a unix-socket export of each disk of ``scratch``
    (target -> its scratch file). ``since``: the checkpoint an incremental starts from (None: a
    full). ``skip``: targets that take no part (a CD-ROM); ``full``: targets copied whole in an
    incremental (a raw disk has no bitmap). With ``<disks>`` given, libvirt leaves unlisted disks out."""
    full = set(full)
    lines = ["<domainbackup mode='pull'>"]
    if since is not None:
        lines.append(f"  <incremental>{xml_escape(since)}</incremental>")
    lines.append(f"  <server transport='unix' socket={xml_quoteattr(socket)}/>")
    lines.append("  <disks>")
    for target, path in scratch.items():
        mode = " backupmode='full'" if since is not None and target in full else ""
        lines.append(f"    <disk name={xml_quoteattr(target)} backup='yes' type='file'{mode}>"
                     f"<scratch file={xml_quoteattr(path)}/></disk>")
    lines.extend(f"    <disk name={xml_quoteattr(target)} backup='no'/>" for target in skip)
    lines.append("  </disks>")
    lines.append("</domainbackup>")
    return "\n".join(lines) + "\n"


def checkpoint_xml(name: str, bitmaps: Iterable[str], others: Iterable[str] = (), description: str = "") -> str:
    """The ``<domaincheckpoint>`` named ``name``: a bitmap on each target of ``bitmaps`` (qcow2
    disks), none on ``others`` (raw disks, CD-ROMs: libvirt refuses a checkpoint of a raw disk)."""
    lines = ["<domaincheckpoint>", f"  <name>{xml_escape(name)}</name>"]
    if description:
        lines.append(f"  <description>{xml_escape(description)}</description>")
    lines.append("  <disks>")
    lines.extend(f"    <disk name={xml_quoteattr(t)} checkpoint='bitmap'/>" for t in bitmaps)
    lines.extend(f"    <disk name={xml_quoteattr(t)} checkpoint='no'/>" for t in others)
    lines.append("  </disks>")
    lines.append("</domaincheckpoint>")
    return "\n".join(lines) + "\n"


def qemu_owner(dom: Any) -> tuple[int, int]:
    """The user and group the running domain's QEMU runs as (its DAC label; libvirt-qemu:kvm on
    Debian), for the folder where QEMU must create the NBD socket."""
    try:
        xml = dom.XMLDesc(0)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: domain XML") from err
    found = _DAC_LABEL.search(xml)
    if not found:
        return (os.getuid(), os.getgid())  # no DAC label: QEMU runs as libvirtd's own user
    return (int(found[1]), int(found[2]))


def socket_dir(dom: Any, path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (mode 0700) owned by the domain's QEMU user, which creates the socket in it
    (a folder only root may write gives "Failed to bind socket ...: Permission denied")."""
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid, gid = qemu_owner(dom)
    os.chown(folder, uid, gid)
    return folder


def begin(dom: Any, backup: str, checkpoint: str | None = None) -> None:
    """Start the pull backup ``backup`` (XML), creating the checkpoint ``checkpoint`` (XML, or none)
    at the same point in time."""
    try:
        dom.backupBegin(backup, checkpoint, 0)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: cannot begin a backup") from err


def current_xml(dom: Any) -> str | None:
    """The XML of the backup job the domain runs, or None when it runs none."""
    try:
        return str(dom.backupGetXMLDesc(0))
    except api.Error as err:
        if err.get_error_code() == api.VIR_ERR_NO_DOMAIN_BACKUP:
            return None
        raise virt.translate(err, f"{dom.name()}: backup job XML") from err


def running(dom: Any) -> bool:
    """Whether the domain runs a backup job (of anybody) now."""
    try:
        stats = dom.jobStats(0)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: job statistics") from err
    return bool(stats.get("type", api.VIR_DOMAIN_JOB_NONE) != api.VIR_DOMAIN_JOB_NONE
                and stats.get("operation") == api.VIR_DOMAIN_JOB_OPERATION_BACKUP)


def abort(dom: Any) -> None:
    """End the domain's backup job (for pull mode the normal end); its scratch files go with it."""
    try:
        dom.abortJob()
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: cannot end the backup job") from err


def wait_no_job(dom: Any, timeout: float = 60) -> bool:
    """Wait up to ``timeout`` seconds until the domain runs no job: True when none is left."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = dom.jobStats(0)
        except api.Error as err:
            raise virt.translate(err, f"{dom.name()}: job statistics") from err
        if stats.get("type", api.VIR_DOMAIN_JOB_NONE) == api.VIR_DOMAIN_JOB_NONE:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def abort_leftover(dom: Any, marks: Iterable[str], timeout: float = 60) -> bool | None:
    """End a backup job left by a run of ours: one whose XML names one of ``marks`` (its socket, a
    scratch file, or the tag in their names). True: ended; None: no backup job runs; False: a job
    runs that names none of the marks (somebody else's), left alone."""
    xml = current_xml(dom)
    if xml is None:
        return None
    if not any(xml_quoteattr(mark)[1:-1] in xml for mark in marks if mark):
        return False
    abort(dom)
    if not wait_no_job(dom, timeout):
        raise LibvirtFailure(f"{dom.name()}: the backup job did not end within {timeout:g} s of abortJob")
    return True


def checkpoint_names(dom: Any, prefix: str = "") -> list[str]:
    """The names of the domain's checkpoints that start with ``prefix``."""
    try:
        return sorted(cp.getName() for cp in dom.listAllCheckpoints(0) if cp.getName().startswith(prefix))
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: checkpoints") from err


def delete_checkpoint(dom: Any, name: str) -> None:
    """Delete the checkpoint ``name`` and its bitmaps; only its metadata when libvirt cannot reach the
    bitmaps (domain shut off, or the bitmap already lost)."""
    try:
        cp = dom.checkpointLookupByName(name, 0)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: checkpoint {name}") from err
    try:
        cp.delete(0)
    except api.Error as err:
        try:
            cp.delete(api.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except api.Error:
            raise virt.translate(err, f"{dom.name()}: cannot delete checkpoint {name}") from err
