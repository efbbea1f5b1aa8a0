"""kvm-backup restore and verify against crafted archives (tests/crafted.py: valid checksums and manifest,
lying content), through the installed command on real libvirtd: every one is refused in one line with
the documented exit code, nothing new or changed on disk (the folders listed before and after, hidden
files too), nothing defined; verify refuses the ones whose fault needs no knowledge of the host. And
well-formed archives, crafted and real, still restore. Domains are spk-crafted-*, never started."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import libvirt
import pytest

from tests import crafted
from tests.conftest import refuses, succeeds
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-crafted-"
URI = ["-u", rig.URI]
SHADOW = "/etc/shadow"


conn = own_fixtures(PREFIX)[0]  # its images live in tmp_path
class Site(NamedTuple):
    allowed: Path  # given as --allow-dir
    outside: Path  # a folder no restore may write to, with a file that must stay as it is
    archives: Path
    image: Path  # a small qcow2 image with data
    victim: libvirt.virDomain  # a shut off domain whose image sits in ``allowed``


@pytest.fixture(scope="module")
def site(conn: libvirt.virConnect, tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("crafted")
    allowed, outside, archives = root / "allowed", root / "outside", root / "archives"
    for folder in (allowed, outside, archives):
        folder.mkdir()
    (outside / "victim.txt").write_bytes(b"precious\n")
    (outside / "victim.txt").chmod(0o644)
    image = rig.make_qcow2(archives / "source.qcow2", "16M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(image)], check=True,
                   capture_output=True)
    victim_image = rig.make_qcow2(allowed / "spk-crafted-victim.qcow2", "16M")
    victim = conn.defineXML(rig.noos_domain_xml("spk-crafted-victim", victim_image))
    return Site(allowed, outside, archives, image, victim)


def listing(*folders: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folders`` (hidden ones too, symlinks not followed): mode, size, sha256 or
    link target."""
    found = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    what = "-> " + os.readlink(path)
                elif stat.S_ISREG(st.st_mode):
                    what = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                else:
                    what = "dir"
                found[path] = (st.st_mode, st.st_size, what)
    return found


def domains(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains(0)}


class Case(NamedTuple):
    build: Callable[[Site], tuple[Path, list[str]]]  # the archive and restore's options
    code: int  # restore's exit code
    says: str  # in restore's line
    verify: str | None  # in verify's line when verify refuses it (exit 1); None: verify passes it


def archive(site: Site, label: str, disks: list[dict[str, Any]], xml: str, image: Path | None = None,
            targets: tuple[str, ...] = ("vda",), **kw: Any) -> Path:
    path = site.archives / f"{label}.kvmbak.tar"
    path.unlink(missing_ok=True)
    name = kw.pop("name", f"{PREFIX}{label}")
    uuid = kw.pop("uuid", UUIDS.setdefault(label, crafted.new_uuid()))
    return crafted.craft(path, name, uuid, disks, xml, {t: image or site.image for t in targets}, **kw)


UUIDS: dict[str, str] = {}


def plain(label: str, source: Callable[[Site], str] | None = None, *, devices: str = "", os_boot: str = "",
          top: str = "", namespaces: str = "", options: tuple[str, ...] = ()) -> Callable[[Site], tuple[Path, list[str]]]:
    """One qcow2 disk vda at ``source`` (default: in the allowed folder), header and XML agreeing; more
    devices, boot elements or top-level elements in the XML."""
    def build(site: Site) -> tuple[Path, list[str]]:
        path = source(site) if source else str(site.allowed / f"{label}.qcow2")
        name, uuid = f"{PREFIX}{label}", UUIDS.setdefault(label, crafted.new_uuid())
        xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path), devices=devices, os_boot=os_boot,
                                 top=top, namespaces=namespaces)
        return archive(site, label, [crafted.header_disk("vda", path)], xml), ["--allow-dir", str(site.allowed),
                                                                                *options]
    return build


def custom(label: str, make: Callable[[Site, str, str], tuple[list[dict[str, Any]], str, dict[str, Any]]],
           options: Callable[[Site], list[str]] | None = None) -> Callable[[Site], tuple[Path, list[str]]]:
    """``make(site, name, uuid)`` gives the header disks, the XML and more arguments for craft()."""
    def build(site: Site) -> tuple[Path, list[str]]:
        name, uuid = f"{PREFIX}{label}", UUIDS.setdefault(label, crafted.new_uuid())
        disks, xml, kw = make(site, name, uuid)
        extra = options(site) if options else []
        return archive(site, label, disks, xml, **kw), ["--allow-dir", str(site.allowed), *extra]
    return build


