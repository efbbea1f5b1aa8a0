"""kvm-snapshot's planning, pure: the tree, prune selection, rename and delete safety, free space,
durations, qcow2 headers."""

import json
import random
import re
import struct
import subprocess
import time

import pytest

from sensu_kvm import qcow2, space
from sensu_kvm.domxml import Layer
from sensu_kvm.durations import format_age, parse_duration
from sensu_kvm.errors import ImageError
from sensu_kvm.snapshots import policy, tree
from sensu_kvm.snapshots.tree import SavedDisk, SnapDisk, Snapshot, parse_snapshot, saved_disks

DAY = 86400
NOW = 100 * DAY


def internal(name, age_days, parent=None, current=False):
    return Snapshot(name, int(NOW - age_days * DAY), "running", parent, "", "internal",
                    (SnapDisk("vda", "internal", ""),), current)


def external(name, age_days, parent=None, current=False):
    return Snapshot(name, int(NOW - age_days * DAY), "disk-snapshot", parent, "", "no",
                    (SnapDisk("vda", "external", f"/img/a.{name}"),), current)


def deleted(plan):
    return [d.snapshot.name for d in plan if d.delete]


def kept(plan):
    return {d.snapshot.name: d.why for d in plan if not d.delete}


# --- tree ------------------------------------------------------------------------------------------


def test_tree_of_branches_oldest_first():
    snaps = [internal("a", 5), internal("b", 4, "a"), internal("c", 3, "a"), internal("d", 2, "b", current=True),
             internal("lone", 1)]
    assert tree.children(snaps) == {"a": ["b", "c"], "b": ["d"], "c": [], "d": [], "lone": []}
    assert tree.roots(snaps) == ["a", "lone"]
    assert tree.descendants("a", tree.children(snaps)) == ["b", "c", "d"]
    assert tree.tree_lines(snaps) == [
        "a",
        "+- b",
        "|  +- d (current)",
        "+- c",
        "lone",
    ]


def test_tree_with_unknown_parent_makes_a_root():
    snaps = [internal("b", 4, "gone"), internal("c", 3, "b")]
    assert tree.roots(snaps) == ["b"]
    assert tree.tree_lines(snaps) == ["b", "+- c"]


def test_snapshot_record_has_children_and_descendants():
    snaps = [internal("a", 5), internal("b", 4, "a"), internal("c", 3, "b")]
    rec = tree.snapshot_record(snaps[0], "dom", NOW, tree.children(snaps))
    assert rec["children"] == ["b"]
    assert rec["descendants"] == ["b", "c"]
    assert rec["age_seconds"] == 5 * DAY
    assert rec["location"] == "internal"


# --- prune -----------------------------------------------------------------------------------------


def test_prune_by_count_deletes_the_oldest_internal_ones():
    snaps = [internal("a", 5), internal("b", 4, "a"), internal("c", 3, "b"), internal("d", 2, "c", current=True)]
    plan = policy.plan_prune(snaps, NOW, None, 2)
    # internal snapshots are independent tags: libvirt reparents the children
    assert deleted(plan) == ["b", "a"]
    assert kept(plan) == {"d": "the current snapshot", "c": "one of the 2 newest"}


def test_prune_by_age():
    snaps = [internal("old", 10), internal("mid", 3, "old"), internal("new", 1, "mid", current=True)]
    plan = policy.plan_prune(snaps, NOW, 7 * DAY, None)
    assert deleted(plan) == ["old"]
    assert kept(plan)["mid"] == "not old enough"


def test_prune_by_age_and_count_needs_both():
    snaps = [internal("a", 10), internal("b", 9), internal("c", 1)]
    plan = policy.plan_prune(snaps, NOW, 5 * DAY, 1)
    assert sorted(deleted(plan)) == ["a", "b"]
    plan = policy.plan_prune(snaps, NOW, 5 * DAY, 2)
    assert deleted(plan) == ["a"]


def test_prune_never_the_current_one_even_when_oldest():
    snaps = [internal("a", 10, current=True), internal("b", 9), internal("c", 8)]
    plan = policy.plan_prune(snaps, NOW, None, 0)
    assert "a" not in deleted(plan)
    assert kept(plan)["a"] == "the current snapshot"


