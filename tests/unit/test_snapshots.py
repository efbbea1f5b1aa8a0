"""kvm-snapshot's planning, pure: the tree, prune selection, rename and delete safety, free space,
durations, qcow2 headers."""

import json
import random
import re
import struct
import subprocess
import time

import pytest

from sensu_kvm import snapshots
from sensu_kvm.durations import format_age, parse_duration
from sensu_kvm.snapinfo import Layer, SnapDisk, Snapshot, parse_snapshot

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
    assert snapshots.children(snaps) == {"a": ["b", "c"], "b": ["d"], "c": [], "d": [], "lone": []}
    assert snapshots.roots(snaps) == ["a", "lone"]
    assert snapshots.descendants("a", snapshots.children(snaps)) == ["b", "c", "d"]
    assert snapshots.tree_lines(snaps) == [
        "a",
        "+- b",
        "|  +- d (current)",
        "+- c",
        "lone",
    ]


def test_tree_with_unknown_parent_makes_a_root():
    snaps = [internal("b", 4, "gone"), internal("c", 3, "b")]
    assert snapshots.roots(snaps) == ["b"]
    assert snapshots.tree_lines(snaps) == ["b", "+- c"]


def test_snapshot_record_has_children_and_descendants():
    snaps = [internal("a", 5), internal("b", 4, "a"), internal("c", 3, "b")]
    rec = snapshots.snapshot_record(snaps[0], "dom", NOW, snapshots.children(snaps))
    assert rec["children"] == ["b"]
    assert rec["descendants"] == ["b", "c"]
    assert rec["age_seconds"] == 5 * DAY
    assert rec["location"] == "internal"


# --- prune -----------------------------------------------------------------------------------------


def test_prune_by_count_deletes_the_oldest_internal_ones():
    snaps = [internal("a", 5), internal("b", 4, "a"), internal("c", 3, "b"), internal("d", 2, "c", current=True)]
    plan = snapshots.plan_prune(snaps, NOW, None, 2)
    # internal snapshots are independent tags: libvirt reparents the children
    assert deleted(plan) == ["b", "a"]
    assert kept(plan) == {"d": "the current snapshot", "c": "one of the 2 newest"}


def test_prune_by_age():
    snaps = [internal("old", 10), internal("mid", 3, "old"), internal("new", 1, "mid", current=True)]
    plan = snapshots.plan_prune(snaps, NOW, 7 * DAY, None)
    assert deleted(plan) == ["old"]
    assert kept(plan)["mid"] == "not old enough"


def test_prune_by_age_and_count_needs_both():
    snaps = [internal("a", 10), internal("b", 9), internal("c", 1)]
    plan = snapshots.plan_prune(snaps, NOW, 5 * DAY, 1)
    assert sorted(deleted(plan)) == ["a", "b"]
    plan = snapshots.plan_prune(snaps, NOW, 5 * DAY, 2)
    assert deleted(plan) == ["a"]


def test_prune_never_the_current_one_even_when_oldest():
    snaps = [internal("a", 10, current=True), internal("b", 9), internal("c", 8)]
    plan = snapshots.plan_prune(snaps, NOW, None, 0)
    assert "a" not in deleted(plan)
    assert kept(plan)["a"] == "the current snapshot"


def test_prune_never_an_external_parent_of_a_kept_snapshot():
    snaps = [external("e1", 10), external("e2", 9, "e1"), external("e3", 1, "e2", current=True)]
    plan = snapshots.plan_prune(snaps, NOW, DAY * 2, None)
    assert deleted(plan) == []
    assert kept(plan) == {"e3": "the current snapshot", "e2": "e3 depends on it", "e1": "e2 depends on it"}


def test_prune_never_an_internal_parent_of_a_kept_external_snapshot():
    snaps = [internal("i1", 10), external("e1", 9, "i1", current=True)]
    plan = snapshots.plan_prune(snaps, NOW, None, 0)
    assert deleted(plan) == []
    assert kept(plan)["i1"] == "e1 depends on it"