def _symlinked_folder(site: Site) -> str:
    link = site.allowed / "link"
    if not link.is_symlink():
        link.symlink_to(site.outside)
    return str(link / "escape.qcow2")


def _dotdot(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = f"{site.allowed}/../outside/dotdot.qcow2"
    return [crafted.header_disk("vda", path)], crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path)), {}


def _member(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    disks, xml = crafted.good(name, uuid, str(site.allowed / "member.qcow2"))
    return disks, xml, {"members": {"vda": "disks/../../outside/vda.img"}}


def _slash_target(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    target, path = "vda/../../x", str(site.allowed / "slash.qcow2")
    disk = crafted.header_disk(target, path)
    return [disk], crafted.domain_xml(name, uuid, crafted.disk_xml(target, path)), {"targets": (target,)}


def _duplicate(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    a, b = str(site.allowed / "dup-a.qcow2"), str(site.outside / "dup-b.qcow2")
    disks = [crafted.header_disk("vda", a), crafted.header_disk("vda", b)]
    return disks, crafted.domain_xml(name, uuid, crafted.disk_xml("vda", a) + crafted.disk_xml("vda", b)), {}


def _extra_disk(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = str(site.allowed / "extra.qcow2")
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path) + crafted.disk_xml("vdb", SHADOW, "raw"))
    return [crafted.header_disk("vda", path)], xml, {}


def _extra_readonly(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = str(site.allowed / "extra-ro.qcow2")
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path)
                             + crafted.disk_xml("vdb", SHADOW, "raw", extra="<readonly/>"))
    disks = [crafted.header_disk("vda", path), crafted.header_disk("vdb", SHADOW, "raw", False, why="read-only")]
    return disks, xml, {}


def _extra_block(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = str(site.allowed / "extra-block.qcow2")
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path) + crafted.disk_xml("vdb", SHADOW, "raw",
                                                                                          kind="block"))
    disks = [crafted.header_disk("vda", path),
             crafted.header_disk("vdb", SHADOW, "raw", False, why="a block disk (only file images are copied)")]
    return disks, xml, {}


def _backing_store(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = str(site.allowed / "backing.qcow2")
    store = f"<backingStore type='file'><format type='raw'/><source file='{SHADOW}'/></backingStore>"
    return [crafted.header_disk("vda", path)], crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path,
                                                                                              extra=store)), {}


def _backing_image(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    image = site.archives / "with-backing.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", SHADOW, "-F", "raw", str(image), "16M"],
                       check=True)
    disks, xml = crafted.good(name, uuid, str(site.allowed / "backing-image.qcow2"))
    return disks, xml, {"image": image}