def test_prune_never_an_external_parent_of_a_kept_snapshot():
    snaps = [external("e1", 10), external("e2", 9, "e1"), external("e3", 1, "e2", current=True)]
    plan = policy.plan_prune(snaps, NOW, DAY * 2, None)
    assert deleted(plan) == []
    assert kept(plan) == {"e3": "the current snapshot", "e2": "e3 depends on it", "e1": "e2 depends on it"}


def test_prune_never_an_internal_parent_of_a_kept_external_snapshot():
    snaps = [internal("i1", 10), external("e1", 9, "i1", current=True)]
    plan = policy.plan_prune(snaps, NOW, None, 0)
    assert deleted(plan) == []
    assert kept(plan)["i1"] == "e1 depends on it"


def test_prune_an_external_child_of_an_internal_parent_is_kept_with_the_reason():
    snaps = [internal("i1", 10), external("e1", 9, "i1"), internal("i2", 1, current=True)]
    plan = policy.plan_prune(snaps, NOW, None, 1)
    assert "e1" not in deleted(plan)
    assert "libvirt cannot delete it" in kept(plan)["e1"]
    assert kept(plan)["i1"] == "e1 depends on it"


def test_prune_deletes_a_whole_external_branch_children_first():
    snaps = [external("e1", 10), external("e2", 9, "e1"), internal("cur", 1, current=True)]
    plan = policy.plan_prune(snaps, NOW, None, 1)
    assert deleted(plan) == ["e2", "e1"]


def test_prune_never_picks_a_parent_of_a_kept_snapshot_in_random_trees():
    rng = random.Random(7)
    for _ in range(300):
        snaps = []
        for n in range(rng.randint(1, 9)):
            parent = rng.choice([None, *[s.name for s in snaps]]) if snaps else None
            make = rng.choice([internal, external])
            snaps.append(make(f"s{n}", 20 - n + rng.random(), parent))
        current = rng.choice(snaps)
        snaps = [s._replace(current=s is current) for s in snaps]
        plan = policy.plan_prune(snaps, NOW, rng.choice([None, 5 * DAY]), rng.choice([None, 0, 1, 3]) or 0)
        gone = set(deleted(plan))
        assert current.name not in gone
        index = tree.by_name(snaps)
        for snap in snaps:
            if snap.name in gone or snap.parent is None:
                continue
            parent = index[snap.parent]
            if snap.location == "external" or parent.location == "external":
                assert parent.name not in gone, (snaps, plan)
        # deletion order: a deleted snapshot never comes before one of its deleted children
        order = deleted(plan)
        for i, name in enumerate(order):
            assert not any(index[later].parent == name for later in order[i + 1:])


def test_prune_needs_a_policy():
    with pytest.raises(ValueError, match="--older-than or --keep"):
        policy.plan_prune([], NOW, None, None)


# --- rename, edit ---------------------------------------------------------------------------------


def test_rename_refused_for_internal_with_the_reason():
    snaps = [internal("a", 2), external("e", 1, "a")]
    problem = policy.rename_problem(snaps, "a", "b")
    assert problem is not None
    assert "keeps the tag 'a'" in problem and "reverts by name" in problem
    assert policy.rename_problem(snaps, "e", "a") == "a snapshot named 'a' already exists"
    assert policy.rename_problem(snaps, "e", "") is not None
    assert policy.rename_problem(snaps, "e", "new") is None


XML = """<domainsnapshot><name>e1</name><state>disk-snapshot</state><parent><name>base</name></parent>
<creationTime>1700000000</creationTime><disks><disk name='vda' snapshot='external' type='file'>
<source file='/img/a.e1'/></disk></disks></domainsnapshot>"""


def test_xml_edits_keep_everything_else():
    edited = tree.set_description(tree.set_parent(tree.set_name(XML, "r1"), "newbase"), "text & more")
    snap = parse_snapshot(edited)
    assert (snap.name, snap.parent, snap.description, snap.created) == ("r1", "newbase", "text & more", 1700000000)
    assert snap.disks == (SnapDisk("vda", "external", "/img/a.e1"),)
    orphan = parse_snapshot(tree.set_parent(XML.replace("<parent><name>base</name></parent>", ""), "p"))
    assert orphan.parent == "p"


# --- delete ---------------------------------------------------------------------------------------


