"""kvm-backup restore --name beside the running original, on real libvirtd + QEMU (TCG): a guest with a
serial file log, a pty serial with a <log file>, a console, a virtio unix channel with a fixed socket, VNC on
a fixed port and OVMF with its NVRAM; every path and port of the copy's live XML differs from the
original's (but the read-only firmware, shared on purpose), and both run at once. Domains are spk-bes-*."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from tests.conftest import refuses, succeeds
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-bes-"
URI = ["-u", rig.URI]
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
VNC_PORT = "21650"  # this suite's port range: 21600-21699

conn, images = own_fixtures(PREFIX)


def guest_xml(name: str, disk: Path, images: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <loader readonly='yes' type='pflash'>{OVMF_CODE}</loader><nvram template='{OVMF_VARS}'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='{images}/{name}.serial0.log'/><target port='0'/></serial>
    <serial type='pty'><log file='{images}/{name}.serial1.log'/><target port='1'/></serial>
    <console type='file'><source path='{images}/{name}.serial0.log'/><target type='serial' port='0'/></console>
    <channel type='unix'><source mode='bind' path='{images}/{name}.agent.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' port='{VNC_PORT}' autoport='no'><listen type='address' address='127.0.0.1'/></graphics>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


READ_ONLY = {OVMF_CODE, OVMF_VARS}  # the firmware and the NVRAM template: shared read-only by design


def host_state(dom: libvirt.virDomain) -> set[str]:
    """Every host path and port a domain's live XML names, but its emulator, read-only firmware and cgroup
    partition (/machine, not a file)."""
    root = ET.fromstring(dom.XMLDesc(0))
    found = set()
    for el in root.iter():
        if el.tag in ("emulator", "partition"):
            continue
        for attr, value in el.attrib.items():
            if value.startswith("/") or (el.tag == "graphics" and attr in ("port", "tlsPort", "websocket")):
                found.add(f"{el.tag}@{attr}={value}" if not value.startswith("/") else value)
        if (el.text or "").strip().startswith("/"):
            found.add(el.text.strip())  # type: ignore[union-attr]
    return found - READ_ONLY


def test_restore_beside_the_running_original_shares_no_file_socket_or_port(conn, images, tmp_path):
    assert os.path.exists(OVMF_CODE), "ovmf is installed by tests/rig/host-setup.sh"
    disk = rig.make_qcow2(images / "spk-bes-orig.qcow2", "16M")
    orig = conn.defineXML(guest_xml("spk-bes-orig", disk, images))
    orig.create()
    dest = tmp_path / "dest"
    dest.mkdir()
    out = json.loads(succeeds("kvm-backup", "create", "spk-bes-orig", "--dest", str(dest), "--state-dir",
                              str(tmp_path / "state"), "--json", *URI))
    archive = out["backups"][0]["archive"]
    assert out["backups"][0]["engine"] == "api"  # the default engine here: the copy is rebuilt from kvm-backup/2
    # the reproduction: failed with "Cannot open log file '...': Device or resource busy"
    succeeds("kvm-backup", "restore", archive, "--name", "spk-bes-copy", "--start", *URI)
    copy = conn.lookupByName("spk-bes-copy")
    assert orig.state()[0] == copy.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    mine, theirs = host_state(orig), host_state(copy)
    assert f"{images}/spk-bes-orig.serial0.log" in mine and f"graphics@port={VNC_PORT}" in mine  # the test sees them
    assert mine & theirs == set(), sorted(mine & theirs)
    root = ET.fromstring(copy.XMLDesc(0))
    nvram = (root.findtext("os/nvram") or "").strip()
    assert nvram and nvram != (ET.fromstring(orig.XMLDesc(0)).findtext("os/nvram") or "").strip()
    assert os.path.isfile(nvram) and "spk-bes-copy" in nvram  # libvirt's own, fresh from the template
    assert root.find("devices/graphics").get("autoport") == "yes"
    assert (images / "spk-bes-copy-serial0.log").exists() and (images / "spk-bes-copy-serial1.log").exists()
    channel = root.find("devices/channel/source")
    assert channel is not None and "/channel/target/" in channel.get("path", "")  # libvirt's own socket
    for dom in (copy, orig):
        dom.destroy()
    # a log path the restore chose that is a symlink (planted to make it write elsewhere): refused
    planted = tmp_path / "planted"
    (images / "spk-bes-copy2-serial0.log").symlink_to(planted)
    line = refuses("kvm-backup", 2, "restore", archive, "--name", "spk-bes-copy2", *URI)
    assert "is a symlink" in line and not planted.exists() and not (images / "spk-bes-copy2-vda.qcow2").exists()
    assert "spk-bes-copy2" not in [d.name() for d in conn.listAllDomains()]
    # once more over the (shut off) copy: its logs are reused, its NVRAM replaced by a fresh one
    succeeds("kvm-backup", "restore", archive, "--name", "spk-bes-copy", "--force", *URI)
    copy = conn.lookupByName("spk-bes-copy")
    assert not copy.isActive() and not os.path.exists(nvram)  # made again at the next start
    copy.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
