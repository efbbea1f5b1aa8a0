"""One model of a domain's XML, and its editors (pure: strings in, records or strings out).

Every reader of disks goes through ``disks``: a disk's local path is its ``<source file=...>`` or
``<source dev=...>`` (a network disk has a ``name`` instead, a pool volume a ``volume``), its format
the ``<driver type=...>`` ("" when absent: libvirt then probes or assumes raw), and its backing chain
the ``<backingStore>`` elements of the live XML, top first. ``backup/policy.py`` keeps its own,
stricter walk of the whole XML: it judges XML that comes from an archive, attribute by attribute.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NamedTuple


class Layer(NamedTuple):
    """One image of a disk's chain."""

    path: str
    format: str


class Disk(NamedTuple):
    target: str
    device: str  # disk, cdrom, floppy, lun
    kind: str  # file, block, network, volume
    path: str  # the local file or block device, "" when none
    source: str  # path, or the network disk's name, "" when none (a pool volume has only ``kind``)
    format: str  # the driver type, "" when not given
    readonly: bool
    shareable: bool
    backing: tuple[Layer, ...]  # below the top image, as the live XML shows it
    bus: str = ""  # virtio, sata, scsi, ide, ...
    volume: str = ""  # a pool volume's name (kind 'volume'), "" otherwise

    @property
    def chain(self) -> list[Layer]:
        """The whole chain, top image first (empty without a local path)."""
        return [Layer(self.path, self.format), *self.backing] if self.path else []


class Interface(NamedTuple):
    kind: str  # network, bridge, direct, ...
    mac: str
    source: str  # network, bridge or device name
    target: str  # the host side device (vnet0), "" when libvirt has not named it
    model: str = ""  # virtio, e1000, ...


class Domain(NamedTuple):
    name: str
    uuid: str
    disks: list[Disk]
    interfaces: list[Interface]
    files: list[str]  # host files of serial/console/parallel/channel devices, the NVRAM, the kernel/initrd


def xml_escape(text: str) -> str:
    """``text`` for an XML element, as xml.sax.saxutils.escape gives it (that module imports
    urllib.request: 25 ms of the start of every command that builds XML)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def xml_quoteattr(text: str) -> str:
    """``text`` as an XML attribute value with its quotes, as xml.sax.saxutils.quoteattr gives it."""
    data = xml_escape(text).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in data:
        return f'"{data}"'
    if "'" not in data:
        return f"'{data}'"
    return '"' + data.replace('"', "&quot;") + '"'


def _root(xml: str | ET.Element) -> ET.Element:
    return ET.fromstring(xml) if isinstance(xml, str) else xml


def _local(source: ET.Element | None) -> str:
    return "" if source is None else (source.get("file") or source.get("dev") or "")


def _disk(node: ET.Element) -> Disk:
    target, source, driver = node.find("target"), node.find("source"), node.find("driver")
    path = _local(source)
    other = "" if source is None else source.get("name", "")
    backing = []
    store = node.find("backingStore")
    while store is not None and store.find("source") is not None:
        fmt = store.find("format")
        backing.append(Layer(_local(store.find("source")), "" if fmt is None else fmt.get("type", "")))
        store = store.find("backingStore")
    return Disk("" if target is None else target.get("dev", ""), node.get("device", "disk"), node.get("type", "file"),
                path, path or other, "" if driver is None else driver.get("type", ""),
                node.find("readonly") is not None, node.find("shareable") is not None, tuple(backing),
                "" if target is None else target.get("bus", ""), "" if source is None else source.get("volume", ""))


def disks(xml: str | ET.Element) -> list[Disk]:
    """Every disk of a domain XML (a string or a parsed <domain>), in document order."""
    return [_disk(node) for node in _root(xml).iterfind("devices/disk")]


def chains(xml: str | ET.Element) -> dict[str, list[Layer]]:
    """target -> backing chain, top image first, of each disk (device 'disk') with a local path."""
    return {d.target: d.chain for d in disks(xml) if d.device == "disk" and d.path}


def interfaces(xml: str | ET.Element) -> list[Interface]:
    found = []
    for node in _root(xml).iterfind("devices/interface"):
        mac, source, target, model = node.find("mac"), node.find("source"), node.find("target"), node.find("model")
        src = "" if source is None else (source.get("network") or source.get("bridge") or source.get("dev") or "")
        found.append(Interface(node.get("type", ""), "" if mac is None else mac.get("address", ""), src,
                               "" if target is None else target.get("dev", ""),
                               "" if model is None else model.get("type", "")))
    return found


def files(xml: str | ET.Element) -> list[str]:
    """Host files other than disks that the domain opens: character devices backed by a file or a
    socket (serial, console, parallel, channel: log files too), the NVRAM, kernel, initrd and dtb."""
    root = _root(xml)
    found: list[str] = []
    for tag in ("serial", "console", "parallel", "channel"):
        for node in root.iterfind(f"devices/{tag}"):
            for holder in (node.find("source"), node.find("log")):
                if holder is not None:
                    found += [v for k in ("path", "file") if (v := holder.get(k))]
    for tag in ("nvram", "loader", "kernel", "initrd", "dtb"):
        text = (root.findtext(f"os/{tag}") or "").strip()
        if text:
            found.append(text)
    return list(dict.fromkeys(found))


def domain(xml: str | ET.Element) -> Domain:
    root = _root(xml)
    name, uuid = name_and_uuid(root)
    return Domain(name, uuid, disks(root), interfaces(root), files(root))


def name_and_uuid(xml: str | ET.Element) -> tuple[str, str]:
    root = _root(xml)
    return (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip()


# --- editors ---------------------------------------------------------------------------------------


def _disk_nodes(root: ET.Element, target: str) -> list[ET.Element]:
    return [n for n in root.iterfind("devices/disk") if (t := n.find("target")) is not None and t.get("dev") == target]


def _move_sources(root: ET.Element, paths: dict[str, str]) -> None:
    for target, path in paths.items():
        for node in _disk_nodes(root, target):
            source = node.find("source")
            if source is not None:
                source.set("file", path)
                for store in node.findall("backingStore"):
                    node.remove(store)


def _rename(root: ET.Element, new_name: str) -> None:
    name = root.find("name")
    if name is None:
        name = ET.SubElement(root, "name")
    name.text = new_name
    for child in root.findall("uuid"):
        root.remove(child)
    for iface in root.iterfind("devices/interface"):
        for mac in iface.findall("mac"):
            iface.remove(mac)


def rewrite_xml(xml: str, paths: dict[str, str], new_name: str | None) -> str:
    """The domain XML with the disks of ``paths`` (target -> file) on those files, their backing
    chains dropped (libvirt reads them again from the images); with ``new_name`` also that name, no
    UUID and no MAC addresses (libvirt makes new ones), so that the copy can live beside the original."""
    root = ET.fromstring(xml)
    _move_sources(root, paths)
    if new_name:
        _rename(root, new_name)
    return ET.tostring(root, encoding="unicode")


def set_format(xml: str, target: str, fmt: str) -> str:
    """The domain XML with the driver type of disk ``target`` set to ``fmt`` (where it has a driver)."""
    root = ET.fromstring(xml)
    for node in _disk_nodes(root, target):
        driver = node.find("driver")
        if driver is not None:
            driver.set("type", fmt)
    return ET.tostring(root, encoding="unicode")
