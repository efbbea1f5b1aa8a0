"""backup.policy: what an archive may bring onto a host, as pure rules on headers, manifests, domain XML
and image headers; and reader.verify(trust=True) on archives crafted with the project's own writer."""

from __future__ import annotations

import re
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sensu_kvm.backup import catalog, policy, reader
from sensu_kvm.errors import Corrupt
from tests import crafted

UUID = "5f0c3a9e-1b2d-4c3e-8f4a-0123456789ab"
NAME = "web1"


@pytest.mark.parametrize(("path", "problem"), [
    ("/srv/img/web1.qcow2", ""),
    ("/", ""),
    ("", "is not a path"),
    (None, "is not a path"),
    (["/x"], "is not a path"),
    ("srv/img/web1.qcow2", "is not an absolute path"),
    ("./web1.qcow2", "is not an absolute path"),
    ("/srv/img/../../etc/shadow", "has a '..' component"),
    ("/..", "has a '..' component"),
    ("/srv/img/..", "has a '..' component"),
    ("/srv/img/web1\0.qcow2", "holds a NUL byte"),
    ("/srv/img/web1\n.qcow2", "holds control characters"),
    ("//etc/shadow", "is not in normal form"),
    ("/srv//img/web1.qcow2", "is not in normal form"),
    ("/srv/./img/web1.qcow2", "is not in normal form"),
    ("/srv/img/", "is not in normal form"),
])
def test_path_problems(path, problem):
    if problem:
        assert policy.path_problem(path).startswith(problem)
    else:
        assert policy.path_problem(path) == ""


@pytest.mark.parametrize(("name", "ok"), [("web1", True), ("web 1", True), ("", False), ("a/b", False),
                                          ("..", False), (".hidden", False), ("x\ny", False), (7, False)])
def test_domain_names(name, ok):
    assert (policy.name_problem(name) == "") is ok


def test_show_keeps_a_message_on_one_line():
    assert policy.show("a\nb\0c") == "a\\nb\\x00c"
    assert len(policy.show("x" * 1000)) == 203
    assert policy.show(None) == "None"


def header(**changes):
    disks = [crafted.header_disk("vda", "/srv/img/web1.qcow2"),
             crafted.header_disk("sda", "/srv/iso/debian.iso", "raw", False, "cdrom", "a cdrom")]
    base = {"format": catalog.FORMAT, "domain": NAME, "uuid": UUID, "created": 1714528800, "disks": disks}
    base.update(changes)
    return base


def disk(**changes):
    base = crafted.header_disk("vda", "/srv/img/web1.qcow2")
    base.update(changes)
    return base


@pytest.mark.parametrize(("changes", "says"), [
    ({"domain": "a/b"}, "domain name a/b holds a '/'"),
    ({"domain": None}, "is empty"),
    ({"uuid": "../../x"}, "is not a UUID"),
    ({"created": "yesterday"}, "is not a time"),
    ({"created": float("nan")}, "is not a time"),
    ({"created": 1e300}, "is not a time"),
    ({"created": True}, "is not a time"),
    ({"created": -1}, "is not a time"),
    ({"disks": "vda"}, "no list of disks"),
    ({"disks": ["vda"]}, "not an object"),
    ({"disks": [disk(target="vda/../x")]}, "not a plain device name"),
    ({"disks": [disk(target="VDA")]}, "not a plain device name"),
    ({"disks": [disk(target="")]}, "not a plain device name"),
    ({"disks": [disk(target=None)]}, "not a plain device name"),
    ({"disks": [disk(), disk(source="/srv/img/other.qcow2")]}, "lists the disk target vda twice"),
    ({"disks": [disk(copied="yes")]}, "wrong type"),
    ({"disks": [disk(source=5)]}, "wrong type"),
    ({"disks": [disk(source="/srv/img/../../etc/shadow")]}, "has a '..' component"),
    ({"disks": [disk(source="web1.qcow2")]}, "is not an absolute path"),
    ({"disks": [disk(source="/srv/img/.bashrc")]}, "names a hidden file"),
    ({"disks": [disk(member="disks/../../etc/vda.img")]}, "is not disks/vda.img"),
    ({"disks": [disk(member=None)]}, "is not disks/vda.img"),
    ({"disks": [disk(format="vmdk")]}, "neither raw nor qcow2"),
])
def test_headers_that_are_refused(changes, says):
    with pytest.raises(policy.Unsafe, match=None) as err:
        policy.check_header(header(**changes))
    assert says in str(err.value)


