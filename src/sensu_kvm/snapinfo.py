"""Snapshots and backing chains as libvirt describes them in XML (parsing is pure).

A snapshot's <domainsnapshot> XML says when it was made, its state, parent, and per disk whether
it is internal (inside the qcow2) or external (an overlay file); a domain's live XML gives each
disk's backing chain (<backingStore>), top image first.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, NamedTuple


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


class Layer(NamedTuple):
    path: str
    format: str


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


def chains(domain_xml: str) -> dict[str, list[Layer]]:
    """Each disk's backing chain from a domain's XML, top image first (disks with a file source)."""
    root = ET.fromstring(domain_xml)
    found: dict[str, list[Layer]] = {}
    for disk in root.iterfind("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        target = disk.find("target")
        source = disk.find("source")
        if target is None or source is None or not (source.get("file") or source.get("dev")):
            continue
        driver = disk.find("driver")
        layers = [Layer(source.get("file") or source.get("dev") or "", driver.get("type", "") if driver is not None else "")]
        store: Any = disk.find("backingStore")
        while store is not None and store.find("source") is not None:
            src = store.find("source")
            fmt = store.find("format")
            layers.append(Layer(src.get("file") or src.get("dev") or "", fmt.get("type", "") if fmt is not None else ""))
            store = store.find("backingStore")
        found[target.get("dev", "")] = layers
    return found


class SavedDisk(NamedTuple):
    """A disk of the domain definition kept in a snapshot (the domain as it was when it was taken)."""

    target: str
    path: str
    format: str
    readonly: bool


def saved_disks(snapshot_xml: str) -> dict[str, SavedDisk]:
    """The disks (with a file or block source) of the domain definition inside a <domainsnapshot>:
    the images libvirt goes back to on revert. Empty when the snapshot keeps no definition."""
    root = ET.fromstring(snapshot_xml)
    found: dict[str, SavedDisk] = {}
    for disk in root.iterfind("domain/devices/disk"):
        target, source, driver = disk.find("target"), disk.find("source"), disk.find("driver")
        if disk.get("device", "disk") != "disk" or target is None or source is None:
            continue
        path = source.get("file") or source.get("dev") or ""
        if path:
            fmt = driver.get("type", "raw") if driver is not None else "raw"
            dev = target.get("dev", "")
            found[dev] = SavedDisk(dev, path, fmt, disk.find("readonly") is not None)
    return found


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