def test_delete_problems():
    snaps = [internal("i1", 5), external("e1", 4, "i1"), external("e2", 3), external("e3", 2, "e2"),
             internal("i2", 1, "e3")]
    chain = {"vda": [Layer("/img/a.e3", "qcow2"), Layer("/img/a.qcow2", "qcow2")]}
    ok = lambda path: True  # noqa: E731
    assert policy.delete_problem(snaps, "i1", 9_000_000, chain, ok) is None
    assert "with children (e3)" in policy.delete_problem(snaps, "e2", 9_000_000, chain, ok)
    assert "with children (i2)" in policy.delete_problem(snaps, "e3", 9_000_000, chain, ok)
    assert "parent 'i1' is internal" in policy.delete_problem(snaps, "e1", 9_000_000, chain, ok)
    leaf = [external("e2", 3), external("e3", 2, "e2")]
    assert policy.delete_problem(leaf, "e3", 9_000_000, chain, ok) is None
    old = policy.delete_problem(leaf, "e3", 8_010_000, chain, ok, "web1")
    assert "libvirt 8.10.0 cannot delete" in old
    assert "'virsh blockcommit web1 vda --active --shallow --pivot --wait', 'kvm-snapshot delete web1 e3'" in old
    broken = policy.delete_problem(leaf, "e3", 9_000_000, chain, lambda p: p != "/img/a.qcow2")
    assert broken == "the backing chain of vda is broken (/img/a.qcow2 missing): nothing deleted"


def test_delete_advice_for_an_external_snapshot_with_an_internal_parent():
    snaps = [internal("s1", 5), external("x1", 4, "s1")]
    top = {"vda": [Layer("/img/a.x1", "qcow2"), Layer("/img/a.qcow2", "qcow2")]}
    ok = lambda path: True  # noqa: E731
    running = policy.delete_problem(snaps, "x1", 9_000_000, top, ok, "web1", active=True)
    assert running == (
        "'x1' is an external snapshot whose parent 's1' is internal, and libvirt 9.0.0 cannot delete such a snapshot; "
        "nothing changed; merge its overlay by hand, keeping 's1': "
        "'virsh blockcommit web1 vda --active --shallow --pivot --wait', "
        "'kvm-snapshot delete web1 x1' (then only its metadata is left to remove)")
    off = policy.delete_problem(snaps, "x1", 9_000_000, top, ok, "web1", active=False)
    assert off.endswith("keeping 's1': 'virsh start web1 --paused', 'virsh blockcommit web1 vda --active --shallow "
                        "--pivot --wait', 'kvm-snapshot delete web1 x1' (then only its metadata is left to remove), "
                        "'virsh destroy web1'")
    # the overlay below another (unknown) overlay: a commit of that layer, not of the active one
    middle = {"vda": [Layer("/img/a.backup", "qcow2"), Layer("/img/a.x1", "qcow2"), Layer("/img/a.qcow2", "qcow2")]}
    advice = policy.delete_problem(snaps, "x1", 9_000_000, middle, ok, "web1")
    assert "'virsh blockcommit web1 vda --top /img/a.x1 --shallow --wait'" in advice
    assert "delete 's1' first" not in running + off + advice


def test_overlays_gone_and_tag_gone():
    x1 = external("x1", 4, "s1")
    assert not policy.overlays_gone(x1, {"vda": ["/img/a.x1", "/img/a.qcow2"]})
    assert policy.overlays_gone(x1, {"vda": ["/img/a.qcow2"]})
    assert policy.overlays_gone(x1, {})
    assert not policy.overlays_gone(internal("s1", 1), {})
    tags = {"/img/a.qcow2": [qcow2.ImageSnapshot("1", "s1", 0, 0)], "/img/b.qcow2": [], "/img/raw": None}

    def read(path):
        if path == "/img/bad":
            raise ImageError("/img/bad: truncated qcow2 header")
        return tags[path]

    s1, s2 = internal("s1", 2), internal("s2", 1)
    assert not policy.tag_gone(s1, {"vda": ["/img/b.qcow2", "/img/a.qcow2"]}, read)  # below an overlay
    assert policy.tag_gone(s2, {"vda": ["/img/a.qcow2"]}, read)
    assert not policy.tag_gone(s2, {"vda": ["/img/bad"]}, read)  # unreadable counts as holding it
    assert not policy.tag_gone(s2, {"vda": ["/img/raw"]}, read)
    assert not policy.tag_gone(s2, {}, read)  # no disk to look at: not proven gone