def test_prune_an_external_child_of_an_internal_parent_is_kept_with_the_reason():
    snaps = [internal("i1", 10), external("e1", 9, "i1"), internal("i2", 1, current=True)]
    plan = snapshots.plan_prune(snaps, NOW, None, 1)
    assert "e1" not in deleted(plan)
    assert "libvirt cannot delete it" in kept(plan)["e1"]
    assert kept(plan)["i1"] == "e1 depends on it"


def test_prune_deletes_a_whole_external_branch_children_first():
    snaps = [external("e1", 10), external("e2", 9, "e1"), internal("cur", 1, current=True)]
    plan = snapshots.plan_prune(snaps, NOW, None, 1)
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
        plan = snapshots.plan_prune(snaps, NOW, rng.choice([None, 5 * DAY]), rng.choice([None, 0, 1, 3]) or 0)
        gone = set(deleted(plan))
        assert current.name not in gone
        index = snapshots.by_name(snaps)
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
        snapshots.plan_prune([], NOW, None, None)


# --- rename, edit ---------------------------------------------------------------------------------


def test_rename_refused_for_internal_with_the_reason():
    snaps = [internal("a", 2), external("e", 1, "a")]
    problem = snapshots.rename_problem(snaps, "a", "b")
    assert problem is not None
    assert "keeps the tag 'a'" in problem and "reverts by name" in problem
    assert snapshots.rename_problem(snaps, "e", "a") == "a snapshot named 'a' already exists"
    assert snapshots.rename_problem(snaps, "e", "") is not None
    assert snapshots.rename_problem(snaps, "e", "new") is None


XML = """<domainsnapshot><name>e1</name><state>disk-snapshot</state><parent><name>base</name></parent>
<creationTime>1700000000</creationTime><disks><disk name='vda' snapshot='external' type='file'>
<source file='/img/a.e1'/></disk></disks></domainsnapshot>"""


def test_xml_edits_keep_everything_else():
    edited = snapshots.set_description(snapshots.set_parent(snapshots.set_name(XML, "r1"), "newbase"), "text & more")
    snap = parse_snapshot(edited)
    assert (snap.name, snap.parent, snap.description, snap.created) == ("r1", "newbase", "text & more", 1700000000)
    assert snap.disks == (SnapDisk("vda", "external", "/img/a.e1"),)
    orphan = parse_snapshot(snapshots.set_parent(XML.replace("<parent><name>base</name></parent>", ""), "p"))
    assert orphan.parent == "p"


# --- delete ---------------------------------------------------------------------------------------


def test_delete_problems():
    snaps = [internal("i1", 5), external("e1", 4, "i1"), external("e2", 3), external("e3", 2, "e2"),
             internal("i2", 1, "e3")]
    chain = {"vda": [Layer("/img/a.e3", "qcow2"), Layer("/img/a.qcow2", "qcow2")]}
    ok = lambda path: True  # noqa: E731
    assert snapshots.delete_problem(snaps, "i1", 9_000_000, chain, ok) is None
    assert "libvirt 8.10.0 cannot delete" in snapshots.delete_problem(snaps, "e3", 8_010_000, chain, ok)
    assert "with children (e3)" in snapshots.delete_problem(snaps, "e2", 9_000_000, chain, ok)
    assert "with children (i2)" in snapshots.delete_problem(snaps, "e3", 9_000_000, chain, ok)
    assert "parent 'i1' is internal" in snapshots.delete_problem(snaps, "e1", 9_000_000, chain, ok)
    leaf = [external("e2", 3), external("e3", 2, "e2")]
    assert snapshots.delete_problem(leaf, "e3", 9_000_000, chain, ok) is None
    broken = snapshots.delete_problem(leaf, "e3", 9_000_000, chain, lambda p: p != "/img/a.qcow2")
    assert broken == "the backing chain of vda is broken (/img/a.qcow2 missing): nothing deleted"


# --- free space -----------------------------------------------------------------------------------