def test_a_plain_header_and_its_members():
    assert [d["target"] for d in policy.check_header(header())] == ["vda", "sda"]
    assert policy.copied_targets(header()) == ["vda"]
    assert policy.check_member("disks/vda.img", header()) == "vda"
    for name in ("disks/sda.img", "disks/../vda.img", "disks/vda.img/../../x", "vda.img", "kvm-backup.json"):
        with pytest.raises(policy.Unsafe, match="not an image its header lists"):
            policy.check_member(name, header())
    with pytest.raises(policy.Unsafe, match="twice"):
        policy.check_member("disks/vda.img", header(), ["disks/vda.img"])


def manifest(*files):
    return {"header": header(), "files": list(files)}


XML_FILE = {"member": "domain.xml"}
VDA_FILE = {"member": "disks/vda.img", "target": "vda", "source": "/srv/img/web1.qcow2", "format": "qcow2"}


def test_manifests():
    policy.check_manifest(header(), manifest(XML_FILE, VDA_FILE))
    for bad, says in [(manifest(XML_FILE), "are not the header's"),
                      (manifest(XML_FILE, VDA_FILE, {"member": "disks/sda.img"}), "are not the header's"),
                      (manifest(XML_FILE, {**VDA_FILE, "source": "/etc/shadow"}), "source /etc/shadow"),
                      (manifest(XML_FILE, {**VDA_FILE, "target": "vdb"}), "target vdb"),
                      ({"files": "x"}, "no list of files")]:
        with pytest.raises(policy.Unsafe) as err:
            policy.check_manifest(header(), bad)
        assert says in str(err.value)


def qcow2_head(version=3, backing=0, incompatible=0):
    head = b"QFI\xfb" + struct.pack(">IQI", version, backing, 0) + b"\0" * 52
    head += struct.pack(">Q", incompatible) + b"\0" * 24
    return head + b"\0" * (512 - len(head))


def test_image_headers():
    assert policy.image_problem(b"\0" * 512) == ""
    assert policy.image_problem(qcow2_head()) == ""
    assert policy.image_problem(qcow2_head(2)) == ""
    assert "backing file" in policy.image_problem(qcow2_head(backing=0x200))
    assert "external data file" in policy.image_problem(qcow2_head(incompatible=0x4))
    assert "truncated" in policy.image_problem(b"QFI\xfb\0\0\0\3")


def test_image_header_of_a_real_qcow2_with_a_backing_file(tmp_path):
    image = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(image), "1M"],
                   check=True)
    assert "backing file" in policy.image_problem(image.read_bytes()[:512])
    plain = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(plain), "1M"], check=True)
    assert policy.image_problem(plain.read_bytes()[:512]) == ""