def test_internal_delete_of_a_running_guest_below_an_overlay():
    tags = {"/img/a.x1": [], "/img/a.qcow2": [qcow2.ImageSnapshot("1", "s1", 0, 0)]}.__getitem__
    s1 = internal("s1", 5)
    line = policy.tag_below_problem(s1, {"vda": ["/img/a.x1", "/img/a.qcow2"]}, "web1", 9_000_000, tags)
    assert line == ("the tag of 's1' is in /img/a.qcow2, below /img/a.x1, the image vda runs on, and libvirt 9.0.0 "
                    "deletes tags of a running guest only in the images it runs on; nothing changed; shut web1 off "
                    "('virsh shutdown web1') and delete it again, or keep it")
    assert policy.tag_below_problem(s1, {"vda": ["/img/a.qcow2"]}, "web1", 9_000_000, tags) is None
    both = {"/img/a.x1": [qcow2.ImageSnapshot("1", "s1", 0, 0)], "/img/a.qcow2": []}.__getitem__
    assert policy.tag_below_problem(s1, {"vda": ["/img/a.x1", "/img/a.qcow2"]}, "web1", 9_000_000, both) is None


# --- revert ---------------------------------------------------------------------------------------


def image(*tags, memory=0):
    return [qcow2.ImageSnapshot(str(n + 1), t, 0, memory) for n, t in enumerate(tags)]


def test_revert_problems_of_internal_snapshots():
    saved = {"vda": SavedDisk("vda", "/img/a.qcow2", "qcow2", False)}
    here = {"vda": [Layer("/img/a.qcow2", "qcow2")]}
    running = Snapshot("s1", NOW, "running", None, "", "internal", (SnapDisk("vda", "internal", ""),))
    shutoff = Snapshot("s1", NOW, "shutoff", None, "", "no", (SnapDisk("vda", "internal", ""),))

    def problem(snap, chains=here, tags=None, snaps=None, disks=saved, active=True):
        table = tags if tags is not None else {"/img/a.qcow2": image("s1", memory=1 << 20)}
        return policy.revert_problem(snap, "web1", disks, chains, snaps or [snap], active, table.__getitem__)

    assert problem(running) is None
    assert problem(shutoff, tags={"/img/a.qcow2": image("s1")}) is None
    # renamed outside the tool: the image's one tag no snapshot is named after is offered back
    renamed = running._replace(name="r1")
    line = problem(renamed, snaps=[renamed, shutoff._replace(name="s2")],
                   tags={"/img/a.qcow2": image("s1", "s2", memory=1)})
    assert line.startswith("the image of vda (/img/a.qcow2) holds no tag 'r1' (its tags: 's1', 's2'): libvirt would "
                           "fail the revert and leave web1 shut off; nothing changed;")
    assert line.endswith("rename it back with 'kvm-snapshot edit web1 r1 --rename s1'")
    # the tag deleted behind libvirt's back; a shut off domain is not said to be left shut off
    line = problem(shutoff, tags={"/img/a.qcow2": []}, active=False)
    assert line == ("the image of vda (/img/a.qcow2) holds no tag 's1' (its tags: none): libvirt would fail the revert; "
                    "nothing changed; this snapshot cannot be reverted; 'kvm-snapshot delete web1 s1' removes its "
                    "metadata")
    # the memory is missing although the tag is there (a disk-only tag of that name)
    assert "holds the memory saved with 's1'" in problem(running, tags={"/img/a.qcow2": image("s1")})
    # every writable qcow2 disk must hold a memory snapshot's tag, even one the snapshot does not list
    two = {**saved, "vdb": SavedDisk("vdb", "/img/b.qcow2", "qcow2", False),
           "vdc": SavedDisk("vdc", "/img/c.iso", "raw", True)}
    chains2 = {**here, "vdb": [Layer("/img/b.qcow2", "qcow2")], "vdc": [Layer("/img/c.iso", "raw")]}
    tags2 = {"/img/a.qcow2": image("s1", memory=1), "/img/b.qcow2": image("other")}
    assert "the image of vdb (/img/b.qcow2) holds no tag 's1'" in problem(running, chains2, tags2, disks=two)
    assert problem(shutoff, chains2, tags2, disks=two) is None  # disk-only: only the disks it covers
    # a raw image or a damaged one
    raw = problem(shutoff, {"vda": [Layer("/img/a.img", "raw")]}, {"/img/a.img": None},
                  disks={"vda": SavedDisk("vda", "/img/a.img", "raw", False)})
    assert raw.startswith("vda runs on /img/a.img, which is not a qcow2 image")

    def broken(path):
        raise ImageError(f"{path}: truncated qcow2 snapshot table (entry 1 of 2)")

    line = policy.revert_problem(shutoff, "web1", saved, here, [shutoff], True, broken)
    assert line.startswith("/img/a.qcow2: truncated qcow2 snapshot table (entry 1 of 2): libvirt would fail")
    # the disk is gone, or runs on another image
    assert "vda, which 's1' covers, is no longer a disk of web1 (it was /img/a.qcow2)" in problem(shutoff, {})
    assert problem(shutoff, {}, disks={}) is None  # a network disk (rbd, iscsi): nothing to read
    moved = problem(shutoff, {"vda": [Layer("/img/other.qcow2", "qcow2")]})
    assert moved.startswith("vda now runs on /img/other.qcow2, not on /img/a.qcow2 where 's1' was taken")