def test_space_for_overlays_per_file_system():
    overlays = [snapshots.Overlay("vda", "/a/x.qcow2", "/a/x.s", 64 << 20),
                snapshots.Overlay("vdb", "/a/y.qcow2", "/a/y.s", 64 << 20),
                snapshots.Overlay("vdc", "/b/z.qcow2", "/b/z.s", 1 << 40)]
    free = {"/a": (1, 100 << 20), "/b": (2, 10 << 20)}
    problems = snapshots.space_problems(overlays, free.__getitem__)
    assert len(problems) == 1
    assert problems[0].startswith("not enough free space in /b for the overlays: 10 MiB free")
    assert snapshots.space_problems(overlays[:2], {"/a": (1, 18 << 20)}.__getitem__)
    assert not snapshots.space_problems(overlays[:2], {"/a": (1, 19 << 20)}.__getitem__)
    assert snapshots.overlay_need(1 << 40) == (1 << 40) // 65536 * 10 + (1 << 20)


def test_default_overlay_beside_the_image():
    assert snapshots.default_overlay("/img/web1.qcow2", "nightly") == "/img/web1.nightly"
    assert snapshots.default_overlay("/img/web1", "n") == "/img/web1.n"


# --- images ----------------------------------------------------------------------------------------


def test_read_qcow2_header_and_raw(tmp_path):
    backing = b"/img/base.qcow2"
    head = struct.pack(">IIQIIQ", 0x514649FB, 3, 512, len(backing), 16, 64 << 20)
    top = tmp_path / "top.qcow2"
    top.write_bytes(head + b"\0" * (512 - len(head)) + backing)
    info = snapshots.read_image(str(top))
    assert (info.format, info.virtual_size, info.backing) == ("qcow2", 64 << 20, "/img/base.qcow2")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"x" * 4096)
    assert snapshots.read_image(str(raw)).virtual_size == 4096
    assert snapshots.read_image(str(raw)).format == "raw"
    assert snapshots.read_image(str(tmp_path / "missing")).virtual_size is None


def test_chain_info_follows_headers_past_the_xml(tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(struct.pack(">IIQIIQ", 0x514649FB, 3, 0, 0, 16, 1 << 20) + b"\0" * 100)
    name = b"base.qcow2"  # relative, as qemu-img writes it with -F and a bare name
    head = struct.pack(">IIQIIQ", 0x514649FB, 3, 512, len(name), 16, 1 << 20)
    top = tmp_path / "top.qcow2"
    top.write_bytes(head + b"\0" * (512 - len(head)) + name)
    infos = snapshots.chain_info({"vda": [Layer(str(top), "qcow2")]})
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
    found = snapshots.image_snapshots(path)
    assert [s.name for s in found] == NAMES
    assert [(s.id, s.name, s.vm_state_size) for s in found] == listed_by_qemu_img(path)
    assert all(abs(s.date - time.time()) < 600 for s in found)


def test_qcow2_snapshot_table_after_a_tag_is_deleted_and_duplicates(tmp_path):
    path = tagged(tmp_path / "d.qcow2", "one", "two", "three", "two")
    qemu_img("snapshot", "-d", "one", path)
    assert [(s.id, s.name) for s in snapshots.image_snapshots(path)] == [("2", "two"), ("3", "three"), ("4", "two")]
    assert [(s.id, s.name, s.vm_state_size) for s in snapshots.image_snapshots(path)] == listed_by_qemu_img(path)


def test_qcow2_without_snapshots_and_a_raw_file(tmp_path):
    assert snapshots.image_snapshots(tagged(tmp_path / "none.qcow2")) == []
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 65536)
    assert snapshots.image_snapshots(str(raw)) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert snapshots.image_snapshots(str(empty)) is None


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
        with pytest.raises(snapshots.ImageError, match=re.escape(message)):
            snapshots.image_snapshots(str(broken))
    assert snapshots.image_snapshots(path) is not None  # the original is intact
    with pytest.raises(snapshots.ImageError, match="cannot read the image"):
        snapshots.image_snapshots(str(tmp_path / "missing.qcow2"))
    with pytest.raises(snapshots.ImageError, match="cannot read the image"):
        snapshots.image_snapshots(str(tmp_path))  # a directory


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
