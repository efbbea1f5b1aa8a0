"""Snapshots and backing chains as libvirt describes them in XML, and the snapshot tree (pure).

A snapshot's <domainsnapshot> XML says when it was made, its state, parent, and per disk whether
it is internal (inside the qcow2) or external (an overlay file); a domain's live XML gives each
disk's backing chain (<backingStore>), top image first."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sensu_kvm import domxml
from sensu_kvm.domxml import Layer


class SnapDisk(NamedTuple):
    target: str
    kind: str  # internal, external, no, manual
    source: str  # the overlay file of an external disk snapshot, else ""


class Snapshot(NamedTuple):
    name: str
    created: int  # seconds since the epoch
    state: str  # running, paused, shutoff, disk-snapshot, ...
    parent: str | None
    description: str
    memory: str  # no, internal, external
    disks: tuple[SnapDisk, ...]
    current: bool = False

    @property
    def location(self) -> str:
        """internal or external, as virsh snapshot-info says."""
        external = self.memory == "external" or any(d.kind == "external" for d in self.disks)
        return "external" if external else "internal"

    @property
    def disk_only(self) -> bool:
        return self.state == "disk-snapshot"




def _text(node: ET.Element | None, default: str = "") -> str:
    return node.text.strip() if node is not None and node.text else default


def parse_snapshot(xml: str, current: bool = False) -> Snapshot:
    """One <domainsnapshot> document."""
    root = ET.fromstring(xml)
    created = _text(root.find("creationTime"), "0")
    memory = root.find("memory")
    disks = []
    for disk in root.iterfind("disks/disk"):
        source = disk.find("source")
        path = "" if source is None else (source.get("file") or source.get("dev") or "")
        disks.append(SnapDisk(disk.get("name", ""), disk.get("snapshot", "no"), path))
    return Snapshot(
        name=_text(root.find("name")),
        created=int(created) if created.isdigit() else 0,
        state=_text(root.find("state"), "unknown"),
        parent=_text(root.find("parent/name")) or None,
        description=_text(root.find("description")),
        memory=memory.get("snapshot", "no") if memory is not None else "no",
        disks=tuple(disks),
        current=current,
    )





class SavedDisk(NamedTuple):
    """A disk of the domain definition kept in a snapshot (the domain as it was when it was taken)."""

    target: str
    path: str
    format: str
    readonly: bool


def saved_disks(snapshot_xml: str) -> dict[str, SavedDisk]:
    """The disks (with a file or block source) of the domain definition inside a <domainsnapshot>:
    the images libvirt goes back to on revert. Empty when the snapshot keeps no definition."""
    saved = ET.fromstring(snapshot_xml).find("domain")
    if saved is None:
        return {}
    return {d.target: SavedDisk(d.target, d.path, d.format or "raw", d.readonly)
            for d in domxml.disks(saved) if d.device == "disk" and d.path}


def unknown_overlays(disk_chains: dict[str, list[Layer]], snapshots: list[Snapshot],
                     allowed: Any = None) -> dict[str, Layer]:
    """Disks whose top image has a backing file that no snapshot's metadata knows: an overlay
    left behind (a failed backup, a snapshot made with --no-metadata). ``allowed`` (a compiled
    regex) names backing files that are expected, such as the golden image of linked clones."""
    known = {d.source for s in snapshots for d in s.disks if d.kind == "external" and d.source}
    odd = {}
    for target, layers in disk_chains.items():
        if len(layers) < 2 or layers[0].path in known:
            continue
        if allowed is not None and allowed.search(layers[1].path):
            continue
        odd[target] = layers[0]
    return odd


def read_snapshots(dom: Any) -> list[Snapshot]:
    """Every snapshot of a libvirt domain, parsed (one call for the list, one per snapshot)."""
    found = []
    for snap in dom.listAllSnapshots(0):
        found.append(parse_snapshot(snap.getXMLDesc(0), bool(snap.isCurrent())))
    return found


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