def test_revert_below_an_overlay_is_refused_with_the_way_out():
    saved = {"vda": SavedDisk("vda", "/img/a.qcow2", "qcow2", False)}
    chain = {"vda": [Layer("/img/a.x1", "qcow2"), Layer("/img/a.qcow2", "qcow2")]}
    s1 = internal("s1", 5)
    x1 = external("x1", 4, "s1")
    tags = {"/img/a.qcow2": image("s1", memory=1)}.__getitem__
    line = policy.revert_problem(s1, "web1", saved, chain, [s1, x1], True, tags)
    assert line.startswith("vda now runs on /img/a.x1, the overlay of external snapshot 'x1', on top of /img/a.qcow2, "
                           "which holds 's1': libvirt would go back to /img/a.qcow2 and leave the overlay out of every "
                           "chain; nothing changed; to revert, give up 'x1' first: 'virsh blockcommit web1 vda --active")
    assert line.endswith("'kvm-snapshot delete web1 x1' (then only its metadata is left to remove), then revert again")
    # above an external parent: kvm-snapshot delete merges it by itself
    x0 = external("x0", 4.5, "s1")
    x2 = external("x2", 3, "x0")
    chain3 = {"vda": [Layer("/img/a.x2", "qcow2"), Layer("/img/a.x0", "qcow2"), Layer("/img/a.qcow2", "qcow2")]}
    line = policy.revert_problem(s1, "web1", saved, chain3, [s1, x0, x2], True, tags)
    assert line.endswith("give up 'x2' first: 'kvm-snapshot delete web1 x2' merges its overlay, then revert again")
    # an overlay that no snapshot knows (a backup running): find out first
    line = policy.revert_problem(s1, "web1", saved, chain, [s1], True, tags)
    assert "an overlay no snapshot knows" in line and line.endswith("('kvm-snapshot chain web1') before reverting")


def test_revert_problems_of_external_snapshots(tmp_path):
    base = tmp_path / "a.qcow2"
    base.write_bytes(struct.pack(">IIQIIQ", 0x514649FB, 3, 0, 0, 16, 1 << 20) + b"\0" * 100)
    name = str(base).encode()
    head = struct.pack(">IIQIIQ", 0x514649FB, 3, 512, len(name), 16, 1 << 20)
    overlay = tmp_path / "a.e1"
    overlay.write_bytes(head + b"\0" * (512 - len(head)) + name)
    e1 = Snapshot("e1", NOW, "disk-snapshot", None, "", "no", (SnapDisk("vda", "external", str(overlay)),))
    saved = {"vda": SavedDisk("vda", str(base), "qcow2", False)}
    assert policy.revert_problem(e1, "web1", saved, {}, [e1]) is None
    elsewhere = {"vda": SavedDisk("vda", str(tmp_path / "b.qcow2"), "qcow2", False)}
    assert "is missing" in policy.revert_problem(e1, "web1", elsewhere, {}, [e1])
    (tmp_path / "b.qcow2").write_bytes(base.read_bytes())
    assert f"is now backed by {base}" in policy.revert_problem(e1, "web1", elsewhere, {}, [e1])


