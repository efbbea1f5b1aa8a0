"""The snapshot engine behind kvm-snapshot: pure planning first, thin libvirt calls after.

Planning works on ``snapinfo.Snapshot`` records (tree, prune selection, rename and delete safety,
free space for overlays); the libvirt-calling functions below it do one thing each and translate
every libvirtError. Behaviour of libvirt 9.0 that shaped this (measured, ../shared/notes):

- renaming a snapshot by redefining it under a new name and deleting the old metadata reparents
  the children to the grandparent (what ``virsh snapshot-edit --rename`` does); so we redefine
  the children with the new parent first;
- libvirt reverts an internal snapshot by its name, and the qcow2 image keeps the old tag: a
  renamed internal snapshot cannot be reverted (the domain ends up shut off (failed)), so renaming
  an internal snapshot is refused;
- deleting an external snapshot is supported from 9.0 (not when its parent is internal), reverting
  to one from 9.9;
- deleting an external snapshot whose overlay was already committed fails with ``could not find
  base disk source in disk source chain``: only its metadata is left to remove;
- an external snapshot whose parent is internal cannot be deleted (``deleting external snapshot
  that has internal snapshot as parent not supported``), running or shut off, and neither can that
  parent while the guest runs on the overlay (``disk image 'vda' for internal snapshot ... is not the
  same as disk image currently used by VM``); ``virsh blockcommit --active --shallow --pivot`` and
  then a metadata-only delete work (a shut off domain started paused for the commit);
- reverting to an internal snapshot while a disk runs on a later external overlay succeeds by
  putting the disk back on the image that holds the tag, leaving the overlay in no chain; and a
  revert whose tag is missing from an image stops the guest first and leaves it shut off (failed).
  So revert checks the images first (qcow2 snapshot tables, read in Python: safe while QEMU runs).
"""

from __future__ import annotations

import os
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from xml.sax.saxutils import escape, quoteattr

import libvirt

from sensu_kvm import activity, virt
from sensu_kvm.errors import KvmError, LibvirtFailure, NotFound
from sensu_kvm.snapinfo import Layer, SavedDisk, Snapshot, chains, parse_snapshot, read_snapshots, saved_disks

EXTERNAL_DELETE_VERSION = 9_000_000  # libvirt 9.0: virDomainSnapshotDelete of external snapshots
EXTERNAL_REVERT_VERSION = 9_009_000  # libvirt 9.9: virDomainRevertToSnapshot of external snapshots
COMMITTED = "could not find base disk source in disk source chain"
MIB = 1024 * 1024


class BadRequest(KvmError):
    """The request itself cannot be done as asked (name taken, raw disk, ...): nothing changed."""


class Refused(KvmError):
    """The request is valid but the host or libvirt cannot do it safely: nothing changed."""


