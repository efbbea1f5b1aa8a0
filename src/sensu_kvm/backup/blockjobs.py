"""Block commit of the temporary overlays back into their images, live (pivot) or offline."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from sensu_kvm import domxml
from sensu_kvm.backup.hostinfo import _fail, in_use, live_chains
from sensu_kvm.backup.signals import hurry
from sensu_kvm.domxml import rewrite_xml
from sensu_kvm.errors import KvmError
from sensu_kvm.qcow2 import is_qcow2, virtual_size
from sensu_kvm.virt import api, jobs


def wait_pivot(dom: Any, target: str, timeout: float, log: Callable[[str], None]) -> None:
    """Wait for the active commit job on ``target`` to be ready, then pivot to the base image. When
    a signal waits for the run to end (``hurry``), the job's bandwidth limit goes first."""
    deadline = time.monotonic() + timeout
    hurried = False
    while True:
        info = jobs.job_info(dom, target)
        if not info:
            return  # no job: finished (pivoted) already, or never started; the caller checks
        if hurry() and not hurried:
            hurried = True
            jobs.lift_limit(dom, target)
        if ((info.get("end", 0) and info.get("cur") == info.get("end")) or info.get("end") == 0) and \
                jobs.pivot(dom, target):
            return
        if time.monotonic() > deadline:
            raise KvmError(f"{dom.name()}: {target}: the commit job was not ready within {timeout:g}s; "
                           "run kvm-backup recover later")
        time.sleep(0.05)


def _remove_unused(conn: Any, path: str, what: str, timeout: float = 5.0) -> None:
    """Delete ``path`` once no domain has it in a chain and no QEMU process has it open (QEMU may
    take a moment to close it after a pivot); KvmError, the file kept, if that does not happen."""
    deadline = time.monotonic() + timeout
    while True:
        why = in_use(conn, path)
        if not why:
            break
        if time.monotonic() > deadline:
            raise KvmError(f"{what}: {path} is still in use ({why}): kept")
        time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def commit_back(dom: Any, target: str, overlay: str, base: str, log: Callable[[str], None],
                bandwidth: int = 0, timeout: float = 3600) -> str:
    """Put ``target`` of a running domain back on ``base``: commit ``overlay`` into it (or finish
    a commit job already running), pivot, confirm from the live XML, remove the overlay file once
    nothing uses it. What was done, in one line."""
    name = dom.name()
    chain = live_chains(dom.XMLDesc(0)).get(target, [])
    committed = False
    if chain[:1] == [overlay]:
        if chain[1:2] != [base]:
            raise KvmError(f"{name}: {target}: {overlay} is backed by {chain[1] if len(chain) > 1 else 'nothing'}, "
                           f"not by {base}: left as it is")
        try:
            job = jobs.job_info(dom, target)
        except KvmError:
            job = {}
        if job:
            jobs.lift_limit(dom, target)  # a recovered job: no limit any more
        else:
            jobs.commit_active(dom, target, overlay, bandwidth)
        wait_pivot(dom, target, timeout, log)
        committed = True
        chain = live_chains(dom.XMLDesc(0)).get(target, [])
    elif overlay in chain:
        raise KvmError(f"{name}: {target}: {overlay} is inside the chain ({' <- '.join(chain)}), not on top: "
                       "left as it is")
    if chain[:1] != [base] or overlay in chain:
        raise KvmError(f"{name}: {target} runs on {chain[0] if chain else '?'}, not on its image {base}: "
                       f"{overlay} kept; run kvm-backup recover {name}")
    existed = os.path.exists(overlay)
    _remove_unused(dom.connect(), overlay, f"{name}: {target}")
    if committed:
        return f"{target} committed back from {overlay} onto {base}"
    if existed:
        return f"{target} runs on {base}: the overlay {overlay} was never used; removed"
    return f"{target} runs on {base}: the snapshot was never taken; nothing to commit"


def commit_offline(dom: Any, target: str, overlay: str, base: str) -> str:
    """A shut off domain left on an overlay: qemu-img commit it into the base, point the disk back.
    What was done, in one line."""
    name = dom.name()
    xml = dom.XMLDesc(api.VIR_DOMAIN_XML_INACTIVE | api.VIR_DOMAIN_XML_SECURE)
    on_overlay = any(d.target == target and d.source == overlay for d in domxml.disks(xml))
    what = f"{target} (shut off) runs on {base}: " + (
        f"the overlay {overlay} was never used; removed" if os.path.exists(overlay) else
        "the snapshot was never taken; nothing to commit")
    if on_overlay:
        why = in_use(dom.connect(), overlay)
        if why:
            raise KvmError(f"{name}: {target}: {overlay} is in use ({why}): not committed")
        if os.path.exists(overlay):
            result = subprocess.run(["qemu-img", "commit", "-q", overlay], capture_output=True, text=True, check=False)
            if result.returncode:
                raise KvmError(f"{name}: {target}: qemu-img commit {overlay}: "
                               f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'failed'}")
            what = f"{target} (shut off) committed back from {overlay} onto {base}"
        else:
            what = f"{target} (shut off) pointed back at {base} ({overlay} was gone already)"
        fixed = rewrite_xml(xml, {target: base}, None)
        try:
            dom.connect().defineXML(_restore_format(fixed, target, xml, base))
        except api.Error as err:
            raise _fail(err, f"{name}: cannot point {target} back at {base}") from err
    _remove_unused(dom.connect(), overlay, f"{name}: {target}")
    return what


def _restore_format(xml: str, target: str, _old: str, base: str) -> str:
    """The disk's driver type as the base image is (raw or qcow2), after an overlay changed it."""
    return domxml.set_format(xml, target, "qcow2" if virtual_size(base) and is_qcow2(base) else "raw")


