"""kvm-snapshot checks before it acts (real libvirtd + QEMU): a revert that libvirt would fail, leaving
the guest shut off (failed), is refused with the guest exactly as it was; and the advice of every such
refusal, followed to the letter, works. Domains are spk-ssafe-* (this file's own prefix)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import libvirt

from sensu_kvm.qcow2 import image_snapshots
from tests.conftest import refuses, succeeds
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-ssafe-"
URI = ["-u", rig.URI]


def ok(*args: str) -> str:
    return succeeds("kvm-snapshot", *args, *URI)


def refused(*args: str) -> str:
    """Refused: exit 1 (the request is valid, the host cannot do it safely), one line, stdout empty."""
    return refuses("kvm-snapshot", 1, *args, *URI)


def names(dom: libvirt.virDomain) -> list[str]:
    return sorted(s.getName() for s in dom.listAllSnapshots(0))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def virsh(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    result = subprocess.run(["virsh", "-c", rig.URI, *args], capture_output=True, text=True, timeout=60, env=env,
                            check=False)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def qemu_img_tags(image: Path) -> list[tuple[str, str, int]]:
    """(id, name, vm state size) per tag, as qemu-img reads them without taking QEMU's lock (-U)."""
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(image)], capture_output=True,
                                     text=True, check=True).stdout)
    return [(s["id"], s["name"], s["vm-state-size"]) for s in info.get("snapshots", [])]


def follow(line: str) -> list[str]:
    """Run the commands a refusal advises, in order, exactly as quoted; their outputs."""
    commands = re.findall(r"'((?:virsh|kvm-snapshot) [^']*)'", line)
    assert commands, line
    outputs = []
    for command in commands:
        words = command.split()
        if words[0] == "virsh":
            outputs.append(virsh(*words[1:]))
        else:
            outputs.append(ok(*words[1:]))
    return outputs


class Frozen:
    """What must not change when a revert is refused: the run state and QEMU process (the domain id),
    the snapshots, and every byte of the image."""

    def __init__(self, dom: libvirt.virDomain, image: Path) -> None:
        self.dom, self.image = dom, image
        self.state = dom.state()
        self.id = dom.ID()
        self.names = names(dom)
        self.digest = digest(image)

    def unchanged(self) -> None:
        assert self.dom.state() == self.state
        assert self.dom.ID() == self.id
        assert names(self.dom) == self.names
        assert digest(self.image) == self.digest


conn, images = own_fixtures(PREFIX)


def define(conn: libvirt.virConnect, images: Path, name: str, start: bool) -> tuple[libvirt.virDomain, Path]:
    disk = rig.make_qcow2(images / f"{name}.qcow2")
    dom = conn.defineXML(rig.noos_domain_xml(name, disk))
    if start:
        dom.create()
    return dom, disk


def rename_with_virsh(images: Path, domain: str, old: str, new: str) -> None:
    """What the audit did: virsh snapshot-edit --rename, with an editor that changes the name."""
    editor = images / "rename-editor"
    editor.write_text(f"#!/bin/sh\nsed -i 's#<name>{old}</name>#<name>{new}</name>#' \"$1\"\n")
    editor.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    result = subprocess.run(["virsh", "-c", rig.URI, "snapshot-edit", domain, old, "--rename"], capture_output=True,
                            text=True, timeout=60, env={**env, "EDITOR": str(editor), "VISUAL": str(editor)},
                            check=False)
    assert result.returncode == 0, result.stderr


def test_revert_of_a_snapshot_renamed_with_virsh_is_refused_and_the_guest_keeps_running(conn, images):
    dom, image = define(conn, images, "spk-ssafe-ren", start=True)
    ok("create", "spk-ssafe-ren", "s1")
    ok("create", "spk-ssafe-ren", "s2")
    # the pure-Python reader of the running image agrees with qemu-img -U, memory sizes included
    tags = image_snapshots(str(image))
    assert tags is not None
    assert [(t.id, t.name, t.vm_state_size) for t in tags] == qemu_img_tags(image)
    assert [t.name for t in tags] == ["s1", "s2"] and all(t.vm_state_size > 0 for t in tags)

    rename_with_virsh(images, "spk-ssafe-ren", "s1", "r1")
    assert names(dom) == ["r1", "s2"]
    before = Frozen(dom, image)
    line = refused("revert", "spk-ssafe-ren", "r1")
    assert f"the image of vda ({image}) holds no tag 'r1' (its tags: 's1', 's2')" in line
    assert "libvirt would fail the revert and leave spk-ssafe-ren shut off; nothing changed" in line
    assert "rename it back with 'kvm-snapshot edit spk-ssafe-ren r1 --rename s1'" in line
    before.unchanged()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    refused("revert", "spk-ssafe-ren", "r1", "--paused")  # whatever the flags
    before.unchanged()

    # the positive control: a snapshot whose tag is there still reverts
    assert "the domain is running" in ok("revert", "spk-ssafe-ren", "s2")
    # renaming an internal snapshot is refused, except back to the tag its image holds: the advice
    assert "keeps the tag 'r1'" in refuses("kvm-snapshot", 2, "edit", "spk-ssafe-ren", "r1", "--rename", "r2", *URI)
    assert ok("edit", "spk-ssafe-ren", "r1", "--rename", "s1") == "renamed 'r1' to 's1'\n"
    assert "the domain is running" in ok("revert", "spk-ssafe-ren", "s1", "--running")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], capture_output=True, text=True,
                   timeout=30, check=True)


def has_pattern(image: Path, pattern: str) -> bool:
    result = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} 0 64k", str(image)],
                            capture_output=True, text=True, timeout=30, check=False)
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout + result.stderr