def test_images_go_only_to_allowed_folders_resolved(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    (allowed / "sub").mkdir()
    ok = [str(allowed)]
    assert policy.place({"vda": f"{allowed}/a.qcow2", "vdb": f"{allowed}/sub/b.img"}, ok) == {
        "vda": f"{allowed}/a.qcow2", "vdb": f"{allowed}/sub/b.img"}
    for paths, says in [({"vda": f"{outside}/a.qcow2"}, "is outside the folders"),
                        ({"vda": f"{allowed}/link/a.qcow2"}, "is outside the folders"),
                        ({"vda": f"{allowed}/../outside/a.qcow2"}, "has a '..' component"),
                        ({"vda": f"{allowed}x/a.qcow2"}, "is outside the folders"),
                        ({"vda": f"{allowed}/a.qcow2", "vdb": f"{allowed}/a.qcow2"}, "the same path")]:
        with pytest.raises(policy.Unsafe) as err:
            policy.place(paths, ok)
        assert says in str(err.value)
    with pytest.raises(policy.Unsafe, match="none: give --image-dir or --allow-dir"):
        policy.place({"vda": f"{allowed}/a.qcow2"}, [])
    assert policy.place({"vda": f"{allowed}/link/a.qcow2"}, [str(outside)]) == {"vda": f"{outside}/a.qcow2"}


# --- the domain XML --------------------------------------------------------------------------------

VDA = crafted.disk_xml("vda", "/srv/img/web1.qcow2")
SDA = crafted.disk_xml("sda", "/srv/iso/debian.iso", "raw", "cdrom")


def xml(devices="", disks=VDA + SDA, **kw):
    return crafted.domain_xml(NAME, UUID, disks, devices=devices, **kw)


def analysed(text, head=None):
    """check_xml, sanitize and references as reader.check_xml runs them."""
    return reader.check_xml(head or header(), text)


def test_the_disks_and_names_of_the_xml_are_the_header_s():
    _root, refs = analysed(xml())
    assert [(r.kind, r.path) for r in refs] == [("readonly", "/srv/iso/debian.iso")]
    for text, says in [
        (xml().replace(f"<name>{NAME}</name>", "<name>db1</name>"), "names the domain db1"),
        (xml().replace(UUID, "11111111-2222-3333-4444-555555555555"), "gives the UUID"),
        (xml().replace("type='qemu'", "type='lxc'", 1), "not qemu or kvm"),
        (xml(disks=VDA + SDA + crafted.disk_xml("vdb", "/etc/shadow", "raw")), "first difference: vdb disk /etc/shadow"),
        (xml(disks=VDA), "first difference: sda cdrom"),
        (xml(disks=SDA + VDA), "are not those of the header"),
        (xml(disks=crafted.disk_xml("vda", "/etc/shadow") + SDA), "first difference: vda disk /etc/shadow"),
        (xml(disks=crafted.disk_xml("vda", "/srv/img/web1.qcow2", "raw") + SDA), "are not those of the header"),
        (xml(disks=crafted.disk_xml("vda", "/srv/img/web1.qcow2", extra="<readonly/>") + SDA), "are not those"),
        ("<!DOCTYPE domain [<!ENTITY x '/etc/shadow'>]>" + xml(), "DOCTYPE"),
        ("<domain", "not well-formed"),
        (xml(devices="<x>" * 40 + "</x>" * 40), "nests elements more than 32 deep"),
        (xml(disks=VDA.replace("<target", "<source file='/etc/shadow'/><target") + SDA), "more than one <source>"),
        ("<network/>", "not a <domain>"),
    ]:
        with pytest.raises(policy.Unsafe) as err:
            analysed(text)
        assert says in str(err.value), (text, str(err.value))


@pytest.mark.parametrize(("extra", "says"), [
    ("<backingStore type='file'><format type='raw'/><source file='/etc/shadow'/></backingStore>",
     "has a <backingStore> (/etc/shadow)"),
    ("<backingStore type='file'><source file='relative'/></backingStore>", "has a <backingStore> (relative)"),
    ("<mirror type='file' file='/etc/shadow' job='copy'/>", "has a <mirror> (/etc/shadow)"),
])
def test_a_restored_disk_brings_nothing_but_its_image(extra, says):
    with pytest.raises(policy.Unsafe) as err:
        analysed(xml(disks=crafted.disk_xml("vda", "/srv/img/web1.qcow2", extra=extra) + SDA))
    assert says in str(err.value)


def test_a_restored_disk_s_source_names_only_its_image():
    text = xml(disks=("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source "
                      "file='/srv/img/web1.qcow2'><dataStore type='file'><source file='/etc/shadow'/></dataStore>"
                      "</source><target dev='vda' bus='virtio'/></disk>") + SDA)
    with pytest.raises(policy.Unsafe, match="has a <dataStore> \\(/etc/shadow\\)"):
        analysed(text)
    # an empty <backingStore/> says there is no backing file: accepted, and dropped
    root, _refs = analysed(xml(disks=crafted.disk_xml("vda", "/srv/img/web1.qcow2", extra="<backingStore/>") + SDA))
    assert root.find("devices/disk/backingStore") is None


def test_what_a_restore_never_keeps():
    text = xml(devices="<emulator>/tmp/evil-qemu</emulator><console type='pty'><source path='/dev/pts/9'/></console>",
               top="<seclabel type='none'/>",
               os_boot="<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
                       "<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/etc/shadow</nvram>",
               disks=("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source "
                      "file='/srv/img/web1.qcow2'><seclabel model='dac' relabel='no'/></source>"
                      "<target dev='vda' bus='virtio'/></disk>") + SDA)
    root, refs = analysed(text)
    out = ET.tostring(root, encoding="unicode")
    for gone in ("seclabel", "evil-qemu", "/dev/pts/9", "/etc/shadow"):
        assert gone not in out
    assert root.find("os/nvram").get("template") == "/usr/share/OVMF/OVMF_VARS.fd"
    assert {(r.kind, r.what, r.path) for r in refs} == {
        ("readonly", "<os><loader>", "/usr/share/OVMF/OVMF_CODE.fd"),
        ("readonly", "<os><nvram template>", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("readonly", "<disk device='cdrom' type='file'> sda", "/srv/iso/debian.iso")}


QUIET = [
    "<console type='pty'><target type='serial' port='0'/></console>",
    "<serial type='pty'><target port='0'/></serial>",
    "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
    "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
    "<interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><model type='virtio'/>"
    "</interface>",
    "<interface type='bridge'><source bridge='br0'/></interface>",
    "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>",
    "<interface type='ethernet'><target dev='tap7' managed='no'/></interface>",
    "<graphics type='vnc' port='-1' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>",
    "<graphics type='spice' autoport='yes'/>",
    "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
    "<rng model='virtio'><backend model='builtin'/></rng>",
    "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>",
    "<memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target></memory>",
    "<video><model type='virtio'/></video>",
    "<input type='tablet' bus='usb'/>",
    "<controller type='virtio-serial' index='0'/>",
    "<watchdog model='i6300esb' action='reset'/>",
    "<redirdev bus='usb' type='spicevmc'/>",
    "<smartcard mode='passthrough' type='spicevmc'/>",
    "<audio id='1' type='none'/>",
    "<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>",
]


@pytest.mark.parametrize("device", QUIET)
def test_devices_that_use_nothing_on_the_host(device):
    head = header()
    if "sdb" in device:
        head["disks"].append(crafted.header_disk("sdb", "", "raw", False, "cdrom", "a cdrom"))
    _root, refs = analysed(xml(devices=device), head)
    assert [r.path for r in refs] == ["/srv/iso/debian.iso"]


HOST = [
    ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='0' slot='1' function='0'/>"
     "</source></hostdev>", "<hostdev type='pci'>", ""),
    ("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>",
     "<hostdev type='usb'>", ""),
    ("<filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='host'/></filesystem>",
     "<filesystem type='mount'>", "/"),
    ("<filesystem type='mount'><driver type='virtiofs'/><binary path='/tmp/evil'/><source dir='/srv'/>"
     "<target dir='t'/></filesystem>", "<filesystem type='mount'>", "/tmp/evil"),
    ("<shmem name='../../etc/x'><model type='ivshmem-plain'/></shmem>", "<shmem>", ""),
    ("<serial type='tcp'><source mode='bind' host='0.0.0.0' service='2445'/><target port='0'/></serial>",
     "<serial type='tcp'>", ""),
    ("<serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>", "<serial type='dev'>", "/dev/ttyS0"),
    ("<channel type='unix'><source mode='bind' path='/etc/x.sock'/><target type='virtio' name='a'/></channel>",
     "<channel type='unix'>", "/etc/x.sock"),
    ("<channel type='pipe'><source path='/tmp/p'/><target type='virtio' name='a'/></channel>", "<channel type='pipe'>",
     "/tmp/p"),
    ("<console type='stdio'/>", "<console type='stdio'>", ""),
    ("<interface type='ethernet'><script path='/tmp/evil.sh'/></interface>", "<interface type='ethernet'>",
     "/tmp/evil.sh"),
    ("<interface type='ethernet'><script path='evil.sh'/></interface>", "<interface type='ethernet'>", "evil.sh"),
    ("<interface type='bridge'><source bridge='br0'/><downscript path='x'/></interface>", "<interface type='bridge'>",
     "x"),
    ("<interface type='vhostuser'><source type='unix' path='/tmp/vu' mode='client'/></interface>",
     "<interface type='vhostuser'>", "/tmp/vu"),
    ("<interface type='hostdev'><source><address type='pci' domain='0' bus='0' slot='1' function='0'/></source>"
     "</interface>", "<interface type='hostdev'>", ""),
    ("<interface type='server'><source address='0.0.0.0' port='5558'/></interface>", "<interface type='server'>", ""),
    ("<interface type='direct'><source dev='eth0' mode='passthrough'/></interface>", "<interface type='direct'>", ""),
    ("<interface type='network'><source network='default'/><backend tap='/dev/evil'/></interface>",
     "<interface type='network'>", "/dev/evil"),
    ("<interface type='network'><source network='default'/><rom file='/etc/shadow'/></interface>",
     "<interface type='network'>", "/etc/shadow"),
    ("<graphics type='vnc' socket='/etc/x'/>", "<graphics type='vnc'>", "/etc/x"),
    ("<graphics type='spice'><gl enable='yes' rendernode='/dev/dri/renderD128'/></graphics>", "<graphics type='spice'>",
     "/dev/dri/renderD128"),
    ("<graphics type='sdl' display=':0'/>", "<graphics type='sdl'>", ""),
    ("<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>", "<rng><backend model='random'>",
     "/dev/sda"),
    ("<rng model='virtio'><backend model='egd' type='tcp'><source mode='connect' host='1.2.3.4' service='7'/>"
     "</backend></rng>", "<rng><backend model='egd'>", ""),
    ("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>", "<tpm>",
     "/dev/tpm0"),
    ("<memory model='nvdimm'><source><path>/etc/shadow</path></source><target><size unit='MiB'>1</size></target>"
     "</memory>", "<memory>", "/etc/shadow"),
    ("<audio id='1' type='file' path='/etc/cron.d/x'/>", "<audio type='file'>", "/etc/cron.d/x"),
    ("<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/></input>",
     "<input type='passthrough'>", "/dev/input/event0"),
    ("<smartcard mode='host'/>", "<smartcard>", ""),
    ("<smartcard mode='host-certificates'><certificate>a</certificate><database>/etc/pki/nssdb</database></smartcard>",
     "<smartcard>", "/etc/pki/nssdb"),
    ("<redirdev bus='usb' type='tcp'><source mode='connect' host='1.2.3.4' service='4000'/></redirdev>",
     "<redirdev type='tcp'>", ""),
    ("<lease><lockspace>s</lockspace><key>k</key><target path='/etc/shadow'/></lease>", "<lease>", "/etc/shadow"),
    ("<video><driver name='vhostuser'/><model type='virtio'/><source type='unix' path='/tmp/v'/></video>", "<video>",
     "/tmp/v"),
    ("<panic model='isa' file='relative'/>", "<panic>", "relative"),
    ("<newdevice path='/etc/shadow'/>", "<newdevice>", "/etc/shadow"),
]


@pytest.mark.parametrize(("device", "what", "path"), HOST)
def test_devices_that_use_the_host(device, what, path):
    _root, refs = analysed(xml(devices=device))
    found = [r for r in refs if r.path != "/srv/iso/debian.iso"]
    assert [(r.kind, r.what, r.path) for r in found] == [("host", what, path)]


def test_a_serial_log_file_is_a_log_reference():
    _root, refs = analysed(xml(devices="<serial type='file'><source path='/var/log/x.log'/><target port='0'/></serial>"))
    assert [(r.kind, r.path) for r in refs][1:] == [("log", "/var/log/x.log")]


def test_a_log_element_is_a_log_reference_of_its_own():
    # kept only when this host's definition has the very same device (check_host), like a file device
    _root, refs = analysed(xml(devices="<serial type='file'><source path='/var/log/x.log'/><log file='/etc/shadow'/>"
                                       "<target port='0'/></serial><serial type='pty'><log file='/var/log/y.log'/>"
                                       "<target port='1'/></serial>"))
    assert [(r.kind, r.path) for r in refs][1:] == [("log", "/var/log/x.log"), ("log", "/etc/shadow"),
                                                    ("log", "/var/log/y.log")]


@pytest.mark.parametrize(("top", "what", "kind", "path"), [
    ("<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-x'/>"
     "</qemu:commandline>", "<{http://libvirt.org/schemas/domain/qemu/1.0}commandline> (another XML namespace)",
     "host", ""),
    ("<blkiotune><device><path>/dev/sda</path><weight>500</weight></device></blkiotune>", "<blkiotune>", "host",
     "/dev/sda"),
    ("<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>", "<sysinfo><entry file>",
     "readonly", "/etc/shadow"),
    ("<sysinfo type='smbios'><system><entry name='serial'>/not/a/file</entry></system></sysinfo>", None, None, None),
    ("<resource><partition>/machine</partition></resource>", None, None, None),
    ("<metadata><app:x xmlns:app='urn:x' path='/etc/shadow'/></metadata>", None, None, None),
    ("<description>/etc/shadow</description>", None, None, None),
    ("<launchSecurity type='sev'><policy>0x0003</policy><dhCert>/AAAbase64/=</dhCert></launchSecurity>", None, None,
     None),
    ("<pstore backend='acpi-erst'><path>/etc/shadow</path></pstore>", "<pstore>", "host", "/etc/shadow"),
])
def test_top_level_elements(top, what, kind, path):
    _root, refs = analysed(xml(top=top))
    found = [(r.kind, r.what, r.path) for r in refs if r.path != "/srv/iso/debian.iso"]
    assert found == ([] if what is None else [(kind, what, path)])


@pytest.mark.parametrize(("os_boot", "kind", "what", "path"), [
    ("<kernel>/boot/vmlinuz</kernel>", "readonly", "<os><kernel>", "/boot/vmlinuz"),
    ("<initrd>/boot/initrd</initrd>", "readonly", "<os><initrd>", "/boot/initrd"),
    ("<dtb>/boot/x.dtb</dtb>", "readonly", "<os><dtb>", "/boot/x.dtb"),
    ("<loader type='pflash'>/var/lib/x.fd</loader>", "host", "<os><loader> (writable)", "/var/lib/x.fd"),
    ("<loader type='rom'>/usr/share/seabios/bios.bin</loader>", "readonly", "<os><loader>",
     "/usr/share/seabios/bios.bin"),
    ("<acpi><table type='slic'>/etc/shadow</table></acpi>", "readonly", "<os><acpi><table>", "/etc/shadow"),
    ("<init>/sbin/init</init>", "host", "<os><init>", "/sbin/init"),
    ("<cmdline>root=/dev/vda console=ttyS0</cmdline>", None, None, None),
])
def test_boot_elements(os_boot, kind, what, path):
    _root, refs = analysed(xml(os_boot=os_boot))
    found = [(r.kind, r.what, r.path) for r in refs if r.path != "/srv/iso/debian.iso"]
    assert found == ([] if kind is None else [(kind, what, path)])


@pytest.mark.parametrize("os_boot", ["<kernel>vmlinuz</kernel>", "<initrd>/boot/../etc/shadow</initrd>",
                                     "<loader readonly='yes'>//etc/x</loader>"])
def test_read_only_paths_must_be_plain_even_for_verify(os_boot):
    with pytest.raises(policy.Unsafe):
        analysed(xml(os_boot=os_boot))


def test_disks_that_are_not_restored():
    head = header()
    head["disks"] += [crafted.header_disk("vdb", "/dev/vg/web1", "raw", False, why="a block disk"),
                      crafted.header_disk("vdc", "/srv/img/ro.img", "raw", False, why="read-only"),
                      crafted.header_disk("vdd", "/srv/img/shared.img", "raw", False, why="shareable"),
                      crafted.header_disk("vde", "pool/img", "raw", False, why="a network disk")]
    disks = (VDA + SDA + crafted.disk_xml("vdb", "/dev/vg/web1", "raw", kind="block")
             + crafted.disk_xml("vdc", "/srv/img/ro.img", "raw", extra="<readonly/>")
             + crafted.disk_xml("vdd", "/srv/img/shared.img", "raw", extra="<shareable/>")
             + "<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' "
               "name='pool/img'><host name='10.0.0.1'/></source><auth username='admin'><secret type='ceph' "
               "usage='x'/></auth><target dev='vde' bus='virtio'/></disk>")
    _root, refs = analysed(xml(disks=disks), head)
    assert [(r.kind, r.what.split("> ")[-1], r.path) for r in refs] == [
        ("readonly", "sda", "/srv/iso/debian.iso"),
        ("host", "vdb (writable, not restored from the archive)", "/dev/vg/web1"),
        ("readonly", "vdc", "/srv/img/ro.img"),
        ("host", "vdd (writable, not restored from the archive)", "/srv/img/shared.img"),
        ("host", "vde (writable, not restored from the archive)", "pool/img")]


# --- what the host allows --------------------------------------------------------------------------


def refs_of(text, head=None):
    return analysed(text, head)[1]


def test_read_only_files_need_an_allowance_or_the_host_s_own_definition(tmp_path):
    iso = tmp_path / "iso"
    iso.mkdir()
    (iso / "debian.iso").write_bytes(b"x")
    (iso / "evil.iso").symlink_to("/etc/shadow")
    text = xml(disks=VDA + crafted.disk_xml("sda", str(iso / "debian.iso"), "raw", "cdrom"))
    head = header()
    head["disks"][1]["source"] = str(iso / "debian.iso")
    refs = refs_of(text, head)
    with pytest.raises(policy.Unsafe, match="allow it with --allow-readonly PATH"):
        policy.check_host(refs, [], policy.Vouched())
    policy.check_host(refs, [str(iso)], policy.Vouched())
    policy.check_host(refs, [str(iso / "debian.iso")], policy.Vouched())
    with pytest.raises(policy.Unsafe):
        policy.check_host(refs, [str(iso / "debian")], policy.Vouched())
    policy.check_host(refs, [], policy.Vouched(paths=frozenset({str(iso / "debian.iso")})))
    evil = text.replace("debian.iso", "evil.iso")
    head["disks"][1]["source"] = str(iso / "evil.iso")
    with pytest.raises(policy.Unsafe, match=re.escape("evil.iso is a host file")):
        policy.check_host(refs_of(evil, head), [str(iso)], policy.Vouched())


def test_what_this_host_s_own_definitions_vouch_for():
    serial = "<serial type='file'><source path='/var/log/web1.log'/><target port='0'/></serial>"
    hostdev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='0' slot='1' "
               "function='0'/></source></hostdev>")
    text = xml(devices=serial + hostdev, os_boot="<kernel>/boot/vmlinuz</kernel>")
    refs = refs_of(text)
    host = policy.parse(text.replace("<seclabel", "<x"))
    copy_of = policy.vouched_by([(host, ["vda"])], [])
    # a copy beside the original keeps its read-only files and its log file, not its PCI device
    with pytest.raises(policy.Unsafe, match="<hostdev type='pci'> uses the host"):
        policy.check_host(refs, [], copy_of)
    policy.check_host([r for r in refs if r.kind != "host"], [], copy_of)
    # a restore over its own definition keeps all it had
    policy.check_host(refs, [], policy.vouched_by([(host, ["vda"])], [(host, ["vda"])]))
    # but not a log file elsewhere, nor another PCI device
    other = policy.parse(text.replace("web1.log", "other.log").replace("slot='1'", "slot='2'"))
    vouched = policy.vouched_by([(other, ["vda"])], [(other, ["vda"])])
    with pytest.raises(policy.Unsafe, match=re.escape("/var/log/web1.log is a host file the domain would write to")):
        policy.check_host([r for r in refs if r.kind == "log"], [], vouched)
    with pytest.raises(policy.Unsafe, match="hostdev"):
        policy.check_host([r for r in refs if r.kind == "host"], [], vouched)
    # the host's writable image is no read-only allowance for the archive's CD-ROM
    steal = policy.vouched_by([(policy.parse(xml()), ["vda"])], [])
    assert "/srv/img/web1.qcow2" not in steal.paths and "/srv/iso/debian.iso" in steal.paths


