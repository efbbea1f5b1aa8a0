"""Block jobs of a backup's overlays: active commit, progress, speed, pivot. Each failure comes
back as the project's own exception (``virt.translate``) naming the domain, the disk and the call."""

from __future__ import annotations

import contextlib
from typing import Any

from sensu_kvm import virt
from sensu_kvm.virt import api


def job_info(dom: Any, target: str) -> dict[str, int]:
    """The block job on ``target`` ({} when none): type, bandwidth, cur, end."""
    try:
        return dict(dom.blockJobInfo(target, 0) or {})
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: {target}: block job") from err


def lift_limit(dom: Any, target: str) -> None:
    """No bandwidth limit on the job of ``target`` any more (best effort: the job may have ended)."""
    with contextlib.suppress(api.Error):
        dom.blockJobSetSpeed(target, 0, 0)


def commit_active(dom: Any, target: str, overlay: str, bandwidth: int = 0) -> None:
    """Start committing the top image of ``target`` (the overlay) into the image below it, at most
    ``bandwidth`` bytes/s (0: no limit)."""
    flags = api.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | api.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
    if bandwidth:
        flags |= api.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES
    try:
        dom.blockCommit(target, None, None, bandwidth, flags)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: {target}: cannot commit {overlay}") from err


def pivot(dom: Any, target: str) -> bool:
    """Pivot ``target`` onto the base of its finished commit job: True when done, False when the job
    is not ready yet (libvirt says so); any other failure raised."""
    try:
        dom.blockJobAbort(target, api.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        return True
    except api.Error as err:
        if "not ready" not in str(err) and "pivot" not in str(err).lower():
            raise virt.translate(err, f"{dom.name()}: {target}: pivot") from err
        return False