def version_text(number: int) -> str:
    major, rest = divmod(number, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"


# --- the tree ------------------------------------------------------------------------------------


def by_name(snaps: Iterable[Snapshot]) -> dict[str, Snapshot]:
    return {s.name: s for s in snaps}


def depths(snaps: Iterable[Snapshot]) -> dict[str, int]:
    """How many ancestors libvirt knows of each snapshot (0 for a root)."""
    index = by_name(snaps)
    found: dict[str, int] = {}
    for name in index:
        seen = {name}
        parent = index[name].parent
        depth = 0
        while parent in index and parent not in seen:
            seen.add(parent)
            depth += 1
            parent = index[parent].parent
        found[name] = depth
    return found


def ordered(snaps: Iterable[Snapshot]) -> list[Snapshot]:
    """Oldest first; within one second (creation times are whole seconds), parents first."""
    items = list(snaps)
    depth = depths(items)
    return sorted(items, key=lambda s: (s.created, depth[s.name], s.name))


def children(snaps: Iterable[Snapshot]) -> dict[str, list[str]]:
    """Each snapshot's children, oldest first; a parent libvirt no longer knows leaves a root."""
    items = ordered(snaps)
    names = {s.name for s in items}
    kids: dict[str, list[str]] = {s.name: [] for s in items}
    for snap in items:
        if snap.parent in names:
            kids[str(snap.parent)].append(snap.name)
    return kids


def roots(snaps: Iterable[Snapshot]) -> list[str]:
    items = ordered(snaps)
    names = {s.name for s in items}
    return [s.name for s in items if s.parent not in names]


def descendants(name: str, kids: dict[str, list[str]]) -> list[str]:
    found: list[str] = []
    todo = list(kids.get(name, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(kids.get(child, []))
    return found


def tree_lines(snaps: list[Snapshot], label: Callable[[Snapshot], str] | None = None) -> list[str]:
    """The snapshots as an indented tree (``+- child`` under its parent), oldest first."""
    index = by_name(snaps)
    kids = children(snaps)
    show = label or (lambda s: s.name + (" (current)" if s.current else ""))
    lines: list[str] = []

    def walk(name: str, prefix: str, last: bool, top: bool) -> None:
        lines.append(show(index[name]) if top else f"{prefix}+- {show(index[name])}")
        below = kids[name]
        inner = "" if top else prefix + ("   " if last else "|  ")
        for n, child in enumerate(below):
            walk(child, inner, n == len(below) - 1, False)

    for root in roots(snaps):
        walk(root, "", True, True)
    return lines


def internal_parts(snap: Snapshot) -> bool:
    """Whether any of the snapshot's data lives inside a qcow2 image (a tag) rather than a file."""
    return snap.memory == "internal" or any(d.kind == "internal" for d in snap.disks)


# --- prune ---------------------------------------------------------------------------------------


class Decision(NamedTuple):
    snapshot: Snapshot
    delete: bool
    why: str


def needed_by(snap: Snapshot, index: dict[str, Snapshot], kids: dict[str, list[str]], gone: set[str]) -> str | None:
    """Which remaining snapshot depends on ``snap``, if any (pure).

    An external snapshot is a layer of its children's chain (and libvirt does not delete an
    external snapshot whose parent is internal), so a parent is needed by any child when either of
    the two is external. Internal snapshots are independent tags: libvirt reparents the children.
    """
    for child in kids.get(snap.name, []):
        if child in gone:
            continue
        if snap.location == "external" or index[child].location == "external":
            return child
    return None


def plan_prune(snaps: list[Snapshot], now: float, older_than: float | None, keep: int | None) -> list[Decision]:
    """What prune does with each snapshot of one domain (pure), deletions first, children before
    their parents (the order to delete them in).

    A snapshot is deleted when it is older than ``older_than`` (if given) and not among the ``keep``
    newest (if given); never the current one, nor one another remaining snapshot depends on.
    """
    if older_than is None and keep is None:
        raise ValueError("prune needs --older-than or --keep (or both)")
    newest = ordered(snaps)[::-1]
    index = by_name(snaps)
    kids = children(snaps)
    why: dict[str, str] = {}
    gone: set[str] = set()
    for rank, snap in enumerate(newest):
        if snap.current:
            why[snap.name] = "the current snapshot"
        elif keep is not None and rank < keep:
            why[snap.name] = f"one of the {keep} newest"
        elif older_than is not None and now - snap.created < older_than:
            why[snap.name] = "not old enough"
        else:
            gone.add(snap.name)
    for name in sorted(gone):
        parent = index.get(index[name].parent or "")
        if index[name].location == "external" and parent is not None and internal_parts(parent):
            gone.discard(name)
            why[name] = f"external with an internal parent ({parent.name}): libvirt cannot delete it"
    changed = True
    while changed:  # keeping one snapshot can make its parent needed too
        changed = False
        for name in sorted(gone):
            user = needed_by(index[name], index, kids, gone)
            if user is not None:
                gone.discard(name)
                why[name] = f"{user} depends on it"
                changed = True
    depth = depths(snaps)
    doomed = sorted((index[n] for n in gone), key=lambda s: (-depth[s.name], s.created, s.name))
    age = "older than the limit" if older_than is not None else ""
    beyond = f"beyond the {keep} newest" if keep is not None else ""
    reason = " and ".join(p for p in (age, beyond) if p)
    plan = [Decision(s, True, reason) for s in doomed]
    plan += [Decision(s, False, why[s.name]) for s in newest if s.name not in gone]
    return plan


# --- rename, edit ---------------------------------------------------------------------------------


def rename_problem(snaps: list[Snapshot], name: str, new: str, held: set[str] | None = None) -> str | None:
    """Why ``name`` cannot be renamed to ``new`` safely, or None (pure).

    ``held``: the tags that every image of an internal snapshot's disks holds. An internal
    snapshot is renamed only back to the tag its images hold, when they hold none under its
    current name (a repair after a rename outside kvm-snapshot)."""
    index = by_name(snaps)
    if not new.strip() or new != new.strip() or "/" in new:
        return f"'{new}' is not a usable snapshot name"
    if new in index:
        return f"a snapshot named '{new}' already exists"
    snap = index[name]
    if internal_parts(snap) and held is not None and new in held and name not in held:
        return None
    if internal_parts(snap):
        return (f"'{name}' is an internal snapshot: its qcow2 image keeps the tag '{name}' (qemu-img cannot "
                f"rename a tag) and libvirt reverts by name, so a renamed '{new}' could not be reverted; "
                f"use --description to label it instead")
    return None


def set_name(xml: str, new: str) -> str:
    root = ET.fromstring(xml)
    node = root.find("name")
    if node is None:
        node = ET.SubElement(root, "name")
    node.text = new
    return ET.tostring(root, encoding="unicode")


def set_parent(xml: str, parent: str) -> str:
    root = ET.fromstring(xml)
    node = root.find("parent/name")
    if node is None:
        holder = ET.SubElement(root, "parent")
        node = ET.SubElement(holder, "name")
    node.text = parent
    return ET.tostring(root, encoding="unicode")


def set_description(xml: str, text: str) -> str:
    root = ET.fromstring(xml)
    node = root.find("description")
    if node is None:
        node = ET.Element("description")
        root.insert(1, node)
    node.text = text
    return ET.tostring(root, encoding="unicode")


# --- delete ---------------------------------------------------------------------------------------


def delete_problem(snaps: list[Snapshot], name: str, libver: int, disk_chains: dict[str, list[Layer]],
                   exists: Callable[[str], bool] = os.path.exists, domain: str = "DOMAIN",
                   active: bool = True) -> str | None:
    """Why deleting ``name`` is refused, or None (pure but for ``exists``).

    Internal snapshots: libvirt deletes the tag and reparents the children. External ones need
    libvirt 9.0, no children (their overlays are built on it) and a parent that is not internal
    (libvirt 9.0 refuses that), and every image of the chains they are part of must exist. An
    external snapshot that libvirt cannot delete is deleted by committing its overlays by hand and
    then running delete again, which then removes only its metadata: the advice says how, for a
    domain that runs (``active``) or is shut off.
    """
    index = by_name(snaps)
    snap = index[name]
    if snap.location != "external":
        return None
    kids = children(snaps)[name]
    if kids:
        return (f"'{name}' is an external snapshot with children ({', '.join(kids)}) built on its overlay: "
                f"delete them first, newest first")
    if libver < EXTERNAL_DELETE_VERSION:
        return (f"'{name}' is an external snapshot and libvirt {version_text(libver)} cannot delete those (9.0 and "
                f"later can); nothing changed; merge its overlay by hand: {commit_advice(snap, disk_chains, domain, active)}")
    parent = index.get(snap.parent or "")
    if parent is not None and internal_parts(parent):
        return (f"'{name}' is an external snapshot whose parent '{parent.name}' is internal, and libvirt "
                f"{version_text(libver)} cannot delete such a snapshot; nothing changed; merge its overlay by hand, "
                f"keeping '{parent.name}': {commit_advice(snap, disk_chains, domain, active)}")
    broken = chain_problems(disk_chains, exists)
    return f"{broken[0]}: nothing deleted" if broken else None


def commit_advice(snap: Snapshot, disk_chains: dict[str, list[Layer]], domain: str, active: bool) -> str:
    """The commands that merge an external snapshot's overlays into the images below them by hand,
    keeping every other snapshot: ``virsh blockcommit --shallow`` (into the overlay's own backing
    file, never further down a shared chain), then ``kvm-snapshot delete``, which then finds the
    overlays out of the chain and removes only the metadata. Block commits need a running QEMU, so
    a domain that is shut off is started paused for them and stopped again."""
    steps = []
    for disk in snap.disks:
        if disk.kind != "external":
            continue
        layers = [layer.path for layer in disk_chains.get(disk.target, [])]
        if layers and layers[0] != disk.source and disk.source in layers:
            steps.append(f"'virsh blockcommit {domain} {disk.target} --top {disk.source} --shallow --wait'")
        else:
            steps.append(f"'virsh blockcommit {domain} {disk.target} --active --shallow --pivot --wait'")
    steps.append(f"'kvm-snapshot delete {domain} {snap.name}' (then only its metadata is left to remove)")
    if not active:
        steps = [f"'virsh start {domain} --paused'", *steps, f"'virsh destroy {domain}'"]
    return ", ".join(steps)


def tag_below_problem(snap: Snapshot, paths: dict[str, list[str]], domain: str, libver: int,
                      tags_of: Callable[[str], list[ImageSnapshot] | None]) -> str | None:
    """Why libvirt cannot delete an internal snapshot of a running domain now: its tag is in an image
    below the one a disk runs on (an external snapshot was taken after it), and libvirt 9.0 deletes
    tags of a running guest only in the images it runs on. Shut off, it deletes them with qemu-img."""
    for disk in snap.disks:
        chain = paths.get(disk.target, [])
        if disk.kind != "internal" or len(chain) < 2:
            continue
        try:
            holders = [path for path in chain if any(t.name == snap.name for t in tags_of(path) or [])]
        except ImageError:
            return None
        if holders and chain[0] not in holders:
            return (f"the tag of '{snap.name}' is in {holders[0]}, below {chain[0]}, the image {disk.target} runs on, "
                    f"and libvirt {version_text(libver)} deletes tags of a running guest only in the images it runs "
                    f"on; nothing changed; shut {domain} off ('virsh shutdown {domain}') and delete it again, or "
                    f"keep it")
    return None


def overlays_gone(snap: Snapshot, paths: dict[str, list[str]]) -> bool:
    """Whether no overlay of an external snapshot is in its disk's backing chain any more (committed
    already, or the domain was reverted past it): then only its metadata is left to delete.
    ``paths``: each disk's whole chain, top first, as real paths."""
    overlays = [(d.target, d.source) for d in snap.disks if d.kind == "external" and d.source]
    return bool(overlays) and all(os.path.realpath(src) not in paths.get(t, []) for t, src in overlays)


def tag_gone(snap: Snapshot, paths: dict[str, list[str]],
             tags_of: Callable[[str], list[ImageSnapshot] | None]) -> bool:
    """Whether the tag of an internal snapshot is in no image of any disk it covers (removed with
    qemu-img or the monitor behind libvirt's back): then only its metadata is left to delete. An
    image that cannot be read counts as holding it."""
    targets = [d.target for d in snap.disks if d.kind == "internal"]
    if not targets:
        return False
    for target in targets:
        for path in paths.get(target, []):
            try:
                tags = tags_of(path)
            except ImageError:
                return False
            if tags is None or any(t.name == snap.name for t in tags):
                return False
    return all(paths.get(t) for t in targets)


def chain_problems(disk_chains: dict[str, list[Layer]], exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """Disks whose backing chain names an image file that is not there (pure but for ``exists``)."""
    problems = []
    for target, layers in disk_chains.items():
        missing = [layer.path for layer in layers if layer.path.startswith("/") and not exists(layer.path)]
        if missing:
            problems.append(f"the backing chain of {target} is broken ({', '.join(missing)} missing)")
    return problems


# --- free space for overlays ---------------------------------------------------------------------


class Overlay(NamedTuple):
    target: str
    image: str  # the disk's current top image
    path: str  # the overlay file to create
    virtual_size: int


RESERVE = 16 * MIB  # left free on a file system after the overlays' first growth


def overlay_need(virtual_size: int) -> int:
    """Bytes to have free for a new qcow2 overlay: its metadata when fully mapped (an L2 entry of 8
    bytes and a refcount of 2 bytes per 64 KiB cluster) plus 1 MiB for the first writes."""
    clusters = max(1, virtual_size // (64 * 1024))
    return clusters * 10 + MIB


def space_problems(overlays: list[Overlay], free_of: Callable[[str], tuple[int, int]]) -> list[str]:
    """File systems that lack room for the planned overlays (pure but for ``free_of(dir) ->
    (device, free bytes)``)."""
    need: dict[int, int] = {}
    free: dict[int, int] = {}
    where: dict[int, str] = {}
    for overlay in overlays:
        folder = os.path.dirname(overlay.path) or "."
        device, avail = free_of(folder)
        need[device] = need.get(device, RESERVE) + overlay_need(overlay.virtual_size)
        free[device] = avail
        where.setdefault(device, folder)
    return [f"not enough free space in {where[d]} for the overlays: {free[d] // MIB} MiB free, "
            f"{-(-need[d] // MIB)} MiB needed" for d in need if free[d] < need[d]]


def statvfs_free(folder: str) -> tuple[int, int]:
    info = os.statvfs(folder)
    return os.stat(folder).st_dev, info.f_bavail * info.f_frsize


def default_overlay(image: str, snapname: str) -> str:
    """Where libvirt puts an overlay by default: beside the image, its suffix replaced by the name."""
    stem, _suffix = os.path.splitext(image)
    return f"{stem}.{snapname}"


# --- images: qcow2 headers (read only; never qemu-img on an image in use) --------------------------


class ImageInfo(NamedTuple):
    path: str
    format: str
    virtual_size: int | None
    disk_size: int | None
    backing: str | None


def read_image(path: str, fmt: str = "") -> ImageInfo:
    """Format, virtual size, disk size and backing file of an image, from its qcow2 header (a read
    that is safe while QEMU has the image open) or, for a raw file, its size."""
    try:
        st = os.stat(path)
    except OSError:
        return ImageInfo(path, fmt or "?", None, None, None)
    disk_size = st.st_blocks * 512
    try:
        with open(path, "rb") as f:
            head = f.read(72)
            if head[:4] == b"QFI\xfb" and len(head) >= 32:
                _magic, _version, offset, length, _bits, size = struct.unpack(">IIQIIQ", head[:32])
                backing = None
                if offset and length:
                    f.seek(offset)
                    backing = f.read(length).decode(errors="replace")
                return ImageInfo(path, "qcow2", size, disk_size, backing)
    except OSError:
        return ImageInfo(path, fmt or "?", None, disk_size, None)
    return ImageInfo(path, fmt or "raw", st.st_size, disk_size, None)


class ImageError(KvmError):
    """An image file that cannot be read as what it claims to be (truncated, corrupt, unreadable)."""


class ImageSnapshot(NamedTuple):
    """One entry of a qcow2 image's snapshot table (what ``qemu-img snapshot -l`` lists)."""

    id: str
    name: str
    date: int  # seconds since the epoch
    vm_state_size: int  # bytes of saved memory (0 for a disk-only tag)


QCOW2_MAGIC = b"QFI\xfb"
MAX_IMAGE_SNAPSHOTS = 65536  # QEMU's QCOW_MAX_SNAPSHOTS
SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")  # l1 offset, l1 size, id len, name len, date s, ns, clock, vm state, extra


def image_snapshots(path: str) -> list[ImageSnapshot] | None:
    """The snapshot table of a qcow2 image, read from the file (read only, so safe while QEMU has the
    image open: nothing is locked or written); None for a file that is not qcow2 (such as raw).

    Raises ImageError for a file that cannot be opened or whose header or table is cut short or
    out of range: a damaged image is never taken for one without snapshots.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(72)
            if head[:4] != QCOW2_MAGIC:
                return None
            if len(head) < 72:
                raise ImageError(f"{path}: truncated qcow2 header ({len(head)} of 72 bytes)")
            count, offset = struct.unpack(">IQ", head[60:72])
            if count == 0:
                return []
            if count > MAX_IMAGE_SNAPSHOTS or offset % 8:
                raise ImageError(f"{path}: corrupt qcow2 header ({count} snapshots at offset {offset})")
            f.seek(offset)
            found = []
            for n in range(count):
                entry = f.read(SNAPSHOT_ENTRY.size)
                if len(entry) < SNAPSHOT_ENTRY.size:
                    raise ImageError(f"{path}: truncated qcow2 snapshot table (entry {n + 1} of {count})")
                _l1, _l1size, id_len, name_len, sec, _nsec, _clock, vm_state, extra_len = SNAPSHOT_ENTRY.unpack(entry)
                rest = f.read(extra_len + id_len + name_len)
                if len(rest) < extra_len + id_len + name_len:
                    raise ImageError(f"{path}: truncated qcow2 snapshot table (entry {n + 1} of {count})")
                if extra_len >= 8:  # version 3: the 64-bit size of the saved memory comes first
                    vm_state = struct.unpack(">Q", rest[:8])[0]
                ident = rest[extra_len:extra_len + id_len].decode(errors="replace")
                name = rest[extra_len + id_len:].decode(errors="replace")
                found.append(ImageSnapshot(ident, name, sec, vm_state))
                f.seek(-(SNAPSHOT_ENTRY.size + len(rest)) % 8, os.SEEK_CUR)  # entries are padded to 8 bytes
            return found
    except OSError as err:
        raise ImageError(f"{path}: cannot read the image ({err.strerror or err})") from err


def chain_info(disk_chains: dict[str, list[Layer]]) -> dict[str, list[ImageInfo]]:
    """Each disk's chain with sizes; a chain the XML does not show (a domain never started by this
    libvirtd) is followed through the qcow2 headers."""
    found: dict[str, list[ImageInfo]] = {}
    for target, layers in disk_chains.items():
        infos = [read_image(layer.path, layer.format) for layer in layers]
        seen = {layer.path for layer in layers}
        while infos and infos[-1].backing and len(infos) < 64:
            backing = infos[-1].backing
            if not backing.startswith("/"):
                backing = os.path.join(os.path.dirname(infos[-1].path), backing)
            if backing in seen:
                break
            seen.add(backing)
            infos.append(read_image(backing))
        found[target] = infos
    return found


# --- revert: what libvirt will need, checked first -------------------------------------------------


def tag_problem(name: str, target: str, image: str,
                tags_of: Callable[[str], list[ImageSnapshot] | None] = image_snapshots) -> str | None:
    """Why ``image`` (the disk ``target``) does not hold the tag ``name``, or None (reads the image)."""
    try:
        tags = tags_of(image)
    except ImageError as err:
        return str(err)
    if tags is None:
        return f"{target} runs on {image}, which is not a qcow2 image and holds no snapshot tags"
    if not any(t.name == name for t in tags):
        held = ", ".join(f"'{t.name}'" for t in tags) or "none"
        return f"the image of {target} ({image}) holds no tag '{name}' (its tags: {held})"
    return None


def covered_disks(snap: Snapshot, saved: dict[str, SavedDisk]) -> list[str]:
    """The disks whose images must hold the tag of an internal snapshot: those it marks internal,
    and with saved memory every writable qcow2 disk (QEMU loads memory only from images that all
    hold the tag)."""
    targets = [d.target for d in snap.disks if d.kind == "internal"]
    if snap.memory == "internal":
        targets += [t for t, d in saved.items() if d.format == "qcow2" and not d.readonly and t not in targets]
    return targets


def held_tags(snap: Snapshot, saved: dict[str, SavedDisk], disk_chains: dict[str, list[Layer]],
              tags_of: Callable[[str], list[ImageSnapshot] | None] = image_snapshots) -> set[str]:
    """The tag names that the current image of every disk an internal snapshot covers holds."""
    held: set[str] | None = None
    for target in covered_disks(snap, saved):
        layers = disk_chains.get(target)
        try:
            tags = tags_of(layers[0].path) if layers else None
        except ImageError:
            tags = None
        names = {t.name for t in tags or []}
        held = names if held is None else held & names
    return held or set()


def revert_problem(snap: Snapshot, domain: str, saved: dict[str, SavedDisk], disk_chains: dict[str, list[Layer]],
                   snaps: list[Snapshot], active: bool = True,
                   tags_of: Callable[[str], list[ImageSnapshot] | None] = image_snapshots,
                   exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """Why reverting to ``snap`` would fail or lose track of images, or None (pure but for reading
    image headers): libvirt 9.0 stops the guest before it finds out that a tag is missing, and
    leaves it shut off (failed)."""
    if snap.location == "external":
        return external_revert_problem(snap, saved, exists)
    memory = snap.memory == "internal"
    with_memory = False
    for target in covered_disks(snap, saved):
        layers = disk_chains.get(target)
        was = saved.get(target)
        if not layers:
            if was is None:
                continue  # a network disk (no file or device to read): libvirt and QEMU are left to judge it
            return (f"{target}, which '{snap.name}' covers, is no longer a disk of {domain} (it was {was.path}): "
                    f"nothing changed; attach that image again as {target} to revert to it")
        top = layers[0].path
        if was is not None and was.path != top:
            below = [layer.path for layer in layers[1:]]
            if was.path in below:
                owner = next((s for s in snaps for d in s.disks if d.target == target and d.source == top), None)
                start = f"{target} now runs on {top}, "
                rest = (f", on top of {was.path}, which holds '{snap.name}': libvirt would go back to {was.path} and "
                        f"leave the overlay out of every chain; nothing changed; ")
                if owner is None:
                    return (start + "an overlay no snapshot knows (a backup that is running or failed, or a snapshot "
                            "made without metadata)" + rest + f"find out what made it ('kvm-snapshot chain {domain}') "
                            f"before reverting")
                return (start + f"the overlay of external snapshot '{owner.name}'" + rest
                        + overlay_advice(owner, snaps, disk_chains, domain, active))
            return (f"{target} now runs on {top}, not on {was.path} where '{snap.name}' was taken: nothing changed; "
                    f"point {target} back at {was.path} (virsh edit, with {domain} shut off) to revert to it")
        problem = tag_problem(snap.name, target, top, tags_of)
        if problem:
            stops = f" and leave {domain} shut off" if active else ""
            return (f"{problem}: libvirt would fail the revert{stops}; nothing changed; "
                    + missing_tag_advice(snap, domain, top, snaps, tags_of))
        if memory:
            tags = tags_of(top) or []
            with_memory = with_memory or any(t.name == snap.name and t.vm_state_size > 0 for t in tags)
    if memory and snap.state in ("running", "paused") and not with_memory:
        return (f"no image of {domain} holds the memory saved with '{snap.name}': libvirt would fail the revert; "
                f"nothing changed")
    return None


def overlay_advice(owner: Snapshot, snaps: list[Snapshot], disk_chains: dict[str, list[Layer]], domain: str,
                   active: bool) -> str:
    """How to remove the external snapshot whose overlay stands between the domain and an internal
    snapshot's image (reverting discards what the overlay holds, and that snapshot with it)."""
    parent = by_name(snaps).get(owner.parent or "")
    if parent is not None and parent.location == "external":
        return (f"to revert, give up '{owner.name}' first: 'kvm-snapshot delete {domain} {owner.name}' merges its "
                f"overlay, then revert again")
    return (f"to revert, give up '{owner.name}' first: {commit_advice(owner, disk_chains, domain, active)}, then "
            f"revert again")


def missing_tag_advice(snap: Snapshot, domain: str, image: str, snaps: list[Snapshot],
                       tags_of: Callable[[str], list[ImageSnapshot] | None]) -> str:
    """What to do about a snapshot whose tag an image lacks: a tag that no snapshot is named after is
    most likely this one renamed outside kvm-snapshot (virsh snapshot-edit --rename)."""
    try:
        tags = tags_of(image) or []
    except ImageError:
        tags = []
    known = {s.name for s in snaps}
    strays = [t.name for t in tags if t.name not in known]
    if len(strays) == 1:
        return (f"the tag '{strays[0]}' there has no snapshot of that name: if '{snap.name}' was renamed from it, "
                f"rename it back with 'kvm-snapshot edit {domain} {snap.name} --rename {strays[0]}'")
    return f"this snapshot cannot be reverted; 'kvm-snapshot delete {domain} {snap.name}' removes its metadata"


def external_revert_problem(snap: Snapshot, saved: dict[str, SavedDisk], exists: Callable[[str], bool]) -> str | None:
    """An external snapshot is reverted onto the images it was taken on (the saved definition's
    sources), the backing files of its overlays: each must still exist and be its overlay's backing."""
    for disk in snap.disks:
        if disk.kind != "external":
            continue
        was = saved.get(disk.target)
        if was is None:
            continue
        if not exists(was.path):
            return f"{disk.target}: {was.path}, the image '{snap.name}' was taken on, is missing: nothing changed"
        if disk.source and exists(disk.source):
            backing = read_image(disk.source).backing
            if backing is not None:
                if not backing.startswith("/"):
                    backing = os.path.join(os.path.dirname(disk.source), backing)
                if os.path.normpath(backing) != os.path.normpath(was.path):
                    return (f"{disk.target}: the overlay {disk.source} of '{snap.name}' is now backed by {backing}, "
                            f"not by {was.path} where it was taken: nothing changed")
    return None


# --- libvirt ------------------------------------------------------------------------------------


def lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(f"no domain named '{name}'") from err
        raise virt.translate(err, f"domain {name}") from err


def lookup_snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise NotFound(f"domain {dom.name()} has no snapshot named '{name}'") from err
        raise virt.translate(err, f"{dom.name()}: snapshot {name}") from err


def current_name(dom: libvirt.virDomain) -> str:
    try:
        if not dom.hasCurrentSnapshot(0):
            raise NotFound(f"domain {dom.name()} has no current snapshot")
        return dom.snapshotCurrent(0).getName()
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: current snapshot") from err


def snapshots_of(dom: libvirt.virDomain) -> list[Snapshot]:
    activity.doing(f"reading the snapshots of {dom.name()}")
    try:
        return read_snapshots(dom)
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: cannot read snapshots") from err


def domain_chains(dom: libvirt.virDomain) -> dict[str, list[Layer]]:
    try:
        return chains(dom.XMLDesc(0))
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: cannot read the domain XML") from err


def is_active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: state") from err


def disk_formats(dom: libvirt.virDomain) -> dict[str, tuple[str, str]]:
    """(format, top image) of each disk with a source (CD-ROMs and empty drives left out)."""
    try:
        root = ET.fromstring(dom.XMLDesc(0))
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: cannot read the domain XML") from err
    found = {}
    for disk in root.iterfind("devices/disk"):
        target, source, driver = disk.find("target"), disk.find("source"), disk.find("driver")
        if disk.get("device", "disk") != "disk" or target is None or source is None:
            continue
        path = source.get("file") or source.get("dev") or ""
        if path:
            found[target.get("dev", "")] = (driver.get("type", "raw") if driver is not None else "raw", path)
    return found


class CreateRequest(NamedTuple):
    name: str | None
    description: str
    disk_only: bool
    diskspecs: dict[str, str]  # target -> overlay path
    quiesce: bool
    atomic: bool


def plan_create(dom: libvirt.virDomain, snaps: list[Snapshot], req: CreateRequest, now: float,
                free_of: Callable[[str], tuple[int, int]] = statvfs_free) -> tuple[str, str, int, list[Overlay]]:
    """Check a create request and build (name, XML, flags, overlays); raises BadRequest/Refused."""
    name = req.name or str(int(now))  # virsh's default: the creation time in seconds
    if any(s.name == name for s in snaps):
        raise BadRequest(f"domain {dom.name()} already has a snapshot named '{name}'")
    if req.quiesce and not req.disk_only:
        raise BadRequest("--quiesce needs --disk-only (libvirt freezes file systems for disk-only snapshots only)")
    if req.diskspecs and not req.disk_only:
        raise BadRequest("--diskspec needs --disk-only")
    disks = disk_formats(dom)
    unknown = sorted(set(req.diskspecs) - set(disks))
    if unknown:
        raise BadRequest(f"--diskspec names no disk of {dom.name()}: {', '.join(unknown)} (disks: {', '.join(disks)})")
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC if req.atomic else 0
    overlays: list[Overlay] = []
    body = f"<name>{escape(name)}</name>"
    if req.description:
        body += f"<description>{escape(req.description)}</description>"
    if req.disk_only:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if req.quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        parts = []
        for target, (_fmt, image) in sorted(disks.items()):
            path = os.path.abspath(req.diskspecs.get(target) or default_overlay(image, name))
            if not os.path.isdir(os.path.dirname(path)):
                raise BadRequest(f"{target}: the folder of the overlay {path} does not exist")
            if os.path.exists(path):
                raise BadRequest(f"{target}: the overlay {path} already exists")
            size = read_image(image).virtual_size or 0
            overlays.append(Overlay(target, image, path, size))
            parts.append(f"<disk name={quoteattr(target)} snapshot='external'><source file={quoteattr(path)}/></disk>")
        body += "<disks>" + "".join(parts) + "</disks>"
        problems = space_problems(overlays, free_of)
        if problems:
            raise Refused("; ".join(problems))
    else:
        raw = sorted(t for t, (fmt, _image) in disks.items() if fmt != "qcow2")
        if raw:
            target = raw[0]
            image = disks[target][1]
            raise BadRequest(
                f"{target} is a {disks[target][0]} image ({image}) and cannot hold internal snapshots: convert it "
                f"while the domain is shut off (qemu-img convert -O qcow2 {image} {os.path.splitext(image)[0]}.qcow2, "
                f"then point the disk at it with virsh edit), or use --disk-only")
    return name, f"<domainsnapshot>{body}</domainsnapshot>", flags, overlays


def create(dom: libvirt.virDomain, xml: str, flags: int, quiesce: bool) -> Snapshot:
    activity.doing(f"creating a snapshot of {dom.name()}")
    try:
        snap = dom.snapshotCreateXML(xml, flags)
        return parse_snapshot(snap.getXMLDesc(0), bool(snap.isCurrent()))
    except libvirt.libvirtError as err:
        if quiesce and ("agent" in virt.reason(err).lower()):
            raise Refused(f"{dom.name()}: --quiesce: the guest agent did not answer ({virt.reason(err)}); "
                          f"no snapshot made (run without --quiesce for a crash-consistent one)") from err
        raise virt.translate(err, f"{dom.name()}: cannot create the snapshot") from err


def redefine(dom: libvirt.virDomain, xml: str, current: bool, what: str) -> None:
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    try:
        dom.snapshotCreateXML(xml, flags)
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: {what}") from err


def edit(dom: libvirt.virDomain, snaps: list[Snapshot], name: str, new: str | None, description: str | None) -> list[str]:
    """Rename and/or describe a snapshot; the tree and the current mark are kept. Returns notes."""
    index = by_name(snaps)
    snap = index[name]
    notes = []
    handle = lookup_snapshot(dom, name)
    try:
        xml = handle.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: snapshot {name}") from err
    if new is not None and new != name:
        held = held_tags(snap, saved_disks(xml), domain_chains(dom)) if internal_parts(snap) else None
        problem = rename_problem(snaps, name, new, held)
        if problem:
            raise BadRequest(problem)
    if description is not None:
        xml = set_description(xml, description)
        notes.append(f"description of '{name}' set")
        if internal_parts(snap):
            notes.append(f"only the metadata changed: the qcow2 image keeps the tag '{name}'")
    if new is None or new == name:
        redefine(dom, xml, snap.current, f"cannot update snapshot {name}")
        return notes
    activity.doing(f"renaming snapshot {name} of {dom.name()} to {new}")
    redefine(dom, set_name(xml, new), snap.current, f"cannot define snapshot {new}")
    moved = []
    try:
        for child in children(snaps)[name]:
            child_xml = lookup_snapshot(dom, child).getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            redefine(dom, set_parent(child_xml, new), index[child].current, f"cannot reparent {child}")
            moved.append(child)
        lookup_snapshot(dom, name).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    except (libvirt.libvirtError, KvmError) as err:
        _undo_rename(dom, name, new, moved, index)
        text = virt.reason(err) if isinstance(err, libvirt.libvirtError) else str(err)
        raise LibvirtFailure(f"{dom.name()}: cannot rename {name} to {new} ({text}); left as it was") from err
    notes.append(f"renamed '{name}' to '{new}'" + (f"; children kept: {', '.join(moved)}" if moved else ""))
    return notes


def _undo_rename(dom: libvirt.virDomain, name: str, new: str, moved: list[str], index: dict[str, Snapshot]) -> None:
    try:
        for child in moved:
            child_xml = lookup_snapshot(dom, child).getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            redefine(dom, set_parent(child_xml, name), index[child].current, f"cannot reparent {child}")
        lookup_snapshot(dom, new).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        if index[name].current:
            xml = lookup_snapshot(dom, name).getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            redefine(dom, xml, True, f"cannot mark {name} current")
    except (libvirt.libvirtError, KvmError):
        pass  # the error about the rename is the one to report


STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
          libvirt.VIR_DOMAIN_SHUTOFF: "shut off"}


def state_text(dom: libvirt.virDomain) -> str:
    try:
        state, reason = dom.state()
    except libvirt.libvirtError as err:
        return f"in an unknown state ({virt.reason(err)})"
    text = STATES.get(state, f"in state {state}")
    return text + (" (failed)" if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_FAILED
                   else "")


def revert(conn: libvirt.virConnect, dom: libvirt.virDomain, snap: Snapshot, running: bool, paused: bool) -> None:
    """Revert to ``snap`` once every image libvirt will need is checked (revert_problem); a
    refusal changes nothing."""
    if snap.location == "external":
        libver = lib_version(conn)
        if libver < EXTERNAL_REVERT_VERSION:
            raise Refused(f"'{snap.name}' is an external snapshot and libvirt {version_text(libver)} cannot revert to "
                          f"those (9.9 and later can); nothing changed")
    handle = lookup_snapshot(dom, snap.name)
    activity.doing(f"checking the images of {dom.name()} for snapshot {snap.name}")
    try:
        saved = saved_disks(handle.getXMLDesc(0))
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: snapshot {snap.name}") from err
    problem = revert_problem(snap, dom.name(), saved, domain_chains(dom), snapshots_of(dom), is_active(dom))
    if problem:
        raise Refused(problem)
    flags = 0
    if running:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
    if paused:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
    activity.doing(f"reverting {dom.name()} to {snap.name}")
    try:
        dom.revertToSnapshot(handle, flags)
    except libvirt.libvirtError as err:
        failure = virt.translate(err, f"{dom.name()}: cannot revert to {snap.name}")
        raise type(failure)(f"{failure}; the domain is now {state_text(dom)}") from err


def lib_version(conn: libvirt.virConnect) -> int:
    try:
        return int(conn.getLibVersion())
    except libvirt.libvirtError as err:
        raise virt.translate(err, "cannot read libvirt's version") from err


def chain_paths(disk_chains: dict[str, list[Layer]]) -> dict[str, list[str]]:
    """Each disk's whole backing chain (through the qcow2 headers), as real paths, top first."""
    return {t: [os.path.realpath(i.path) for i in infos] for t, infos in chain_info(disk_chains).items()}


def delete_metadata(dom: libvirt.virDomain, handle: libvirt.virDomainSnapshot, name: str, why: str) -> str:
    try:
        handle.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    except libvirt.libvirtError as err:
        raise virt.translate(err, f"{dom.name()}: cannot delete the metadata of {name}") from err
    return f"deleted snapshot '{name}' of {dom.name()} as metadata only: {why}, no image changed"


GONE_OVERLAY = "its overlay is no longer in the backing chain (already committed, or the domain was reverted past it)"


def delete(conn: libvirt.virConnect, dom: libvirt.virDomain, snaps: list[Snapshot], name: str) -> str:
    """Delete one snapshot after the safety checks; returns what was done, in words."""
    snap = by_name(snaps)[name]
    disk_chains = domain_chains(dom)
    paths = chain_paths(disk_chains)
    if snap.location == "external" and overlays_gone(snap, paths):
        activity.doing(f"deleting the metadata of snapshot {name} of {dom.name()}")
        return delete_metadata(dom, lookup_snapshot(dom, name), name, GONE_OVERLAY)
    if snap.location == "internal" and tag_gone(snap, paths, image_snapshots):
        activity.doing(f"deleting the metadata of snapshot {name} of {dom.name()}")
        return delete_metadata(dom, lookup_snapshot(dom, name), name,
                               "no image of its disks holds its tag any more (removed outside libvirt)")
    libver, active = lib_version(conn), is_active(dom)
    problem = delete_problem(snaps, name, libver, disk_chains, domain=dom.name(), active=active)
    if problem is None and active and snap.location == "internal":
        problem = tag_below_problem(snap, paths, dom.name(), libver, image_snapshots)
    if problem:
        raise Refused(problem)
    handle = lookup_snapshot(dom, name)
    activity.doing(f"deleting snapshot {name} of {dom.name()}")
    try:
        handle.delete(0)
    except libvirt.libvirtError as err:
        if COMMITTED not in virt.reason(err):
            raise virt.translate(err, f"{dom.name()}: cannot delete {name}") from err
        return delete_metadata(dom, handle, name, GONE_OVERLAY)
    broken = chain_problems(domain_chains(dom))
    if broken:
        raise LibvirtFailure(f"{dom.name()}: deleted snapshot '{name}', but {'; '.join(broken)}")
    return f"deleted snapshot '{name}' of {dom.name()}"


def all_domains(conn: libvirt.virConnect) -> list[libvirt.virDomain]:
    try:
        return sorted(conn.listAllDomains(0), key=lambda d: d.name())
    except libvirt.libvirtError as err:
        raise virt.translate(err, "cannot list domains") from err


def snapshot_record(snap: Snapshot, domain: str, now: float, kids: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A snapshot as JSON-friendly data."""
    record: dict[str, Any] = {
        "domain": domain, "name": snap.name, "created": snap.created,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.created)),
        "age_seconds": max(0, int(now - snap.created)), "state": snap.state, "location": snap.location,
        "disk_only": snap.disk_only, "current": snap.current, "parent": snap.parent,
        "description": snap.description, "memory": snap.memory,
        "disks": [{"target": d.target, "snapshot": d.kind, "source": d.source} for d in snap.disks],
    }
    if kids is not None:
        record["children"] = kids.get(snap.name, [])
        record["descendants"] = descendants(snap.name, kids)
    return record
