"""What kvm-snapshot may do, decided before any change (pure but for reads of qcow2 headers): prune
selection, rename/delete/revert safety and the advice that goes with a refusal."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from sensu_kvm.domxml import Layer
from sensu_kvm.errors import ImageError
from sensu_kvm.qcow2 import ImageInfo, ImageSnapshot, image_snapshots, read_image
from sensu_kvm.snapshots.tree import SavedDisk, Snapshot, by_name, children, depths, ordered
from sensu_kvm.space import overlay_need
from sensu_kvm.virt.versions import version_text

EXTERNAL_DELETE_VERSION = 9_000_000  # libvirt 9.0: virDomainSnapshotDelete of external snapshots
EXTERNAL_REVERT_VERSION = 9_009_000  # libvirt 9.9: virDomainRevertToSnapshot of external snapshots
COMMITTED = "could not find base disk source in disk source chain"


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


def overlay_needs(overlays: list[Overlay]) -> list[tuple[str, int, str]]:
    """The room the overlays need, as ``space.space_problems`` takes it."""
    return [(os.path.dirname(o.path) or ".", overlay_need(o.virtual_size), "overlays") for o in overlays]


def default_overlay(image: str, snapname: str) -> str:
    """Where libvirt puts an overlay by default: beside the image, its suffix replaced by the name."""
    stem, _suffix = os.path.splitext(image)
    return f"{stem}.{snapname}"


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


GONE_OVERLAY = "its overlay is no longer in the backing chain (already committed, or the domain was reverted past it)"


def chain_paths(disk_chains: dict[str, list[Layer]]) -> dict[str, list[str]]:
    """Each disk's whole backing chain (through the qcow2 headers), as real paths, top first."""
    return {t: [os.path.realpath(i.path) for i in infos] for t, infos in chain_info(disk_chains).items()}
