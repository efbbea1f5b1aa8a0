"""One model of a domain's XML, and its editors (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NamedTuple

# --- disks in the domain XML (pure) ---------------------------------------------------------------


class Disk(NamedTuple):
    target: str
    device: str  # disk, cdrom, floppy, lun
    kind: str  # file, block, network, volume
    source: str  # "" when none
    format: str  # raw, qcow2, ...
    copy: bool
    why: str  # why it is not copied ("" when copied)


def disks_of(xml: str) -> list[Disk]:
    """Every disk of a domain XML, and whether a backup copies it."""
    root = ET.fromstring(xml)
    found = []
    for node in root.iterfind("devices/disk"):
        target = node.find("target")
        source = node.find("source")
        driver = node.find("driver")
        device = node.get("device", "disk")
        kind = node.get("type", "file")
        path = "" if source is None else (source.get("file") or source.get("dev") or source.get("name") or "")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        why = ""
        if device != "disk":
            why = f"a {device}"
        elif not path:
            why = "no source"
        elif node.find("readonly") is not None:
            why = "read-only"
        elif node.find("shareable") is not None:
            why = "shareable"
        elif kind != "file":
            why = f"a {kind} disk (only file images are copied)"
        found.append(Disk(target.get("dev", "") if target is not None else "", device, kind, path, fmt, not why, why))
    return found


def rewrite_xml(xml: str, paths: dict[str, str], new_name: str | None) -> str:
    """The domain XML with disk sources moved to ``paths`` (target -> path); with ``new_name`` also a
    new name, no UUID and no MAC addresses (libvirt makes new ones), so the copy can live beside the
    original."""
    root = ET.fromstring(xml)
    for node in root.iterfind("devices/disk"):
        target = node.find("target")
        source = node.find("source")
        if target is not None and source is not None and target.get("dev") in paths:
            source.set("file", paths[target.get("dev", "")])
            for store in node.findall("backingStore"):
                node.remove(store)
    if new_name:
        name = root.find("name")
        if name is None:
            name = ET.SubElement(root, "name")
        name.text = new_name
        for tag in ("uuid",):
            for child in root.findall(tag):
                root.remove(child)
        for iface in root.iterfind("devices/interface"):
            for mac in iface.findall("mac"):
                iface.remove(mac)
    return ET.tostring(root, encoding="unicode")


def domain_name_of(xml: str) -> tuple[str, str]:
    root = ET.fromstring(xml)
    return (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip()