# --- verify(trust=True) on crafted archives --------------------------------------------------------


def image(tmp_path: Path) -> Path:
    path = tmp_path / "vda.img"
    with path.open("wb") as f:
        f.truncate(1 << 20)
        f.write(b"boot" * 128)
    return path


def test_verify_trusts_a_well_formed_archive_and_refuses_crafted_ones(tmp_path):
    disks, text = crafted.good(NAME, UUID, "/srv/img/web1.qcow2")
    good = crafted.craft(tmp_path / "good.tar", NAME, UUID, disks, text, {"vda": image(tmp_path)})
    reader.verify(str(good), trust=True)
    cases = {
        "member": ({"members": {"vda": "disks/../vda.img"}}, "that is not an image its header lists"),
        "xml-last": ({"xml_last": True}, "comes before domain.xml"),
    }
    for label, (kw, says) in cases.items():
        bad = crafted.craft(tmp_path / f"{label}.tar", NAME, UUID, disks, text, {"vda": image(tmp_path)}, **kw)
        reader.verify(str(bad))  # every checksum matches: only the rules find it
        with pytest.raises(Corrupt) as err:
            reader.verify(str(bad), trust=True)
        assert says in str(err.value)
    two = crafted.craft(tmp_path / "two.tar", NAME, UUID, disks, text, {"vda": image(tmp_path), "vdb": image(tmp_path)})
    with pytest.raises(Corrupt, match=re.escape("disks/vdb.img that is not an image its header lists")):
        reader.verify(str(two), trust=True)