def test_revert_to_a_tag_removed_behind_libvirts_back_is_refused(conn, images):
    # shut off: the tag deleted with qemu-img; the disk keeps what was written after the snapshot
    dom, image = define(conn, images, "spk-ssafe-gone", start=False)
    qemu_io(image, "write -P 0xaa 0 64k")
    ok("create", "spk-ssafe-gone", "known")
    qemu_io(image, "write -P 0x55 0 64k")
    subprocess.run(["qemu-img", "snapshot", "-d", "known", str(image)], check=True)
    before = Frozen(dom, image)
    line = refused("revert", "spk-ssafe-gone", "known")
    assert f"the image of vda ({image}) holds no tag 'known' (its tags: none)" in line
    assert "libvirt would fail the revert; nothing changed" in line
    assert "'kvm-snapshot delete spk-ssafe-gone known' removes its metadata" in line
    before.unchanged()
    assert has_pattern(image, "0x55")
    out = follow(line)
    assert out == ["deleted snapshot 'known' of spk-ssafe-gone as metadata only: no image of its disks holds its "
                   "tag any more (removed outside libvirt), no image changed\n"]
    assert names(dom) == [] and has_pattern(image, "0x55")

    # running: the tag deleted through the monitor
    dom.create()
    ok("create", "spk-ssafe-gone", "m1")
    virsh("qemu-monitor-command", "spk-ssafe-gone", "--hmp", "delvm m1")
    assert qemu_img_tags(image) == []
    before = Frozen(dom, image)
    line = refused("revert", "spk-ssafe-gone", "m1")
    assert "holds no tag 'm1' (its tags: none)" in line and "leave spk-ssafe-gone shut off" in line
    before.unchanged()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_delete_of_an_external_snapshot_with_an_internal_parent_gives_advice_that_works(conn, images):
    dom, image = define(conn, images, "spk-ssafe-del", start=True)
    ok("create", "spk-ssafe-del", "s1")
    ok("create", "spk-ssafe-del", "x1", "--disk-only")
    overlay = images / "spk-ssafe-del.x1"
    state, ident = dom.state(), dom.ID()

    # reverting to s1 below x1's overlay would abandon the overlay: refused, with the way out
    line = refused("revert", "spk-ssafe-del", "s1")
    assert f"vda now runs on {overlay}, the overlay of external snapshot 'x1', on top of {image}" in line
    assert "give up 'x1' first" in line
    line = refused("delete", "spk-ssafe-del", "x1")
    assert "parent 's1' is internal" in line and "keeping 's1'" in line
    assert ("'virsh blockcommit spk-ssafe-del vda --active --shallow --pivot --wait', "
            "'kvm-snapshot delete spk-ssafe-del x1'") in line
    assert "delete 's1' first" not in line  # the dead end of the audit
    assert (dom.state(), dom.ID(), names(dom)) == (state, ident, ["s1", "x1"])

    # nor is the internal parent deletable while the guest runs on the overlay: shut off, it is
    line = refused("delete", "spk-ssafe-del", "s1")
    assert f"the tag of 's1' is in {image}, below {overlay}" in line and "shut spk-ssafe-del off" in line
    assert (dom.state(), dom.ID(), names(dom)) == (state, ident, ["s1", "x1"])

    out = follow(refused("delete", "spk-ssafe-del", "x1"))
    assert "as metadata only" in out[-1] and "already committed" in out[-1]
    assert names(dom) == ["s1"]
    assert (dom.state(), dom.ID()) == (state, ident)  # the guest ran on throughout
    assert [layer["path"] for layer in chain("spk-ssafe-del")] == [str(image)]
    assert "the domain is running" in ok("revert", "spk-ssafe-del", "s1")

    # shut off: the advice starts QEMU paused for the commit and stops it again
    off, off_image = define(conn, images, "spk-ssafe-off", start=False)
    ok("create", "spk-ssafe-off", "s1")
    ok("create", "spk-ssafe-off", "x1", "--disk-only")
    line = refused("delete", "spk-ssafe-off", "x1")
    assert "'virsh start spk-ssafe-off --paused', 'virsh blockcommit spk-ssafe-off vda" in line
    assert line.endswith("'virsh destroy spk-ssafe-off'")
    follow(line)
    assert names(off) == ["s1"] and not off.isActive()
    assert [layer["path"] for layer in chain("spk-ssafe-off")] == [str(off_image)]
    assert [t.name for t in image_snapshots(str(off_image)) or []] == ["s1"]
    assert "shut off" in ok("revert", "spk-ssafe-off", "s1")

    # the parent refusal's advice, followed: shut off, the tag goes from the image below the overlay
    par, par_image = define(conn, images, "spk-ssafe-par", start=True)
    ok("create", "spk-ssafe-par", "s1")
    ok("create", "spk-ssafe-par", "x1", "--disk-only")
    assert "('virsh shutdown spk-ssafe-par')" in refused("delete", "spk-ssafe-par", "s1")
    par.destroy()  # what shutdown does to a guest without an OS to answer ACPI
    assert ok("delete", "spk-ssafe-par", "s1") == "deleted snapshot 's1' of spk-ssafe-par\n"
    assert names(par) == ["x1"] and image_snapshots(str(par_image)) == []
    assert ok("delete", "spk-ssafe-par", "x1") == "deleted snapshot 'x1' of spk-ssafe-par\n"
    assert [layer["path"] for layer in chain("spk-ssafe-par")] == [str(par_image)]


def chain(domain: str) -> list[dict]:
    return json.loads(ok("chain", domain, "--json"))["vda"]