def test_rename_of_an_internal_snapshot_only_back_to_its_tag():
    snaps = [internal("r1", 2), internal("s2", 1, "r1")]
    assert policy.rename_problem(snaps, "r1", "s1", held={"s1", "s2"}) is None
    assert "keeps the tag 'r1'" in policy.rename_problem(snaps, "r1", "s1", held={"r1", "s1"})
    assert "keeps the tag 'r1'" in policy.rename_problem(snaps, "r1", "x", held={"s1", "s2"})
    assert "keeps the tag 'r1'" in policy.rename_problem(snaps, "r1", "s1")
    assert policy.rename_problem(snaps, "r1", "s2", held={"s2"}) == "a snapshot named 's2' already exists"


def test_saved_disks_of_a_snapshot():
    xml = """<domainsnapshot><name>s1</name><domain type='qemu'><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2'/>
        <target dev='vda'/></disk>
      <disk type='block' device='disk'><driver type='raw'/><source dev='/dev/vg/b'/><target dev='vdb'/><readonly/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/></disk>
      <disk type='file' device='disk'><target dev='vdc'/></disk>
    </devices></domain></domainsnapshot>"""
    assert saved_disks(xml) == {"vda": SavedDisk("vda", "/img/a.qcow2", "qcow2", False),
                                "vdb": SavedDisk("vdb", "/dev/vg/b", "raw", True)}
    assert saved_disks("<domainsnapshot><name>s</name></domainsnapshot>") == {}


# --- free space -----------------------------------------------------------------------------------


def test_space_for_overlays_per_file_system():
    """One rule with kvm-backup's (space.py): metadata fully mapped + 256 MiB each, 16 MiB kept free."""
    overlays = [policy.Overlay("vda", "/a/x.qcow2", "/a/x.s", 64 << 20),
                policy.Overlay("vdb", "/a/y.qcow2", "/a/y.s", 64 << 20),
                policy.Overlay("vdc", "/b/z.qcow2", "/b/z.s", 1 << 40)]
    free = {"/a": (1, 600 << 20), "/b": (2, 10 << 20)}
    problems = space.space_problems(policy.overlay_needs(overlays), free.__getitem__)
    assert len(problems) == 1
    assert problems[0].startswith("not enough free space in /b for the overlays: 10 MiB free")
    assert space.space_problems(policy.overlay_needs(overlays[:2]), {"/a": (1, 528 << 20)}.__getitem__)
    assert not space.space_problems(policy.overlay_needs(overlays[:2]), {"/a": (1, 529 << 20)}.__getitem__)
    assert space.overlay_need(1 << 40) == (1 << 40) // 65536 * 10 + (256 << 20)


def test_default_overlay_beside_the_image():
    assert policy.default_overlay("/img/web1.qcow2", "nightly") == "/img/web1.nightly"
    assert policy.default_overlay("/img/web1", "n") == "/img/web1.n"


# --- images ----------------------------------------------------------------------------------------


def test_read_qcow2_header_and_raw(tmp_path):
    backing = b"/img/base.qcow2"
    head = struct.pack(">IIQIIQ", 0x514649FB, 3, 512, len(backing), 16, 64 << 20)
    top = tmp_path / "top.qcow2"
    top.write_bytes(head + b"\0" * (512 - len(head)) + backing)
    info = qcow2.read_image(str(top))
    assert (info.format, info.virtual_size, info.backing) == ("qcow2", 64 << 20, "/img/base.qcow2")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"x" * 4096)
    assert qcow2.read_image(str(raw)).virtual_size == 4096
    assert qcow2.read_image(str(raw)).format == "raw"
    assert qcow2.read_image(str(tmp_path / "missing")).virtual_size is None