def test_beside_gives_the_copy_files_sockets_and_ports_of_its_own():
    root, _refs = analysed(xml(devices=(
        "<serial type='file'><source path='/etc/passwd'/><log file='/etc/shadow'/><target port='0'/></serial>"
        "<serial type='unix'><source mode='bind' path='/run/x.sock'/><target port='1'/></serial>"
        "<console type='file'><source path='/etc/passwd'/><target type='serial' port='0'/></console>"
        "<channel type='unix'><source mode='bind' path='/var/lib/x/agent'/>"
        "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        "<graphics type='vnc' port='5901' autoport='no' websocket='5701'><listen type='address' address='::1'/>"
        "</graphics><interface type='network'><source network='default'/><target dev='web1-nic'/></interface>"
        "<vsock model='virtio'><cid auto='no' address='7'/></vsock>")))
    chosen = policy.beside(root, "copy", "/srv/images")
    assert chosen == ["/srv/images/copy-serial0.log", "/srv/images/copy-serial0-log.log",
                      "/srv/images/copy-serial1.sock"]
    assert [d.find("source").get("path") for d in root.find("devices") if d.tag in policy.CHARDEV_TAGS] == [
        "/srv/images/copy-serial0.log", "/srv/images/copy-serial1.sock", "/srv/images/copy-serial0.log", None]
    graphics = root.find("devices/graphics")
    assert graphics is not None and graphics.attrib == {"type": "vnc", "autoport": "yes"}
    assert graphics.find("listen").get("address") == "::1"
    assert root.find("devices/interface/target") is None  # libvirt names the tap device
    assert [c.attrib for c in root.iterfind("devices/vsock/cid")] == [{"auto": "yes"}]
