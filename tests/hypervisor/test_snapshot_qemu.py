"""kvm-snapshot against real libvirtd + QEMU (TCG): each step of the classic snapshot recipe, and bad
input refused in one line with nothing changed. Domains are spk-snap-* (this file's own prefix), run
through the installed command; qemu-io touches only the image of a domain that is shut off."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import libvirt

from sensu_kvm.virt import jobs
from tests.conftest import refuses, run, succeeds
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-snap-"
URI = ["-u", rig.URI]


def ok(*args: str) -> str:
    return succeeds("kvm-snapshot", *args, *URI)


def refused(code: int, *args: str) -> str:
    """The command fails with ``code`` and says why in exactly one line on stderr, nothing on stdout."""
    return refuses("kvm-snapshot", code, *args, *URI)


def names(dom: libvirt.virDomain) -> list[str]:
    return sorted(s.getName() for s in dom.listAllSnapshots(0))


def listing(domain: str, *flags: str) -> list[dict]:
    return json.loads(ok("list", domain, "--json", *flags))


conn, images = own_fixtures(PREFIX)


def define(conn: libvirt.virConnect, images: Path, name: str, start: bool, disk_format: str = "qcow2",
           folder: Path | None = None) -> libvirt.virDomain:
    where = folder or images
    if disk_format == "qcow2":
        disk = rig.make_qcow2(where / f"{name}.qcow2")
    else:
        disk = where / f"{name}.img"
        with disk.open("wb") as f:
            f.truncate(16 << 20)
    xml = rig.noos_domain_xml(name, disk)
    if disk_format != "qcow2":
        xml = xml.replace('type="qcow2"', f'type="{disk_format}"')
        assert f'type="{disk_format}"' in xml
    dom = conn.defineXML(xml)
    if start:
        dom.create()
    return dom


def qemu_io(image: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], capture_output=True, text=True,
                          timeout=30, check=False)


def has_pattern(image: Path, pattern: str) -> bool:
    result = qemu_io(image, f"read -P {pattern} 0 64k")
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout + result.stderr


def test_internal_snapshots_of_a_running_domain(conn, images):
    dom = define(conn, images, "spk-snap-int", start=True)
    out = ok("create", "spk-snap-int", "s1", "--description", "first one")
    assert out == "created snapshot 's1' of spk-snap-int: internal, running with memory\n"
    out = ok("create", "spk-snap-int")  # named after the creation time, as virsh does
    default = out.split("'")[1]
    assert default.isdigit() and abs(int(default) - time.time()) < 60
    assert names(dom) == sorted(["s1", default])

    # a name already taken: one line, exit 2, nothing changed
    line = refused(2, "create", "spk-snap-int", "s1")
    assert "already has a snapshot named 's1'" in line
    assert names(dom) == sorted(["s1", default])

    # an external one on top, for the filters
    ok("create", "spk-snap-int", "x1", "--disk-only", "--atomic")
    everything = listing("spk-snap-int")
    assert [(s["name"], s["location"], s["parent"]) for s in everything] == [
        ("s1", "internal", None), (default, "internal", "s1"), ("x1", "external", default)]
    assert [s["name"] for s in listing("spk-snap-int", "--internal")] == ["s1", default]
    assert [s["name"] for s in listing("spk-snap-int", "--external")] == ["x1"]
    assert [s["name"] for s in listing("spk-snap-int", "--disk-only")] == ["x1"]
    assert everything[0]["description"] == "first one"
    assert everything[2]["current"] is True
    table = ok("list", "spk-snap-int").splitlines()
    assert table[0].split() == ["Name", "Created", "State", "Location", "Age", "Parent", "Current"]
    assert [row.split()[0] for row in table[1:]] == ["s1", default, "x1"]
    assert "running" in table[1] and "internal" in table[1]
    assert ok("list", "spk-snap-int", "--tree").splitlines() == ["s1", f"+- {default}", "   +- x1 (current)"]
    assert ok("list", "spk-snap-int", "--tree", "--internal").splitlines() == ["s1", f"+- {default}"]

    info = dict(line.split(":", 1) for line in ok("info", "spk-snap-int", default).splitlines())
    info = {k: v.strip() for k, v in info.items()}
    assert info["Name"] == default and info["Domain"] == "spk-snap-int"
    assert (info["Current"], info["State"], info["Location"]) == ("no", "running", "internal")
    assert (info["Parent"], info["Children"], info["Descendants"], info["Metadata"]) == ("s1", "1", "1", "yes")
    info = dict(line.split(":", 1) for line in ok("info", "spk-snap-int", "s1").splitlines())
    assert (info["Children"].strip(), info["Descendants"].strip()) == ("1", "2")
    assert "<name>s1</name>" in ok("dumpxml", "spk-snap-int", "s1")
    assert "<domainsnapshot>" in ok("dumpxml", "spk-snap-int", "s1", "--security-info")

    # renaming an internal snapshot is refused with the reason: the qcow2 tag keeps the old name
    line = refused(2, "edit", "spk-snap-int", "s1", "--rename", "renamed")
    assert "keeps the tag 's1'" in line
    assert "s1" in names(dom) and "renamed" not in names(dom)
    out = ok("edit", "spk-snap-int", "s1", "--description", "better words")
    assert "keeps the tag 's1'" in out
    assert listing("spk-snap-int")[0]["description"] == "better words"
    assert listing("spk-snap-int")[1]["parent"] == "s1"  # the tree is intact

    # revert to s1 while vda runs on x1's overlay: refused (libvirt would leave the overlay out of every chain)
    state = dom.state()
    line = refused(1, "revert", "spk-snap-int", "s1", "--paused")
    assert "vda now runs on" in line and "the overlay of external snapshot 'x1'" in line and "give up 'x1'" in line
    assert dom.state() == state and names(dom) == sorted(["s1", default, "x1"])
    # x1 merged into its image by hand, as the delete refusal says (its parent is internal)
    line = refused(1, "delete", "spk-snap-int", "x1")
    assert f"parent '{default}' is internal" in line
    subprocess.run(["virsh", "-c", rig.URI, "blockcommit", "spk-snap-int", "vda", "--active", "--shallow", "--pivot",
                    "--wait"], check=True, capture_output=True)
    assert "as metadata only" in ok("delete", "spk-snap-int", "x1")

    # revert to the internal snapshot of the running domain, left paused
    out = ok("revert", "spk-snap-int", "s1", "--paused")
    assert out.startswith("reverted spk-snap-int to 's1'") and "paused" in out
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert listing("spk-snap-int")[0]["current"] is True

    # delete by name: an internal snapshot with a child; the child moves up
    assert ok("delete", "spk-snap-int", "s1") == "deleted snapshot 's1' of spk-snap-int\n"
    assert [(s["name"], s["parent"]) for s in listing("spk-snap-int")] == [(default, None)]


def test_external_snapshots_chain_rename_delete(conn, images):
    dom = define(conn, images, "spk-snap-ext", start=True)
    base = images / "spk-snap-ext.qcow2"
    out = ok("create", "spk-snap-ext", "e1", "--disk-only")
    assert out == f"created snapshot 'e1' of spk-snap-ext: external, disk-only (vda -> {images}/spk-snap-ext.e1)\n"
    custom = images / "custom-e2.qcow2"
    ok("create", "spk-snap-ext", "e2", "--disk-only", "--diskspec", f"vda={custom}", "--description", "second")
    assert (images / "spk-snap-ext.e1").is_file() and custom.is_file()

    # the chain after two external snapshots, like qemu-img info --backing-chain
    chain = json.loads(ok("chain", "spk-snap-ext", "--json"))
    assert [layer["path"] for layer in chain["vda"]] == [str(custom), f"{images}/spk-snap-ext.e1", str(base)]
    assert [layer["format"] for layer in chain["vda"]] == ["qcow2"] * 3
    assert all(layer["virtual_size"] == 64 << 20 for layer in chain["vda"])
    assert [layer["backing"] for layer in chain["vda"]] == [f"{images}/spk-snap-ext.e1", str(base), None]
    text = ok("chain", "spk-snap-ext")
    assert text.startswith("vda: 3 images\n") and f"  image: {custom}\n" in text
    assert "virtual size: 64 MiB (67108864 bytes)" in text and f"backing file: {base}" in text

    ok("create", "spk-snap-ext", "e3", "--disk-only")
    # rename keeps the tree: e3 stays a child of the renamed snapshot
    out = ok("edit", "spk-snap-ext", "e2", "--rename", "r2")
    assert "renamed 'e2' to 'r2'; children kept: e3" in out
    assert [(s["name"], s["parent"], s["description"]) for s in listing("spk-snap-ext")] == [
        ("e1", None, ""), ("r2", "e1", "second"), ("e3", "r2", "")]
    line = refused(2, "edit", "spk-snap-ext", "e1", "--rename", "r2")
    assert "already exists" in line

    # revert to an external snapshot: refused on libvirt 9.0 with the version named
    state = dom.state()
    line = refused(1, "revert", "spk-snap-ext", "r2")
    assert "libvirt 9.0.0 cannot revert" in line and "9.9" in line
    assert dom.state() == state

    # delete: one with children is refused (say what to do), the current one goes, then the renamed one
    line = refused(1, "delete", "spk-snap-ext", "r2")
    assert "children (e3)" in line and "delete them first" in line
    assert names(dom) == ["e1", "e3", "r2"]
    assert ok("delete", "spk-snap-ext", "--current") == "deleted snapshot 'e3' of spk-snap-ext\n"
    assert ok("delete", "spk-snap-ext", "r2") == "deleted snapshot 'r2' of spk-snap-ext\n"
    assert names(dom) == ["e1"]
    chain = json.loads(ok("chain", "spk-snap-ext", "--json"))
    assert [layer["path"] for layer in chain["vda"]] == [f"{images}/spk-snap-ext.e1", str(base)]
    assert not custom.exists()

    # an overlay committed behind libvirt's back: removed as metadata only, saying so
    dom.blockCommit("vda", None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    def ready() -> bool:
        job = dom.blockJobInfo("vda", 0)
        return bool(job) and job["cur"] == job["end"]

    rig.wait_for(ready, 30, what="the commit to be ready to pivot")
    # cur == end comes before QEMU's READY event on a loaded machine ("not ready for pivot yet"):
    # pivot as kvm-backup does, again until libvirt takes it
    rig.wait_for(lambda: jobs.pivot(dom, "vda"), 30, what="libvirt to take the pivot")
    out = ok("delete", "spk-snap-ext", "e1")
    assert "as metadata only" in out and "already committed" in out
    assert names(dom) == []


def test_revert_brings_back_the_disk_content(conn, images):
    dom = define(conn, images, "spk-snap-rev", start=False)
    image = images / "spk-snap-rev.qcow2"
    assert qemu_io(image, "write -P 0xaa 0 64k").returncode == 0
    assert ok("create", "spk-snap-rev", "known") == "created snapshot 'known' of spk-snap-rev: internal, shutoff\n"
    assert qemu_io(image, "write -P 0x55 0 64k").returncode == 0
    assert not has_pattern(image, "0xaa") and has_pattern(image, "0x55")
    assert "shut off" in ok("revert", "spk-snap-rev", "known")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert has_pattern(image, "0xaa")


def _age(dom: libvirt.virDomain, name: str, days: float) -> None:
    """Make a snapshot look older (its metadata only)."""
    snap = dom.snapshotLookupByName(name, 0)
    xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    created = xml.split("<creationTime>")[1].split("<")[0]
    xml = xml.replace(f"<creationTime>{created}</creationTime>",
                      f"<creationTime>{int(created) - int(days * 86400)}</creationTime>")
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if snap.isCurrent():
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    dom.snapshotCreateXML(xml, flags)


def test_prune_by_age_and_count(conn, images):
    dom = define(conn, images, "spk-snap-prune", start=False)
    for n, days in enumerate((10, 8, 6, 4, 0)):
        ok("create", "spk-snap-prune", f"p{n}")
        _age(dom, f"p{n}", days)
    # p4 is current; make p0 current instead to show it is never pruned
    ok("revert", "spk-snap-prune", "p0")

    plan = json.loads(ok("prune", "spk-snap-prune", "--older-than", "7d", "--dry-run", "--json"))
    assert {(e["name"], e["action"]) for e in plan} == {
        ("p0", "keep"), ("p1", "would delete"), ("p2", "keep"), ("p3", "keep"), ("p4", "keep")}
    assert names(dom) == ["p0", "p1", "p2", "p3", "p4"]
    text = ok("prune", "spk-snap-prune", "--older-than", "7d", "--dry-run")
    assert text == "spk-snap-prune: would delete 'p1' (age 8d): older than the limit\n"

    out = ok("prune", "spk-snap-prune", "--older-than", "1w")
    assert out.startswith("deleted snapshot 'p1' of spk-snap-prune (age 8d)")
    assert names(dom) == ["p0", "p2", "p3", "p4"]

    out = ok("prune", "spk-snap-prune", "--keep", "2", "-v")
    assert "deleted snapshot 'p2'" in out and "keep 'p0'" in out and "the current snapshot" in out
    assert names(dom) == ["p0", "p3", "p4"]
    assert ok("prune", "spk-snap-prune", "--keep", "5") == "nothing to prune\n"


def test_bad_input_one_line_nothing_changed(conn, images):
    raw = define(conn, images, "spk-snap-raw", start=False, disk_format="raw")
    before = sorted(p.name for p in images.iterdir())

    # unknown domain or snapshot
    assert "no domain named 'spk-snap-nosuch'" in refused(2, "list", "spk-snap-nosuch")
    assert "no domain named" in refused(2, "create", "spk-snap-nosuch", "x")
    assert "has no snapshot named 'nope'" in refused(2, "info", "spk-snap-raw", "nope")
    assert "has no snapshot named 'nope'" in refused(2, "delete", "spk-snap-raw", "nope")
    assert "has no snapshot named 'nope'" in refused(2, "revert", "spk-snap-raw", "nope")
    assert "has no snapshot named 'nope'" in refused(2, "dumpxml", "spk-snap-raw", "nope")
    assert "no current snapshot" in refused(2, "delete", "spk-snap-raw", "--current")

    # a raw disk cannot hold internal snapshots: say how to convert
    line = refused(2, "create", "spk-snap-raw", "s1")
    assert "raw image" in line and "qemu-img convert -O qcow2" in line
    assert names(raw) == []

    # options
    assert "invalid duration '3x'" in refused(2, "prune", "spk-snap-raw", "--older-than", "3x")
    assert "--older-than" in refused(2, "prune", "spk-snap-raw")
    assert "DOMAIN or --all" in refused(2, "prune", "--keep", "1")
    assert "--disk-only" in refused(2, "create", "spk-snap-raw", "q", "--quiesce")
    assert "DISK=PATH" in refused(2, "create", "spk-snap-raw", "q", "--disk-only", "--diskspec", "vda")
    assert "names no disk" in refused(2, "create", "spk-snap-raw", "q", "--disk-only", "--diskspec", "vdz=/tmp/x")
    assert "--rename NEW or --description" in refused(2, "edit", "spk-snap-raw", "x")
    assert "unrecognized arguments" in refused(2, "list", "spk-snap-raw", "--bogus")
    assert "invalid choice" in refused(2, "snapshot-list")
    assert names(raw) == []
    assert sorted(p.name for p in images.iterdir()) == before


def test_quiesce_without_an_agent_fails_clearly(conn, images):
    dom = define(conn, images, "spk-snap-quiet", start=True)
    line = refused(1, "create", "spk-snap-quiet", "q", "--disk-only", "--quiesce")
    assert "--quiesce: the guest agent did not answer" in line and "no snapshot made" in line
    assert names(dom) == []
    assert not (images / "spk-snap-quiet.q").exists()


def test_full_file_system_refuses_overlays(conn, images):
    with rig.small_fs(images / "small", 8) as small:
        dom = define(conn, images, "spk-snap-full", start=False, folder=small)
        filler = small / "filler"
        free = os.statvfs(small)
        with filler.open("wb") as f:
            f.write(b"\1" * max(0, free.f_bavail * free.f_frsize - (2 << 20)))
        before = sorted(p.name for p in small.iterdir())
        line = refused(1, "create", "spk-snap-full", "over", "--disk-only")
        assert "not enough free space in" in line and str(small) in line
        assert names(dom) == []
        assert sorted(p.name for p in small.iterdir()) == before
        rig.cleanup(conn, prefix="spk-snap-full")  # before the file system goes


# --- no hypervisor needed: help, a connection that fails, prune --all on the test driver -----------

COMMANDS = ("create", "list", "info", "dumpxml", "edit", "revert", "delete", "prune", "chain")


def test_help_with_examples_on_every_subcommand():
    top = run("kvm-snapshot", "--help")
    assert top.returncode == 0 and "examples:" in top.stdout and "exit codes:" in top.stdout
    for command in COMMANDS:
        assert command in top.stdout
        result = run("kvm-snapshot", command, "--help")
        assert result.returncode == 0, command
        assert "examples:\n  kvm-snapshot " + command in result.stdout, command


def test_no_connection_is_one_line_exit_1():
    result = run("kvm-snapshot", "list", "web1", "-u", "qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to" in lines[0], result.stderr


def _node(tmp_path: Path) -> str:
    def snap(name: str, created: int, parent: str | None, active: int) -> str:
        up = f"<parent><name>{parent}</name></parent>" if parent else ""
        return (f"<test:domainsnapshot><name>{name}</name><creationTime>{created}</creationTime><state>running</state>"
                f"{up}<memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>"
                f"<domain type='test'><name>x</name><memory>131072</memory><os><type>hvm</type></os></domain>"
                f"<active>{active}</active></test:domainsnapshot>")

    def domain(name: str, uuid: str, snaps: str) -> str:
        return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>131072</memory>"
                f"<os><type>hvm</type></os><test:runstate>5</test:runstate>{snaps}</domain>")

    day = 86400
    now = int(time.time())
    xml = ("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
           + domain("a", "11111111-1111-4111-8111-111111111111",
                    snap("a1", now - 30 * day, None, 0) + snap("a2", now - 20 * day, "a1", 0)
                    + snap("a3", now - day, "a2", 1))
           + domain("b", "22222222-2222-4222-8222-222222222222", snap("b1", now - 40 * day, None, 1))
           + domain("c", "33333333-3333-4333-8333-333333333333", "")
           + "</node>")
    path = tmp_path / "node.xml"
    path.write_text(xml)
    return f"test://{path}"


def test_prune_all_dry_run_on_the_test_driver(tmp_path):
    uri = _node(tmp_path)
    result = run("kvm-snapshot", "prune", "--all", "--older-than", "2w", "--keep", "1", "--dry-run", "-u", uri)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "a: would delete 'a2' (age 20d): older than the limit and beyond the 1 newest",
        "a: would delete 'a1' (age 30d): older than the limit and beyond the 1 newest",
    ]
    result = run("kvm-snapshot", "prune", "--all", "--keep", "0", "--dry-run", "--json", "-u", uri)
    plan = {(e["domain"], e["name"]): e for e in json.loads(result.stdout)}
    assert plan[("b", "b1")]["action"] == "keep" and plan[("b", "b1")]["why"] == "the current snapshot"
    tree = run("kvm-snapshot", "list", "a", "--tree", "-u", uri)
    assert tree.stdout.splitlines() == ["a1", "+- a2", "   +- a3 (current)"]