def _disagree(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", str(site.outside / "victim.txt"), "raw"))
    return [crafted.header_disk("vda", str(site.allowed / "disagree.qcow2"))], xml, {}


def _name(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    disks, xml = crafted.good(name, uuid, str(site.allowed / "name.qcow2"))
    return disks, xml.replace(f"<name>{name}</name>", "<name>spk-crafted-victim</name>"), {}


def _doctype(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = str(site.allowed / "doctype.qcow2")
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path) + crafted.disk_xml("vdb", "&x;", "raw"))
    return [crafted.header_disk("vda", path)], f'<!DOCTYPE domain [<!ENTITY x "{SHADOW}">]>{xml}', {}


def _xml_last(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    disks, xml = crafted.good(name, uuid, str(site.allowed / "xml-last.qcow2"))
    return disks, xml, {"xml_last": True}


def _at(path: Callable[[Site], str]) -> Callable[[Site, str, str], tuple[list[dict[str, Any]], str, dict[str, Any]]]:
    def make(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        disks, xml = crafted.good(name, uuid, path(site))
        return disks, xml, {}
    return make


def _vmdk(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    path = str(site.allowed / "vmdk.vmdk")
    return [crafted.header_disk("vda", path, "vmdk")], crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path,
                                                                                                      "vmdk")), {}


def _precious(site: Site) -> str:
    path = site.allowed / "precious.db"
    if not path.exists():
        path.write_bytes(b"not an image\n" * 100)
        path.chmod(0o644)
    return str(path)


def _dest_symlink(site: Site) -> str:
    link = site.allowed / "dest-link.qcow2"
    if not link.is_symlink():
        link.symlink_to(site.outside / "victim.txt")
    return str(link)


def _victims_name(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The victim's name with another UUID (its own would be a restore over itself)."""
    disks, xml = crafted.good("spk-crafted-victim", uuid, str(site.allowed / "spk-crafted-victim.qcow2"))
    return disks, xml, {"name": "spk-crafted-victim"}


def _victims_uuid(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    disks, xml = crafted.good(name, site.victim.UUIDString(), str(site.allowed / "spk-crafted-victim.qcow2"))
    return disks, xml, {"uuid": site.victim.UUIDString()}


def _readonly_link(site: Site, name: str, uuid: str) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """A CD-ROM in an --allow-readonly folder, through a symlink to /etc/shadow."""
    ro = site.outside / "ro"
    ro.mkdir(exist_ok=True)
    if not (ro / "disc.iso").is_symlink():
        (ro / "disc.iso").symlink_to(SHADOW)
    path = str(site.allowed / "readonly-link.qcow2")
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path)
                             + crafted.disk_xml("sda", str(ro / "disc.iso"), "raw", "cdrom"))
    disks = [crafted.header_disk("vda", path), crafted.header_disk("sda", str(ro / "disc.iso"), "raw", False,
                                                                    "cdrom", "a cdrom")]
    return disks, xml, {}


CASES = {
    "absolute-path-outside": Case(plain("outside", lambda s: str(s.outside / "evil.qcow2")), 2,
                                  "is outside the folders a restore may write images to", None),
    "dotdot-in-source": Case(custom("dotdot", _dotdot), 2, "has a '..' component", "has a '..' component"),
    "symlinked-folder": Case(plain("symlinked", _symlinked_folder), 2, "is outside the folders", None),
    "relative-source": Case(custom("relative", _at(lambda s: "images/relative.qcow2")), 2,
                            "is not an absolute path", "is not an absolute path"),
    "nul-in-source": Case(custom("nul", _at(lambda s: f"{s.allowed}/nul\0.qcow2")), 2, "holds a NUL byte",
                          "holds a NUL byte"),
    "member-name-dotdot": Case(custom("member", _member), 2, "that is not an image its header lists",
                               "that is not an image its header lists"),
    "target-with-slash": Case(custom("slash", _slash_target), 2, "is not a plain device name",
                              "is not a plain device name"),
    "duplicate-targets": Case(custom("duplicate", _duplicate), 2, "lists the disk target vda twice",
                              "lists the disk target vda twice"),
    "vmdk-format": Case(custom("vmdk", _vmdk), 2, "neither raw nor qcow2", "neither raw nor qcow2"),
    "extra-disk-etc-shadow": Case(custom("extra", _extra_disk), 2, "are not those of the header (first difference: "
                                  f"vdb disk {SHADOW})", "are not those of the header"),
    "extra-readonly-disk-in-header": Case(custom("extra-ro", _extra_readonly), 2,
                                          f"vdb: {SHADOW} is a host file that is not restored from the archive", None),
    "extra-block-disk-in-header": Case(custom("extra-block", _extra_block), 2,
                                       f"vdb (writable, not restored from the archive) ({SHADOW})", None),
    "backing-store-in-xml": Case(custom("backing", _backing_store), 2, f"has a <backingStore> ({SHADOW})",
                                 f"has a <backingStore> ({SHADOW})"),
    "qcow2-image-with-backing-file": Case(custom("backing-image", _backing_image), 2,
                                          "vda: the image is a qcow2 image with a backing file",
                                          "vda: the image is a qcow2 image with a backing file"),
    "kernel-on-the-host": Case(plain("kernel", os_boot=f"<kernel>{SHADOW}</kernel>"), 2,
                               f"<os><kernel>: {SHADOW} is a host file", None),
    "initrd-on-the-host": Case(plain("initrd", os_boot=f"<initrd>{SHADOW}</initrd>"), 2,
                               f"<os><initrd>: {SHADOW} is a host file", None),
    "serial-file-on-the-host": Case(plain("serial", devices="<serial type='file'><source path='/etc/cron.d/spk'/>"
                                                            "<target port='0'/></serial>"), 2,
                                    "<serial type='file'>: /etc/cron.d/spk is a host file the domain would write to",
                                    None),
    "filesystem-passthrough": Case(plain("filesystem", devices="<filesystem type='mount' accessmode='passthrough'>"
                                                               "<source dir='/'/><target dir='host'/></filesystem>"),
                                   2, "<filesystem type='mount'> (/) uses the host", None),
    "qemu-commandline": Case(plain("qemu", namespaces=" xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
                                   top=f"<qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file={SHADOW}'/>"
                                       "</qemu:commandline>"), 2, "(another XML namespace)", None),
    "interface-script": Case(plain("script", devices="<interface type='ethernet'><script path='/tmp/spk-evil.sh'/>"
                                                     "</interface>"), 2,
                             "<interface type='ethernet'> (/tmp/spk-evil.sh) uses the host", None),
    "hostdev": Case(plain("hostdev", devices="<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
                                             "domain='0x0000' bus='0x00' slot='0x01' function='0x0'/></source></hostdev>"),
                    2, "<hostdev type='pci'> uses the host", None),
    "header-and-xml-disagree": Case(custom("disagree", _disagree), 2, "are not those of the header",
                                    "are not those of the header"),
    "xml-name-not-the-header": Case(custom("name", _name), 2, "domain.xml names the domain spk-crafted-victim",
                                    "domain.xml names the domain spk-crafted-victim"),
    "doctype-entity": Case(custom("doctype", _doctype), 2, "holds a DOCTYPE", "holds a DOCTYPE"),
    "image-before-xml": Case(custom("xml-last", _xml_last), 1, "comes before domain.xml", "comes before domain.xml"),
    "force-onto-unrelated-file": Case(plain("precious", _precious, options=("--force",)), 2,
                                      "exists and is not an image of the domain being replaced", None),
    "force-onto-another-domains-image": Case(plain("thief", lambda s: str(s.allowed / "spk-crafted-victim.qcow2"),
                                                   options=("--force",)), 2,
                                             "exists and is not an image of the domain being replaced", None),
    "symlink-at-destination": Case(plain("dest-link", _dest_symlink, options=("--force",)), 2,
                                   "is a symlink: a restore never writes through one", None),
    "another-domains-name": Case(custom("victims-name", _victims_name), 2,
                                 "a different domain named spk-crafted-victim exists", None),
    "another-domains-uuid": Case(custom("victims-uuid", _victims_uuid), 2,
                                 "the archive's UUID is that of the domain spk-crafted-victim", None),
    "allowed-readonly-through-symlink": Case(custom("readonly-link", _readonly_link,
                                                    lambda s: ["--allow-readonly", str(s.outside / "ro")]), 2,
                                             "is a host file that is not restored from the archive", None),
}


@pytest.mark.parametrize("label", list(CASES))
def test_a_crafted_archive_is_refused_and_changes_nothing(conn: libvirt.virConnect, site: Site, label: str) -> None:
    case = CASES[label]
    path, options = case.build(site)
    before, defined = listing(site.allowed, site.outside), domains(conn)
    shadow = os.stat(SHADOW)
    line = refuses("kvm-backup", case.code, "restore", str(path), *options, *URI)
    assert case.says in line, line
    assert listing(site.allowed, site.outside) == before  # nothing new, nothing changed, no temporary file
    assert domains(conn) == defined
    assert os.stat(SHADOW) == shadow
    if case.verify is None:
        assert "OK" in succeeds("kvm-backup", "verify", str(path))
    else:
        assert case.verify in refuses("kvm-backup", 1, "verify", str(path))
    assert listing(site.allowed, site.outside) == before


def test_a_well_formed_crafted_archive_restores_without_what_an_archive_may_not_bring(conn, site):
    """The positive control of the crafted ones: the same writer, nothing that lies. Its <seclabel
    type='none'> and <emulator> do not come along; --force replaces the domain over its own image."""
    label = "good"
    path = str(site.allowed / "good.qcow2")
    name, uuid = f"{PREFIX}{label}", crafted.new_uuid()
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path), devices="<emulator>/tmp/spk-qemu</emulator>",
                             top="<seclabel type='none'/>")
    archive = crafted.craft(site.archives / "good.kvmbak.tar", name, uuid, [crafted.header_disk("vda", path)], xml,
                            {"vda": site.image})
    assert "OK" in succeeds("kvm-backup", "verify", str(archive))
    out = succeeds("kvm-backup", "restore", str(archive), "--allow-dir", str(site.allowed), *URI)
    assert f"vda -> {path}" in out
    dom = conn.lookupByName(name)
    defined = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert defined.findtext("devices/emulator") != "/tmp/spk-qemu"
    assert all(s.get("type") != "none" for s in defined.iter("seclabel"))
    assert defined.find("devices/disk/source").get("file") == path
    subprocess.run(["qemu-img", "compare", "-q", path, str(site.image)], check=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "exists already" in refuses("kvm-backup", 2, "restore", str(archive), "--allow-dir", str(site.allowed), *URI)
    inode = os.stat(path).st_ino
    succeeds("kvm-backup", "restore", str(archive), "--force", *URI)  # its own image's folder is allowed now
    assert os.stat(path).st_ino != inode  # written beside, then renamed over its own image
    assert not [p for p in os.listdir(site.allowed) if "kvm-restore-partial" in p]


def test_a_cdrom_is_kept_when_allowed(conn, site):
    iso = site.outside / "disc.iso"
    iso.write_bytes(b"\x33" * 4096)
    label = "cdrom"
    name, uuid = f"{PREFIX}{label}", crafted.new_uuid()
    path = str(site.allowed / "cdrom.qcow2")
    xml = crafted.domain_xml(name, uuid, crafted.disk_xml("vda", path) + crafted.disk_xml("sda", str(iso), "raw", "cdrom"))
    disks = [crafted.header_disk("vda", path), crafted.header_disk("sda", str(iso), "raw", False, "cdrom", "a cdrom")]
    archive = crafted.craft(site.archives / "cdrom.kvmbak.tar", name, uuid, disks, xml, {"vda": site.image})
    before = listing(site.allowed)
    line = refuses("kvm-backup", 2, "restore", str(archive), "--allow-dir", str(site.allowed), *URI)
    assert f"<disk device='cdrom' type='file'> sda: {iso} is a host file" in line and "--allow-readonly" in line
    assert listing(site.allowed) == before
    succeeds("kvm-backup", "restore", str(archive), "--allow-dir", str(site.allowed), "--allow-readonly", str(iso), *URI)
    assert str(iso) in conn.lookupByName(name).XMLDesc(0)


def test_a_real_archive_restores_over_itself_and_beside_itself(conn, site, tmp_path):
    """kvm-backup create's own archive: the original's folder is where its images may go, and what the
    original uses (a CD-ROM, a serial log file) it may keep."""
    image = rig.make_qcow2(site.allowed / "spk-crafted-real.qcow2", "16M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 512k", str(image)], check=True, capture_output=True)
    iso, log = site.allowed / "real.iso", site.allowed / "real.log"
    iso.write_bytes(b"\x22" * 4096)
    xml = rig.noos_domain_xml("spk-crafted-real", image).replace(
        "</devices>", f"<disk type='file' device='cdrom'><source file='{iso}'/><target dev='sda' bus='sata'/>"
                      f"<readonly/></disk><serial type='file'><source path='{log}'/><target port='0'/></serial>"
                      "</devices>")
    dom = conn.defineXML(xml)
    dest = tmp_path / "dest"
    dest.mkdir()
    succeeds("kvm-backup", "create", "spk-crafted-real", "--dest", str(dest), "--state-dir", str(tmp_path / "state"),
             *URI)
    archive = next(dest.glob("*.kvmbak.tar.zst"))
    assert "OK" in succeeds("kvm-backup", "verify", str(archive))
    out = succeeds("kvm-backup", "restore", str(archive), "--name", "spk-crafted-real-copy", *URI)
    copy = site.allowed / "spk-crafted-real-copy-vda.qcow2"
    assert f"vda -> {copy}" in out
    subprocess.run(["qemu-img", "compare", "-q", str(copy), str(image)], check=True)
    assert str(iso) in conn.lookupByName("spk-crafted-real-copy").XMLDesc(0)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 512k", str(image)], check=True, capture_output=True)
    succeeds("kvm-backup", "restore", str(archive), "--force", *URI)
    subprocess.run(["qemu-img", "compare", "-q", str(copy), str(image)], check=True)  # back as it was at the backup
    assert dom.UUIDString() == conn.lookupByName("spk-crafted-real").UUIDString()


def test_a_storage_pool_s_folder_is_allowed_by_default(conn, site):
    pool_dir = site.archives.parent / "pool"
    pool_dir.mkdir()
    name, uuid = f"{PREFIX}pooled", crafted.new_uuid()
    disks, xml = crafted.good(name, uuid, str(pool_dir / "pooled.qcow2"))
    archive = crafted.craft(site.archives / "pooled.kvmbak.tar", name, uuid, disks, xml, {"vda": site.image})
    assert "is outside the folders" in refuses("kvm-backup", 2, "restore", str(archive), *URI)
    assert os.listdir(pool_dir) == []
    pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>{PREFIX}pool</name><target><path>{pool_dir}</path>"
                                     "</target></pool>", 0)
    try:
        succeeds("kvm-backup", "restore", str(archive), *URI)  # the pool need not even be active
        assert os.listdir(pool_dir) == ["pooled.qcow2"]
    finally:
        pool.undefine()
