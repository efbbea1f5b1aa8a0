"""What an archive may bring onto this host (decision D5): the rules of ``kvm-backup restore`` and
``verify``, as functions of the archive's header, manifest and domain XML and of what the operator
and this host allow. Nothing here reads an archive or calls libvirt; ``reader`` and ``restore`` do,
and ask here.

Longer than 500 lines on purpose: it is one set of security rules that read together (what a
header, a manifest and a domain XML may name, and what the host vouches for), and splitting it would
scatter one reviewable policy over several files.

An archive is input from outside (it may come back from a remote backup host): every path, name and
element in it is checked before anything is written or defined.

Structural rules (``verify`` and ``restore``; they need no knowledge of the host):

- the header: a domain name without ``/`` or control characters, a UUID, disks whose targets are plain
  device names (``vda``, ``sdb``, ``hdc``, ``xvda``...), each once; every copied image's path absolute,
  in normal form (no ``..``, ``.``, ``//``, trailing ``/``), without NUL or control characters, a file
  name that does not start with ``.``, a member ``disks/<target>.img`` and a format raw or qcow2;
- the members: the header, ``domain.xml``, the copied images (exactly the header's members, each
  once), the manifest; the manifest's entries agree with the header;
- the domain XML: no DOCTYPE or entities, a ``<domain>`` of type qemu or kvm with the header's name
  and UUID, the same disks as the header (target, device, source, format, copied), no
  ``<backingStore>`` that names anything, no ``<mirror>``, nothing else inside a restored disk's
  ``<source>`` but a ``<seclabel>``, every host path it names in normal absolute form;
- a restored qcow2 image has no backing file and no external data file.

Host rules (``restore`` only): every image goes into an allowed folder (``allowed_dirs``), resolved
with ``os.path.realpath``; everything else the XML names on the host (:func:`references`) is either

- read-only (a CD-ROM or read-only disk image, ``<kernel>``, ``<initrd>``, ``<dtb>``, a read-only
  ``<loader>``, ``<nvram template>``, an ACPI table, a ``<sysinfo>`` fw_cfg file): kept when it lies
  under an ``--allow-readonly`` path (after resolving symlinks), or when this host's own definition of
  the domain (same UUID) or the domain being replaced already uses that path;
- a log file (a ``<serial|console|channel|parallel type='file'>``, a ``<log file>`` of any of them):
  kept only when this host's own definition of the domain (or the one being replaced) has the very
  same device; with ``--name`` (:func:`beside`) every such file is replaced by one the restore chooses;
- anything else (a writable disk that is not restored from the archive, a block, network or volume
  disk, ``<hostdev>``, ``<filesystem>``, ``<shmem>``, an interface with a script or of a type other
  than network, bridge, direct, user or ethernet, a character device on a file, socket, pipe, host
  device or TCP/UDP port, graphics on a socket or a render node, elements of another XML namespace
  such as ``<qemu:commandline>``, any other host path): kept only when the domain being replaced has
  the very same element, i.e. a restore of a domain over its own definition.

What a restore never keeps from an archive: ``<seclabel>`` elements (the host's security driver
defaults apply), ``<emulator>`` (libvirt picks the host's emulator for the guest's architecture),
the path of ``<nvram>`` (libvirt gives the domain its own), the host side of ``pty`` devices.
"""

from __future__ import annotations

import copy
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sensu_kvm.backup.archive import extents_problem
from sensu_kvm.backup.catalog import CHAIN_NAME_RE, LEVELS, MAX_ZEROED
from sensu_kvm.errors import KvmError
from sensu_kvm.qcow2 import header_problem