def test_chain_info_follows_headers_past_the_xml(tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(struct.pack(">IIQIIQ", 0x514649FB, 3, 0, 0, 16, 1 << 20) + b"\0" * 100)
    name = b"base.qcow2"  # relative, as qemu-img writes it with -F and a bare name
    head = struct.pack(">IIQIIQ", 0x514649FB, 3, 512, len(name), 16, 1 << 20)
    top = tmp_path / "top.qcow2"
    top.write_bytes(head + b"\0" * (512 - len(head)) + name)
    infos = policy.chain_info({"vda": [Layer(str(top), "qcow2")]})
    assert [i.path for i in infos["vda"]] == [str(top), str(base)]


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def tagged(path, *tags, compat="1.1"):
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", str(path), "16M")
    for tag in tags:
        qemu_img("snapshot", "-c", tag, str(path))
    return str(path)


def listed_by_qemu_img(path):
    """(id, name, vm state size) of each snapshot as qemu-img itself reads the table (-U: no lock)."""
    info = json.loads(qemu_img("info", "--output=json", "-U", path))
    return [(s["id"], s["name"], s["vm-state-size"]) for s in info.get("snapshots", [])]


NAMES = ["a", "seven77", "eight888", "before-upgrade", "zwölf 🦉 ünïcode", "x" * 200, "1700000000"]


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_qcow2_snapshot_table_matches_qemu_img(tmp_path, compat):
    # names of every length modulo 8 (entries are padded), non-ASCII, long, and one that looks like an id
    path = tagged(tmp_path / "many.qcow2", *NAMES, compat=compat)
    found = qcow2.image_snapshots(path)
    assert [s.name for s in found] == NAMES
    assert [(s.id, s.name, s.vm_state_size) for s in found] == listed_by_qemu_img(path)
    assert all(abs(s.date - time.time()) < 600 for s in found)


def test_qcow2_snapshot_table_after_a_tag_is_deleted_and_duplicates(tmp_path):
    path = tagged(tmp_path / "d.qcow2", "one", "two", "three", "two")
    qemu_img("snapshot", "-d", "one", path)
    assert [(s.id, s.name) for s in qcow2.image_snapshots(path)] == [("2", "two"), ("3", "three"), ("4", "two")]
    assert [(s.id, s.name, s.vm_state_size) for s in qcow2.image_snapshots(path)] == listed_by_qemu_img(path)


def test_qcow2_without_snapshots_and_a_raw_file(tmp_path):
    assert qcow2.image_snapshots(tagged(tmp_path / "none.qcow2")) == []
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 65536)
    assert qcow2.image_snapshots(str(raw)) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert qcow2.image_snapshots(str(empty)) is None


def test_qcow2_truncated_or_corrupt_is_a_clear_error(tmp_path):
    path = tagged(tmp_path / "t.qcow2", "one", "two")
    data = (tmp_path / "t.qcow2").read_bytes()
    offset = struct.unpack(">Q", data[64:72])[0]
    cases = {
        "header": (data[:40], "truncated qcow2 header (40 of 72 bytes)"),
        "table gone": (data[:offset], "truncated qcow2 snapshot table (entry 1 of 2)"),
        "mid entry": (data[:offset + 20], "truncated qcow2 snapshot table (entry 1 of 2)"),
        "second entry": (data[:offset + 70], "truncated qcow2 snapshot table (entry 2 of 2)"),
        "huge count": (data[:60] + struct.pack(">I", 1 << 30) + data[64:], "corrupt qcow2 header"),
        "odd offset": (data[:64] + struct.pack(">Q", offset + 3) + data[72:], "corrupt qcow2 header"),
    }
    for label, (content, message) in cases.items():
        broken = tmp_path / f"broken-{label.replace(' ', '-')}.qcow2"
        broken.write_bytes(content)
        with pytest.raises(ImageError, match=re.escape(message)):
            qcow2.image_snapshots(str(broken))
    assert qcow2.image_snapshots(path) is not None  # the original is intact
    with pytest.raises(ImageError, match="cannot read the image"):
        qcow2.image_snapshots(str(tmp_path / "missing.qcow2"))
    with pytest.raises(ImageError, match="cannot read the image"):
        qcow2.image_snapshots(str(tmp_path))  # a directory


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("90m", 5400), ("12h", 43200), ("3d", 259200), ("1w", 604800), ("1d12h", 129600),
    ("1.5h", 5400), ("45", 45), (" 2D ", 172800), ("0s", 0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "d3", "-1d", "1d-2h", "h", "3 days", "1e3s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (42, "42s"), (125, "2m 5s"), (3600, "1h"), (3 * 86400 + 4 * 3600 + 59, "3d 4h"),
    (3 * 86400 + 59, "3d"), (18 * 3600 + 12 * 60, "18h 12m"), (-5, "0s"), (400 * 86400, "400d"),
])
def test_format_age(seconds, text):
    assert format_age(seconds) == text
