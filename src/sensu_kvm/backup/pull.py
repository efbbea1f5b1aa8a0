"""Backups through libvirt's backup API in pull mode (kvm-backup/2): whether it can be used, the chain
record of each domain, the plan of a run (the level actually done, and why a full when another was
asked for), the names of a run's socket, scratch files and checkpoint, and the job's start and end.
``create.create`` drives it (engine ``api``); ``recover`` undoes a killed run from its journal."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sensu_kvm import qcow2
from sensu_kvm.atomic import write_atomic
from sensu_kvm.backup.catalog import CHAIN_NAME_RE, stamp
from sensu_kvm.backup.dest import Destination, LocalFolder, dest_key
from sensu_kvm.backup.disks import Disk
from sensu_kvm.errors import KvmError
from sensu_kvm.virt import api, backupjobs, nbd

CHECKPOINT_PREFIX = "kvm-backup-"  # every checkpoint this tool makes; it never deletes one without it
SCRATCH_TAG = "kvm-backup-scratch"
RUN_DIR = "/run/kvm-backup"
SOCKET = "backup.nbd"
MAX_CHAIN = 30


def unusable(conn: Any, dom: Any) -> str:
    """'' when a backup of ``dom`` can go through the backup API now, else why not (one line)."""
    why = nbd.available()
    if why:
        return why
    if not hasattr(dom, "backupBegin"):
        return "this libvirt Python binding has no backup API (backupBegin)"
    try:
        if not dom.isActive():
            return "the domain is not running"
        caps = str(conn.getDomainCapabilities(None, None, None, None, 0))
    except api.Error as err:
        words = " ".join(str(err).split())
        if err.get_error_code() == api.VIR_ERR_NO_SUPPORT:  # the test driver: no domain capabilities, no backups
            return f"this libvirt driver cannot report backup support ({words})"
        return f"libvirt cannot say whether it can ({words})"
    if "<backup supported='yes'/>" not in caps:
        return "this libvirt/QEMU has no incremental backup support (domain capabilities: no <backup supported='yes'/>)"
    return ""


def unusable_disks(disks: Iterable[Disk]) -> str:
    """'' when every disk to copy can take a checkpoint's bitmap, else why not (one line): a qcow2 v2
    image cannot store a dirty bitmap (QEMU: "Cannot store dirty bitmaps in qcow2 v2 files"), so
    libvirt would refuse the checkpoint and the backup."""
    for d in disks:
        if d.copy and d.format == "qcow2" and qcow2.version(d.source) == 2:
            return (f"{d.target}: {d.source} is a qcow2 v2 image (compat=0.10), which cannot hold a dirty bitmap "
                    "(qemu-img amend -o compat=1.1 upgrades it, the guest shut off)")
    return ""


# --- names of a run ---------------------------------------------------------------------------------


class Names(NamedTuple):
    checkpoint: str
    socket_dir: str
    socket: str
    scratch: dict[str, str]  # target -> scratch file


def names(uuid: str, when: float, sources: dict[str, str], scratch_dir: str | None = None) -> Names:
    """The checkpoint, socket and scratch files of a run started at ``when`` (``sources``: target ->
    image of each copied disk; the scratch goes beside it unless ``scratch_dir`` is given)."""
    tag = stamp(when)
    short = uuid.replace("-", "")[:8]
    folder = os.path.join(RUN_DIR, f"nbd-{short}")
    scratch = {t: os.path.join(scratch_dir or os.path.dirname(src), f".{short}.{SCRATCH_TAG}-{tag}.{t}.qcow2")
               for t, src in sources.items()}
    return Names(f"{CHECKPOINT_PREFIX}{tag}", folder, os.path.join(folder, SOCKET), scratch)


def marks(data: dict[str, Any]) -> list[str]:
    """What a job of the run of journal ``data`` names: its socket and scratch files."""
    return [m for m in [data.get("socket") or "", *(data.get("scratch") or {}).values()] if m]


# --- the chain record --------------------------------------------------------------------------------


def record_path(state_dir: str, uuid: str) -> str:
    return os.path.join(state_dir, f"{uuid}.chain.json")


def load_record(state_dir: str, uuid: str) -> dict[str, Any]:
    """The chain record of a domain: realpath of a destination -> its chain (see ``link``); {} when
    none or unreadable (a full follows, saying so)."""
    try:
        with open(record_path(state_dir, uuid)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    dests = data.get("dests") if isinstance(data, dict) else None
    return dests if isinstance(dests, dict) else {}


def save_record(state_dir: str, uuid: str, dest: str, entry: dict[str, Any]) -> None:
    """Store ``entry`` as the chain of ``dest`` (a folder, HOST:DIR or a ``dest_key``; atomic; the
    other destinations kept)."""
    dests = load_record(state_dir, uuid)
    dests[dest_key(dest)] = entry
    write_atomic(record_path(state_dir, uuid), json.dumps({"uuid": uuid, "dests": dests}, indent=1, sort_keys=True))


class DiskNow(NamedTuple):
    """A copied disk as the running domain has it now."""

    target: str
    source: str
    format: str
    virtual_size: int


def link(archive: str, sha256: str, size: int, mtime: float, level: str, checkpoint: str, root: str,
         root_sha256: str, root_checkpoint: str, depth: int, disks: Iterable[DiskNow],
         levels: dict[str, str]) -> dict[str, Any]:
    """The record of the newest archive of a destination's chain (what the next run builds on)."""
    return {"archive": archive, "sha256": sha256, "size": size, "mtime": mtime, "level": level,
            "checkpoint": checkpoint, "root": root, "root_sha256": root_sha256, "root_checkpoint": root_checkpoint,
            "depth": depth,
            "disks": {d.target: {"source": d.source, "virtual_size": d.virtual_size, "format": d.format,
                                 "level": levels.get(d.target, "full")} for d in disks}}