IMAGE_FORMATS = ("raw", "qcow2")
DOMAIN_TYPES = ("qemu", "kvm")
TARGET_RE = re.compile(r"^[a-z][a-z0-9]{1,15}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
XML_MEMBER = "domain.xml"
HEADER_MEMBER = "kvm-backup.json"
MANIFEST_MEMBER = "manifest.json"

# character devices that use nothing on the host (pty: the host side is made at start)
QUIET_CHARDEV = frozenset({"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent", "dbus"})
CHARDEV_TAGS = frozenset({"serial", "parallel", "console", "channel"})
INTERFACE_TYPES = frozenset({"network", "bridge", "direct", "user", "ethernet"})
GRAPHICS_TYPES = frozenset({"vnc", "spice"})
RNG_DEVICES = frozenset({"/dev/random", "/dev/urandom", "/dev/hwrng"})
# devices that are plain emulated hardware as long as they name no host path
PLAIN_DEVICES = frozenset({"controller", "memballoon", "video", "input", "sound", "watchdog", "panic", "hub",
                           "iommu", "vsock", "crypto", "audio", "tpm", "memory", "redirfilter"})
READONLY_OS = frozenset({"kernel", "initrd", "dtb", "shim"})
# attributes that hold a host path even when it does not start with "/"
PATH_ATTRS = frozenset({"file", "path", "dir", "socket", "evdev", "rendernode", "template", "database", "xauth"})
# free text that libvirt does not act on, and text that is not a host path (launchSecurity: base64)
SKIPPED = frozenset({"metadata", "title", "description", "name", "uuid", "launchSecurity"})
MAX_DEPTH = 32  # a libvirt domain XML nests about 8 deep


class Unsafe(KvmError):
    """An archive asks for something a restore must not do: nothing was written or defined."""


class Ref(NamedTuple):
    """Something in a domain XML that uses the host beyond the images restored from the archive."""

    kind: str  # "readonly", "log" or "host"
    what: str  # the element, for messages
    path: str  # the host path ("" when the element names none: a host device, a network disk)
    key: str  # the element as canonical text, to compare with this host's own definitions


# --- text ------------------------------------------------------------------------------------------


def show(value: object) -> str:
    """A value from an archive, fit for one line of a message (control characters escaped)."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= 200 else text[:200] + "..."


def path_problem(path: object) -> str:
    """Why ``path`` is not a plain absolute host path ("" when it is one)."""
    if not isinstance(path, str) or not path:
        return "is not a path"
    if "\0" in path:
        return "holds a NUL byte"
    if not path.isprintable():
        return "holds control characters"
    if not path.startswith("/"):
        return "is not an absolute path"
    if ".." in path.split("/"):
        return "has a '..' component"
    if path.startswith("//") or os.path.normpath(path) != path:
        return "is not in normal form ('.', '//' or a trailing '/')"
    return ""


def check_path(path: object, what: str) -> str:
    problem = path_problem(path)
    if problem:
        raise Unsafe(f"{what} {show(path)} {problem}")
    return str(path)


def name_problem(name: object) -> str:
    """Why ``name`` cannot be a domain name ("" when it can)."""
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if not name.isprintable():
        return "holds control characters"
    if "/" in name:
        return "holds a '/'"
    if name in (".", "..") or name.startswith("."):
        return "starts with '.'"
    return ""


def member_name(target: str) -> str:
    return f"disks/{target}.img"


def within(path: str, folders: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``folders`` or under one (all resolved already)."""
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


# --- the header and the manifest -------------------------------------------------------------------


def check_header(header: dict[str, Any]) -> list[dict[str, Any]]:
    """The header's disks, once everything in the header that a restore uses is plain; else Unsafe."""
    problem = name_problem(header.get("domain"))
    if problem:
        raise Unsafe(f"the archive's domain name {show(header.get('domain'))} {problem}")
    uuid = header.get("uuid")
    if not isinstance(uuid, str) or not UUID_RE.match(uuid):
        raise Unsafe(f"the archive's UUID {show(uuid)} is not a UUID")
    created = header.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created) \
            or not 0 <= created < 1 << 36:
        raise Unsafe(f"the archive's creation time {show(created)} is not a time")
    disks = header.get("disks")
    if not isinstance(disks, list):
        raise Unsafe("the archive's header has no list of disks")
    seen: set[str] = set()
    for disk in disks:
        if not isinstance(disk, dict):
            raise Unsafe("the archive's header lists a disk that is not an object")
        target = disk.get("target")
        if not isinstance(target, str) or not TARGET_RE.match(target):
            raise Unsafe(f"the archive's header names a disk target {show(target)} that is not a plain device "
                         "name (vda, sdb, hdc, xvda...)")
        if target in seen:
            raise Unsafe(f"the archive's header lists the disk target {target} twice")
        seen.add(target)
        if not isinstance(disk.get("copied"), bool) or not isinstance(disk.get("source", ""), str):
            raise Unsafe(f"{target}: the archive's header describes the disk with values of the wrong type")
        if not disk["copied"]:
            continue
        source = check_path(disk.get("source"), f"{target}: the image path")
        if os.path.basename(source).startswith("."):
            raise Unsafe(f"{target}: the image path {show(source)} names a hidden file")
        if disk.get("member") != member_name(target):
            raise Unsafe(f"{target}: the archive's member {show(disk.get('member'))} is not {member_name(target)}")
        if disk.get("format") not in IMAGE_FORMATS:
            raise Unsafe(f"{target}: the image format {show(disk.get('format'))} is neither raw nor qcow2")
    return disks


