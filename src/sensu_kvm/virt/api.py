"""What the backup and snapshot engines use of libvirt, so that they never import it: the
constants they pass and compare (under libvirt's own names), the types they annotate with, the
error class they catch (and turn into the project's own exceptions with ``virt.translate``), and
the one guest agent call of a backup."""

from __future__ import annotations

from typing import Any

import libvirt

Error = libvirt.libvirtError
Connect = libvirt.virConnect
Domain = libvirt.virDomain
DomainSnapshot = libvirt.virDomainSnapshot

# domain states
VIR_DOMAIN_RUNNING = libvirt.VIR_DOMAIN_RUNNING
VIR_DOMAIN_PAUSED = libvirt.VIR_DOMAIN_PAUSED
VIR_DOMAIN_PAUSED_IOERROR = libvirt.VIR_DOMAIN_PAUSED_IOERROR
VIR_DOMAIN_SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF
VIR_DOMAIN_CRASHED = libvirt.VIR_DOMAIN_CRASHED
VIR_DOMAIN_SHUTOFF_FAILED = libvirt.VIR_DOMAIN_SHUTOFF_FAILED

# listing and XML
VIR_CONNECT_LIST_DOMAINS_ACTIVE = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
VIR_DOMAIN_XML_INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE
VIR_DOMAIN_XML_SECURE = libvirt.VIR_DOMAIN_XML_SECURE
VIR_DOMAIN_UNDEFINE_NVRAM = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM

# block jobs
VIR_DOMAIN_BLOCK_COMMIT_ACTIVE = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
VIR_DOMAIN_BLOCK_COMMIT_SHALLOW = libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES = libvirt.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES
VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT = libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT

# snapshots
VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
VIR_DOMAIN_SNAPSHOT_XML_SECURE = libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE

# error codes the engines tell apart
VIR_ERR_NO_DOMAIN = libvirt.VIR_ERR_NO_DOMAIN
VIR_ERR_NO_DOMAIN_SNAPSHOT = libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT
VIR_ERR_OPERATION_FAILED = libvirt.VIR_ERR_OPERATION_FAILED
VIR_ERR_OPERATION_INVALID = libvirt.VIR_ERR_OPERATION_INVALID
VIR_ERR_OPERATION_TIMEOUT = libvirt.VIR_ERR_OPERATION_TIMEOUT
VIR_ERR_NO_DOMAIN_BACKUP = libvirt.VIR_ERR_NO_DOMAIN_BACKUP
VIR_ERR_NO_DOMAIN_CHECKPOINT = libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT

# backup jobs and checkpoints (libvirt's backup API, pull mode)
VIR_DOMAIN_JOB_NONE = libvirt.VIR_DOMAIN_JOB_NONE
VIR_DOMAIN_JOB_OPERATION_BACKUP = libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY = libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY


def agent_answers(dom: Any, seconds: int = 2) -> bool:
    """Whether the domain's guest agent answers a ping within ``seconds``."""
    try:
        import libvirt_qemu  # type: ignore[import-untyped]  # noqa: PLC0415 (only a quiesced backup needs it)

        libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', seconds, 0)
        return True
    except Exception:
        return False