# --- the plan ----------------------------------------------------------------------------------------


class Plan(NamedTuple):
    level: str  # full, inc, diff: what this run does
    why_full: str  # '' or why a full was done when inc/diff/auto was asked for
    since: str | None  # the checkpoint an inc/diff starts from
    parent: str | None  # the parent archive's name
    parent_sha256: str | None
    root: str | None  # the chain's full (None for a full: itself)
    root_checkpoint: str | None
    depth: int  # archives after the full (0 for a full)
    whole: tuple[str, ...]  # targets copied whole in an inc/diff (raw disks, disks new or changed since)
    bitmaps: tuple[str, ...]  # targets read through their dirty bitmap


def full(why: str = "") -> Plan:
    return Plan("full", why, None, None, None, None, None, 0, (), ())


def plan(dom: Any, disks: list[DiskNow], record: dict[str, Any], dest: str | Destination, level: str,
         max_chain: int = MAX_CHAIN, checkpoints: list[str] | None = None) -> Plan:
    """The level this run does (``level``: full, inc, diff, auto = inc when a usable chain exists)
    and why it falls back to a full: no record, a record of another destination, the parent archive
    missing or changed (size and mtime against the record), the checkpoint gone from libvirt, a disk
    resized, the chain as long as ``max_chain``. ``checkpoints`` (the domain's checkpoint names) is
    read from ``dom`` when not given."""
    if level == "full":
        return full()
    place = LocalFolder(dest) if isinstance(dest, str) else dest
    entry = record.get(place.key)
    if not isinstance(entry, dict):
        if record:
            return full(f"the last chain of this domain is in another destination ({sorted(record)[0]})")
        return full("no earlier backup of this domain through the backup API (no chain record)")
    try:
        parent = str(entry["archive"])
        depth = int(entry["depth"])
        since = str(entry["root_checkpoint"] if level == "diff" else entry["checkpoint"])
        known = entry["disks"]
        root = str(entry["root"])
        sha = str(entry["sha256"])
        size, mtime = int(entry["size"]), float(entry["mtime"])
        root_cp = str(entry["root_checkpoint"])
    except (KeyError, TypeError, ValueError):
        return full("the chain record is unreadable")
    for name in (parent, root):  # a state file is not trusted: only a plain archive name of this folder
        if os.path.basename(name) != name or name.startswith(".") or not CHAIN_NAME_RE.match(name):
            return full(f"the chain record names {name!r}, not an archive in {place.shown}")
    found = place.stat(parent)
    if found is None:
        return full(f"the parent archive {parent} is missing")
    if found != (size, mtime):
        return full(f"the parent archive {parent} changed since it was written (size or time)")
    if level == "diff":
        parent = root
        if place.stat(root) is None:
            return full(f"the chain's full {root} is missing")
        sha = str(entry.get("root_sha256") or "")
        if not sha:
            return full("the chain record has no sha256 of its full")
        depth = 0
    if depth + 1 >= max_chain:
        return full(f"the chain has {depth + 1} archives (--max-chain {max_chain})")
    names_now = checkpoints if checkpoints is not None else checkpoint_names(dom)
    if since not in names_now:
        return full(f"the checkpoint {since} is gone from libvirt")
    whole, bitmaps = [], []
    for d in disks:
        old = known.get(d.target) if isinstance(known, dict) else None
        if isinstance(old, dict) and old.get("source") == d.source and old.get("format") == d.format \
                and old.get("virtual_size") != d.virtual_size:
            return full(f"{d.target} was resized ({old.get('virtual_size')} -> {d.virtual_size} bytes)")
        if d.format != "qcow2" or not isinstance(old, dict) or old.get("source") != d.source \
                or old.get("format") != d.format:
            whole.append(d.target)
        else:
            bitmaps.append(d.target)
    return Plan("diff" if level == "diff" else "inc", "", since, parent, sha, root, root_cp, depth + 1,
                tuple(whole), tuple(bitmaps))