def copied_targets(header: dict[str, Any]) -> list[str]:
    return [d["target"] for d in header.get("disks", []) if isinstance(d, dict) and d.get("copied")]


def check_member(name: str, header: dict[str, Any], seen: Iterable[str] = ()) -> str:
    """The target of an image member ``disks/<target>.img`` that the header lists; else Unsafe."""
    expected = {member_name(t): t for t in copied_targets(header)}
    if name not in expected:
        raise Unsafe(f"the archive holds a member {show(name)} that is not an image its header lists")
    if name in seen:
        raise Unsafe(f"the archive holds the member {show(name)} twice")
    return expected[name]


def check_manifest(header: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The manifest lists exactly the header's members, with the header's targets, paths and formats."""
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise Unsafe("the manifest has no list of files")
    names = [f.get("member") for f in files]
    wanted = [XML_MEMBER, *(member_name(t) for t in copied_targets(header))]
    if sorted(map(str, names)) != sorted(wanted):
        raise Unsafe(f"the manifest's members {show(names)} are not the header's {show(wanted)}")
    disks = {d["target"]: d for d in header.get("disks", []) if d.get("copied")}
    for entry in files:
        if entry.get("member") == XML_MEMBER:
            continue
        target = check_member(str(entry.get("member")), header)
        disk = disks[target]
        for field in ("target", "source", "format"):
            if field in entry and entry[field] != disk.get(field):
                raise Unsafe(f"{target}: the manifest's {field} {show(entry[field])} is not the header's "
                             f"{show(disk.get(field))}")


# --- kvm-backup/2: the chain and the raw disks ------------------------------------------------------

CHECKPOINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_SIZE = 1 << 60


def _int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def check_v2(header: dict[str, Any]) -> dict[str, Any]:
    """The ``chain`` object and the raw disks of a kvm-backup/2 header (after ``check_header``): the
    chain, once plain; else Unsafe. A full names no parent; an inc or diff names its parent (a plain
    archive name in the same folder), that file's sha256 and the checkpoint it starts from. Every
    copied disk is stored ``raw-sparse``, of level full or inc (inc only in an inc or diff archive),
    with a ``virtual_size`` and ``zeroed`` ranges in order, not overlapping, within that size."""
    chain = header.get("chain")
    if not isinstance(chain, dict):
        raise Unsafe("the archive's header has no chain object")
    level = chain.get("level")
    if level not in LEVELS:
        raise Unsafe(f"the archive's level {show(level)} is not full, inc or diff")
    for field in ("checkpoint", "since"):
        value = chain.get(field)
        if value is not None and (not isinstance(value, str) or not CHECKPOINT_RE.match(value)):
            raise Unsafe(f"the archive's chain {field} {show(value)} is not a plain checkpoint name")
    if level == "full":
        for field in ("since", "parent", "parent_sha256"):
            if chain.get(field) is not None:
                raise Unsafe(f"the archive is a full backup but its chain names a {field}")
    else:
        parent = chain.get("parent")
        if not isinstance(parent, str) or not CHAIN_NAME_RE.match(parent) or parent.startswith(".") \
                or not parent.isprintable() or os.path.basename(parent) != parent:
            raise Unsafe(f"the archive's parent {show(parent)} is not the name of an archive in the same folder")
        if not isinstance(chain.get("parent_sha256"), str) or not SHA256_RE.match(chain["parent_sha256"]):
            raise Unsafe(f"the archive's parent sha256 {show(chain.get('parent_sha256'))} is not a sha256")
        if chain.get("since") is None:
            raise Unsafe(f"the archive is a {level} backup but its chain names no checkpoint it starts from")
    if not _int(chain.get("depth", 0), 0, 1 << 20):
        raise Unsafe(f"the archive's chain depth {show(chain.get('depth'))} is not a count")
    for disk in header.get("disks", []):
        if not disk.get("copied"):
            continue
        target = disk["target"]
        if disk.get("stored") != "raw-sparse":
            raise Unsafe(f"{target}: the disk is stored as {show(disk.get('stored'))}, not raw-sparse")
        if disk.get("level") not in ("full", "inc") or (disk["level"] == "inc" and level == "full"):
            raise Unsafe(f"{target}: the disk's level {show(disk.get('level'))} does not fit a {level} archive")
        size = disk.get("virtual_size")
        if not _int(size, 0, MAX_SIZE):
            raise Unsafe(f"{target}: the virtual size {show(size)} is not a size")
        zeroed = disk.get("zeroed", [])
        if not isinstance(zeroed, list) or len(zeroed) > MAX_ZEROED:
            raise Unsafe(f"{target}: the zeroed ranges are not a list of at most {MAX_ZEROED}")
        end = 0
        for item in zeroed:
            if not isinstance(item, list) or len(item) != 2 or not _int(item[0], 0, MAX_SIZE) \
                    or not _int(item[1], 1, MAX_SIZE):
                raise Unsafe(f"{target}: a zeroed range {show(item)} is not [offset, length]")
            if item[0] < end:
                raise Unsafe(f"{target}: the zeroed range at {item[0]} overlaps the one before it (or is out of order)")
            if item[0] + item[1] > size:
                raise Unsafe(f"{target}: the zeroed range at {item[0]} of {item[1]} bytes goes beyond the virtual "
                             f"size {size}")
            end = item[0] + item[1]
    return chain


def check_extents(target: str, parts: list[tuple[int, int]], realsize: int, virtual_size: int | None = None,
                  zeroed: list[list[int]] | None = None) -> None:
    """A member's sparse map (from the archive): extents in order, not overlapping, within the
    member's size, which is the disk's virtual size when the header gives one, and never over a
    range the header says became zero; else Unsafe."""
    if virtual_size is not None and realsize != virtual_size:
        raise Unsafe(f"{target}: the member's size {realsize} is not the disk's virtual size {virtual_size}")
    problem = extents_problem(parts, realsize)
    if problem:
        raise Unsafe(f"{target}: the sparse map is unsafe: {problem}")
    ranges = iter(zeroed or [])
    current = next(ranges, None)
    for offset, length in parts:
        while current is not None and current[0] + current[1] <= offset:
            current = next(ranges, None)
        if current is not None and length and current[0] < offset + length:
            raise Unsafe(f"{target}: the data extent at {offset} overlaps the zeroed range at {current[0]}")


image_problem = header_problem  # why a restored image is unsafe: it would have QEMU open another host file



# --- where the images go ---------------------------------------------------------------------------


def place(paths: dict[str, str], allowed: Iterable[str],
          resolve: Callable[[str], str] = os.path.realpath) -> dict[str, str]:
    """target -> the path an image is written to: its folder resolved (symlinks followed), which must be
    one of the ``allowed`` folders (resolved already) or under one; two images never share a path."""
    allowed = list(allowed)
    placed: dict[str, str] = {}
    for target, dest in paths.items():
        check_path(dest, f"{target}: the image path")
        folder = resolve(os.path.dirname(dest))
        if not within(folder, allowed):
            where = ", ".join(allowed) if allowed else "none: give --image-dir or --allow-dir"
            raise Unsafe(f"{target}: {show(dest)} is outside the folders a restore may write images to "
                         f"({where})")
        placed[target] = os.path.join(folder, os.path.basename(dest))
    if len(set(placed.values())) != len(placed):
        raise Unsafe(f"two images of the archive would go to the same path ({show(sorted(placed.values()))})")
    return placed


# --- the domain XML --------------------------------------------------------------------------------


def parse(xml: str) -> ET.Element:
    """The domain XML from an archive, parsed; no DOCTYPE (no entities that we and libvirt could read
    differently)."""
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise Unsafe("domain.xml holds a DOCTYPE or an entity declaration")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise Unsafe(f"domain.xml is not well-formed XML ({err})") from err
    if root.tag != "domain":
        raise Unsafe(f"domain.xml holds a <{show(root.tag)}>, not a <domain>")
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Unsafe(f"domain.xml nests elements more than {MAX_DEPTH} deep")
        stack.extend((child, depth + 1) for child in node)
    return root


def _disk_target(disk: ET.Element) -> str:
    target = disk.find("target")
    return target.get("dev", "") if target is not None else ""


def _source_path(source: ET.Element | None) -> str:
    if source is None:
        return ""
    for attr in ("file", "dev", "dir", "name", "volume", "path"):
        if source.get(attr):
            return source.get(attr, "")
    return ""


def check_xml(root: ET.Element, header: dict[str, Any], xml_disks: list[tuple[str, str, str, str, bool]]) -> None:
    """The structural rules of the domain XML against the header (see the module's text).
    ``xml_disks`` is (target, device, source, format, copied) of each disk, as ``backup.disks.disks_of`` sees
    them: the way the header's list was made."""
    if root.get("type") not in DOMAIN_TYPES:
        raise Unsafe(f"domain.xml is a domain of type {show(root.get('type'))}, not qemu or kvm")
    name = (root.findtext("name") or "").strip()
    uuid = (root.findtext("uuid") or "").strip()
    if name != header.get("domain"):
        raise Unsafe(f"domain.xml names the domain {show(name)}, the header {show(header.get('domain'))}")
    if uuid.lower() != str(header.get("uuid", "")).lower():
        raise Unsafe(f"domain.xml gives the UUID {show(uuid)}, the header {show(header.get('uuid'))}")
    listed = [(str(d.get("target")), str(d.get("device", "disk")), str(d.get("source", "")),
               str(d.get("format", "raw")), bool(d.get("copied"))) for d in header.get("disks", [])]
    if listed != xml_disks:
        extra = [d for d in xml_disks if d not in listed] or [d for d in listed if d not in xml_disks]
        first = extra[0] if extra else xml_disks[0]
        raise Unsafe(f"the disks of domain.xml are not those of the header (first difference: {first[0]} "
                     f"{first[1]} {show(first[2]) or 'without a source'})")
    copied = {d[0] for d in xml_disks if d[4]}
    for node in _outside_metadata(root):
        if node.tag == "backingStore" and (node.attrib or len(node)):
            raise Unsafe(f"domain.xml has a <backingStore> ({show(_first_path(node) or 'no path')}): a restore "
                         "brings whole images only")
        if node.tag == "mirror":
            raise Unsafe(f"domain.xml has a <mirror> ({show(_first_path(node) or 'no path')})")
    for disk in root.iterfind("devices/disk"):
        if len(disk.findall("source")) > 1:
            raise Unsafe(f"{show(_disk_target(disk))}: a disk of domain.xml has more than one <source>")
        if _disk_target(disk) not in copied:
            continue
        source = disk.find("source")
        for child in source if source is not None else []:
            if child.tag != "seclabel":
                raise Unsafe(f"{_disk_target(disk)}: the restored disk's <source> has a <{show(child.tag)}> "
                             f"({show(_first_path(child) or 'no path')})")
        for child in disk:
            if child.tag not in ("source", "backingStore") and _first_path(child):
                raise Unsafe(f"{_disk_target(disk)}: the restored disk's <{show(child.tag)}> names "
                             f"{show(_first_path(child))}")


def sanitize(root: ET.Element, copied: Iterable[str]) -> ET.Element:
    """What a restore never keeps, removed in place (see the module's text); the copied disks' sources
    reduced to their file."""
    copied = set(copied)
    for top in list(root):
        if top.tag in SKIPPED:
            continue
        if top.tag == "seclabel":
            root.remove(top)
            continue
        for parent in top.iter():
            for child in list(parent):
                if child.tag == "seclabel":
                    parent.remove(child)
    for devices in root.findall("devices"):
        for emulator in devices.findall("emulator"):
            devices.remove(emulator)
        for dev in devices:
            if dev.tag in CHARDEV_TAGS and dev.get("type", "pty") == "pty":
                for source in dev.findall("source"):
                    dev.remove(source)
        for disk in devices.findall("disk"):
            if _disk_target(disk) not in copied:
                continue
            for store in disk.findall("backingStore"):
                disk.remove(store)
            image = disk.find("source")
            if image is not None:
                path = image.get("file", "")
                image.clear()
                image.set("file", path)
    for nvram in root.findall("os/nvram"):
        keep = {k: v for k, v in nvram.attrib.items() if k in ("template", "templateFormat", "format")}
        nvram.clear()
        nvram.attrib.update(keep)
    return root


def beside(root: ET.Element, new_name: str, folder: str) -> list[str]:
    """Give a (sanitized) domain XML restored as ``new_name`` beside its original host state of its
    own, in place (decision "Issue 17: restore beside the original"):

    - every file a character device writes (a ``file`` device's output, every ``<log file>``) becomes
      ``folder/NEW-<device><index>.log`` (``-log.log`` for the log of a ``file`` device), a listening
      unix socket ``folder/NEW-<device><index>.sock``; a virtio channel's socket (the guest agent's)
      loses its path, for libvirt to make its own; a console that mirrors serial 0 (target type
      serial) gets serial 0's files, as libvirt itself makes it;
    - VNC and SPICE get ``autoport='yes'`` and no fixed port, TLS port, websocket or socket;
    - an interface loses its ``<target dev>`` (libvirt names the tap device), a vsock its fixed CID.

    Returns the files chosen: the only paths a restored character device writes to. Whatever the
    archive named there is dropped, never written to."""
    chosen: list[str] = []
    counts: dict[str, int] = {}
    mirrored: dict[tuple[str, str], str] = {}  # serial 0's (element, attribute) -> its new path
    for devices in root.findall("devices"):
        for dev in devices:
            if dev.tag in CHARDEV_TAGS:
                index = counts.get(dev.tag, 0)
                counts[dev.tag] = index + 1
                target = dev.find("target")
                mirror = (dev.tag == "console" and index == 0 and counts.get("serial", 0) > 0
                          and (target is None or target.get("type", "serial") == "serial"))
                stem = os.path.join(folder, f"{new_name}-{dev.tag}{index}")
                kind = dev.get("type", "pty")
                wanted: list[tuple[ET.Element, str, str]] = []  # (element, attribute, new path)
                source = dev.find("source")
                if kind == "file" and source is not None:
                    wanted.append((source, "path", stem + ".log"))
                elif kind == "unix" and source is not None and source.get("mode", "connect") == "bind":
                    if dev.tag == "channel" and target is not None and target.get("type") == "virtio":
                        source.attrib.pop("path", None)
                    else:
                        wanted.append((source, "path", stem + ".sock"))
                for log in dev.findall("log"):
                    if log.get("file"):
                        wanted.append((log, "file", stem + ("-log.log" if kind == "file" else ".log")))
                for el, attr, own in wanted:
                    path = mirrored.get((el.tag, attr), own) if mirror else own
                    el.set(attr, path)
                    chosen.append(path)
                    if dev.tag == "serial" and index == 0:
                        mirrored[(el.tag, attr)] = path
            elif dev.tag == "graphics" and dev.get("type") in GRAPHICS_TYPES:
                for attr in ("port", "tlsPort", "websocket", "socket"):
                    dev.attrib.pop(attr, None)
                dev.set("autoport", "yes")
                for listen in dev.findall("listen"):
                    listen.attrib.pop("socket", None)
            elif dev.tag == "interface":
                for target in dev.findall("target"):
                    dev.remove(target)
            elif dev.tag == "vsock":
                for cid in dev.findall("cid"):
                    dev.remove(cid)
                ET.SubElement(dev, "cid", {"auto": "yes"})
    return list(dict.fromkeys(chosen))

def _outside_metadata(root: ET.Element) -> Iterable[ET.Element]:
    for top in root:
        if top.tag not in SKIPPED:
            yield from top.iter()


def _paths(node: ET.Element) -> list[str]:
    """Every host path that ``node`` and its children name: attributes that hold paths, and any value
    that starts with "/"."""
    found = []
    for el in node.iter():
        for attr, value in el.attrib.items():
            if value.startswith("/") or (attr in PATH_ATTRS and value):
                found.append(value)
        text = (el.text or "").strip()
        if text.startswith("/"):
            found.append(text)
    return found


def _first_path(node: ET.Element) -> str:
    found = _paths(node)
    return found[0] if found else ""


def _foreign(node: ET.Element) -> bool:
    """Whether ``node`` holds an element of another namespace (``<qemu:commandline>`` and the like)."""
    return any(el.tag.startswith("{") for el in node.iter())


def key(node: ET.Element) -> str:
    """``node`` as canonical text (attributes sorted, whitespace between elements ignored)."""
    node = copy.deepcopy(node)
    node.tail = None
    for el in node.iter():
        el.tail = None
        el.text = (el.text or "").strip() or None
        items = sorted(el.attrib.items())
        el.attrib.clear()
        el.attrib.update(items)
    return ET.tostring(node, encoding="unicode")


def _ref(kind: str, what: str, node: ET.Element, path: str = "") -> Ref:
    return Ref(kind, what, path or _first_path(node), key(node))


def _tagged(node: ET.Element, prefix: str = "") -> str:
    kind = node.get("type")
    return f"{prefix}<{show(node.tag)}{f' type={show(kind)!r}' if kind else ''}>"


def references(root: ET.Element, copied: Iterable[str]) -> list[Ref]:
    """Everything a (sanitized) domain XML uses on the host beyond the disks in ``copied``, which a
    restore writes from the archive."""
    copied = set(copied)
    refs: list[Ref] = []
    for top in root:
        if top.tag in SKIPPED:
            continue
        if _foreign(top):
            refs.append(_ref("host", f"<{show(top.tag)}> (another XML namespace)", top))
        elif top.tag == "devices":
            for dev in top:
                refs += _device(dev, copied)
        elif top.tag == "os":
            refs += _os(top)
        elif top.tag == "sysinfo":
            for el in top.iter():  # an entry's text is a string for the guest, its file a host file
                if el.tag == "entry" and el.get("file"):
                    refs.append(_ref("readonly", "<sysinfo><entry file>", el, el.get("file", "")))
                elif any(v.startswith("/") for k, v in el.attrib.items() if k != "file"):
                    refs.append(_ref("host", f"<sysinfo><{show(el.tag)}>", el))
        elif top.tag == "resource":
            for el in top:
                if el.tag != "partition" and _first_path(el):
                    refs.append(_ref("host", f"<resource><{show(el.tag)}>", el))
        elif _first_path(top):
            refs.append(_ref("host", f"<{show(top.tag)}>", top))
    return refs


def _os(node: ET.Element) -> list[Ref]:
    refs = []
    for el in node:
        what = f"<os><{show(el.tag)}>"
        if el.tag == "cmdline":
            continue
        if el.tag in READONLY_OS:
            if (el.text or "").strip():
                refs.append(_ref("readonly", what, el, (el.text or "").strip()))
        elif el.tag == "loader":
            if (el.text or "").strip():
                readonly = el.get("readonly") == "yes" or el.get("type") == "rom"
                refs.append(_ref("readonly" if readonly else "host",
                                 what if readonly else "<os><loader> (writable)", el, (el.text or "").strip()))
        elif el.tag == "nvram":
            if el.get("template"):
                refs.append(_ref("readonly", "<os><nvram template>", el, el.get("template", "")))
        elif el.tag == "acpi":
            for table in el:
                if (table.text or "").strip():
                    refs.append(_ref("readonly", "<os><acpi><table>", table, (table.text or "").strip()))
        elif _first_path(el):
            refs.append(_ref("host", what, el))
    return refs


def _device(dev: ET.Element, copied: set[str]) -> list[Ref]:
    tag = dev.tag
    kind = dev.get("type", "")
    if _foreign(dev):
        return [_ref("host", f"<{show(tag)}> (another XML namespace)", dev)]
    if tag == "disk":
        return _disk(dev, copied)
    paths = _paths(dev)
    if tag in CHARDEV_TAGS:
        kind = kind or "pty"
        logs = [log.get("file", "") for log in dev.findall("log") if log.get("file")]
        rest = list(paths)
        for log_file in logs:
            rest.remove(log_file)
        log_refs = [_ref("log", _tagged(dev, "<log> of "), dev, log_file) for log_file in logs]
        if kind in QUIET_CHARDEV and not rest:
            return log_refs
        if kind == "unix" and not rest:  # a socket that libvirt names and manages itself
            return log_refs
        source = dev.find("source")
        if kind == "file" and source is not None and source.get("path") and rest == [source.get("path")]:
            return [_ref("log", _tagged(dev), dev, source.get("path", "")), *log_refs]
        return [_ref("host", _tagged(dev), dev)]
    if tag == "interface":
        takes_nic = any(s.get("mode") == "passthrough" for s in dev.findall("source"))  # the host's NIC, whole
        if kind in INTERFACE_TYPES and not paths and not takes_nic and dev.find("script") is None \
                and dev.find("downscript") is None:
            return []
        return [_ref("host", _tagged(dev), dev)]
    if tag == "graphics":
        return [] if kind in GRAPHICS_TYPES and not paths else [_ref("host", _tagged(dev), dev)]
    if tag == "rng":
        backend = dev.find("backend")
        model = backend.get("model") if backend is not None else None
        if model == "builtin" and not paths:
            return []
        if model == "random" and backend is not None and paths == [(backend.text or "").strip()] \
                and paths[0] in RNG_DEVICES:
            return []
        if model == "egd" and backend is not None and backend.get("type") in QUIET_CHARDEV and not paths:
            return []
        return [_ref("host", f"<rng><backend model={show(model)!r}>", dev)]
    if tag in ("smartcard", "redirdev"):
        quiet = kind in QUIET_CHARDEV and (tag == "redirdev" or dev.get("mode") == "passthrough")
        return [] if quiet and not paths else [_ref("host", _tagged(dev), dev)]
    if tag in PLAIN_DEVICES and not paths:
        return []
    return [_ref("host", _tagged(dev), dev)]


def _disk(disk: ET.Element, copied: set[str]) -> list[Ref]:
    target = _disk_target(disk)
    if target in copied:
        return []  # written from the archive; check_xml saw that it names nothing else
    source = disk.find("source")
    path = _source_path(source)
    if not path and not _paths(disk) and (source is None or not len(source)):
        return []  # an empty drive
    device = disk.get("device", "disk")
    kind = disk.get("type", "file")
    readonly = device == "cdrom" or disk.find("readonly") is not None
    what = f"<disk device={device!r} type={show(kind)!r}> {show(target)}"
    if readonly and device != "lun" and kind in ("file", "block", "dir") and path and _paths(disk) == [path]:
        return [_ref("readonly", what, disk, path)]
    why = "writable, not restored from the archive" if not readonly else "not a plain file or device"
    return [_ref("host", f"{what} ({why})", disk, path)]


def check_references(refs: list[Ref]) -> None:
    """The structural part of the references: every path they name is a plain absolute path."""
    for ref in refs:
        if ref.path and ref.kind != "host":
            check_path(ref.path, f"{ref.what}:")


class Vouched(NamedTuple):
    """What this host's own definitions vouch for. ``keys``: the read-only files and log devices (as
    canonical text) of the domain with the archive's UUID and of the domain a restore replaces;
    ``paths``: the host paths those domains use read-only; ``own``: every element of the domain a
    restore replaces (a restore over its own definition keeps what it had)."""

    keys: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    own: frozenset[str] = frozenset()


def vouched_by(original: list[tuple[ET.Element, list[str]]], replaced: list[tuple[ET.Element, list[str]]]) -> Vouched:
    """``original`` and ``replaced`` are (parsed XML, its copied disks' targets) of this host's domains."""
    keys: set[str] = set()
    paths: set[str] = set()
    own: set[str] = set()
    for group, is_replaced in ((original, False), (replaced, True)):
        for root, disks in group:
            for ref in references(sanitize(copy.deepcopy(root), disks), disks):
                if is_replaced:
                    own.add(ref.key)
                if ref.kind != "host":
                    keys.add(ref.key)
                if ref.kind == "readonly":
                    paths.add(ref.path)
    return Vouched(frozenset(keys), frozenset(paths), frozenset(own))


def check_host(refs: list[Ref], allow_readonly: Iterable[str], vouched: Vouched,
               resolve: Callable[[str], str] = os.path.realpath) -> None:
    """Every reference is allowed on this host (see the module's text); else Unsafe, naming the first
    one that is not. ``allow_readonly`` are resolved paths."""
    allow_readonly = list(allow_readonly)
    for ref in refs:
        if ref.key in vouched.own:
            continue
        if ref.kind == "readonly":
            if ref.key in vouched.keys or ref.path in vouched.paths or within(resolve(ref.path), allow_readonly):
                continue
            raise Unsafe(f"{ref.what}: {show(ref.path)} is a host file that is not restored from the archive "
                         "(allow it with --allow-readonly PATH)")
        if ref.kind == "log":
            if ref.key in vouched.keys:
                continue
            raise Unsafe(f"{ref.what}: {show(ref.path)} is a host file the domain would write to, and this "
                         "host's own definition of the domain does not use it")
        place_text = f" ({show(ref.path)})" if ref.path else ""
        raise Unsafe(f"{ref.what}{place_text} uses the host beyond the images restored from the archive, and the "
                     "domain a restore replaces does not have it")
