"""Crafted kvm-backup archives, as an attacker who controls the whole file would write them: with the
project's own writer (archive.ArchiveWriter, header_json, manifest_json), so every checksum and the
manifest are valid and only the content lies."""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from sensu_kvm.backup import archive, catalog, progress


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def disk_xml(target: str, path: str, fmt: str = "qcow2", device: str = "disk", kind: str = "file",
             extra: str = "") -> str:
    attr = "dev" if kind == "block" else "file"
    source = f"<source {attr}={quoteattr(path)}/>" if path else ""
    bus = "sata" if device == "cdrom" else "virtio"
    return (f"<disk type='{kind}' device='{device}'><driver name='qemu' type='{fmt}'/>{source}"
            f"<target dev={quoteattr(target)} bus='{bus}'/>{extra}</disk>")


def domain_xml(name: str, uuid: str, disks: str, devices: str = "", os_boot: str = "", top: str = "",
               namespaces: str = "") -> str:
    """A shut off no-OS domain (never started by these tests) with the given disks and more."""
    return (f"<domain type='qemu'{namespaces}><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type>{os_boot}<boot dev='hd'/></os>{top}"
            f"<devices>{disks}{devices}<controller type='usb' model='none'/><memballoon model='none'/></devices>"
            "</domain>")


def header_disk(target: str, source: str, fmt: str = "qcow2", copied: bool = True, device: str = "disk",
                why: str = "") -> dict[str, Any]:
    disk: dict[str, Any] = {"target": target, "device": device, "source": source, "format": fmt, "copied": copied}
    if copied:
        disk["member"] = f"disks/{target}.img"
    if why:
        disk["why"] = why
    return disk


def craft(path: Path, name: str, uuid: str, disks: list[dict[str, Any]], xml: str, images: dict[str, Path],
          members: dict[str, str] | None = None, xml_last: bool = False, compress: str = "none") -> Path:
    """An archive at ``path``: the header (``name``, ``uuid``, ``disks``), ``xml`` as domain.xml, then
    ``images`` (target -> file) as members ``disks/<target>.img`` (or ``members[target]``), then the
    manifest; ``xml_last`` puts domain.xml after the images."""
    now = time.time()
    header = {"format": catalog.FORMAT, "domain": name, "uuid": uuid, "created": int(now),
              "created_text": time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(now)), "mode": "offline",
              "consistency": "shut off", "host": "crafted", "versions": {}, "disks": disks}
    by_target = {d.get("target"): d for d in disks if isinstance(d, dict)}
    writer = archive.ArchiveWriter(str(path), compress)
    files: list[dict[str, Any]] = []
    raw = xml.encode()

    def add_xml() -> None:
        files.append({"member": catalog.XML_MEMBER, "size": len(raw), "stored": len(raw),
                      "sha256": writer.member(catalog.XML_MEMBER, raw)})

    writer.member(catalog.HEADER, archive.header_json(header))
    if not xml_last:
        add_xml()
    for target, image in images.items():
        member = (members or {}).get(target, f"disks/{target}.img")
        info = writer.image(member, str(image), progress.Progress(1, False))
        disk = by_target.get(target, {})
        files.append({"member": member, "target": target, "source": disk.get("source"), "format": disk.get("format"),
                      **info})
    if xml_last:
        add_xml()
    writer.member(catalog.MANIFEST, archive.manifest_json(header, files))
    writer.close()
    return path


def good(name: str, uuid: str, source: str, **xml: str) -> tuple[list[dict[str, Any]], str]:
    """The header disks and domain XML of a well-formed archive of one qcow2 disk ``vda`` that was at
    ``source`` (``xml``: more for domain_xml)."""
    return [header_disk("vda", source)], domain_xml(name, uuid, disk_xml("vda", source), **xml)