def why_whole(d: DiskNow) -> str:
    """Why a disk is copied whole in an inc/diff (one phrase)."""
    if d.format != "qcow2":
        return f"a {d.format} disk has no dirty bitmap"
    return "new since the parent archive"


# --- the job -----------------------------------------------------------------------------------------


def begin(dom: Any, run: Names, disks: list[DiskNow], skip: Iterable[str], p: Plan) -> None:
    """Start the pull job of ``p`` with the checkpoint ``run.checkpoint`` (bitmaps on qcow2 disks)."""
    backupjobs.socket_dir(dom, run.socket_dir)
    skip = list(skip)
    bitmapped = [d.target for d in disks if d.format == "qcow2"]
    others = [d.target for d in disks if d.format != "qcow2"] + skip
    backupjobs.begin(dom, backupjobs.backup_xml(run.socket, run.scratch, p.since, skip, p.whole),
                     backupjobs.checkpoint_xml(run.checkpoint, bitmapped, others, "kvm-backup"))


def end(dom: Any, run_marks: list[str], timeout: float = 60) -> bool | None:
    """End the job of ours (if any runs): abort_leftover with the run's marks."""
    return backupjobs.abort_leftover(dom, run_marks, timeout)


def remove_files(data: dict[str, Any]) -> list[str]:
    """Delete the scratch files and the socket folder a run left; what was removed."""
    gone = []
    for path in (data.get("scratch") or {}).values():
        with contextlib.suppress(OSError):
            os.unlink(path)
            gone.append(path)
    folder = data.get("socket_dir")
    if folder and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
        gone.append(folder)
    return gone


def thaw(dom: Any) -> None:
    """Thaw the guest's file systems (a guest not frozen answers an error: ignored)."""
    with contextlib.suppress(api.Error):
        dom.fsThaw()


def freeze(dom: Any, log: Callable[[str], None]) -> str:
    """'' when the guest agent froze the file systems, else why not (the crash-consistent reason)."""
    try:
        dom.fsFreeze()
    except api.Error as err:
        log(f"{dom.name()}: the guest agent could not freeze the file systems ({' '.join(str(err).split())}); "
            "the backup is crash-consistent")
        return "the guest agent could not freeze"
    return ""


def prune_checkpoints(dom: Any, keep: Iterable[str], log: Callable[[str], None]) -> list[str]:
    """Delete the checkpoints of ours (CHECKPOINT_PREFIX) that are not in ``keep``; never another one."""
    keep = set(keep)
    deleted = []
    for name in checkpoint_names(dom):
        if name in keep:
            continue
        try:
            backupjobs.delete_checkpoint(dom, name)
            deleted.append(name)
        except KvmError as err:
            log(f"{dom.name()}: cannot delete the old checkpoint {name}: {err}")
    return deleted


def checkpoint_names(dom: Any) -> list[str]:
    """The domain's checkpoints of ours (named with CHECKPOINT_PREFIX)."""
    return backupjobs.checkpoint_names(dom, CHECKPOINT_PREFIX)


def delete_checkpoint(dom: Any, name: str) -> None:
    """Delete one checkpoint of ours (never one without CHECKPOINT_PREFIX)."""
    if name.startswith(CHECKPOINT_PREFIX):
        backupjobs.delete_checkpoint(dom, name)
