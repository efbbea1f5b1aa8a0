"""pull.plan: the level a run of the api engine does, and each fallback to a full saying why (no
libvirt: the record, the destination's files and the checkpoint names are given)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sensu_kvm.backup import pull

DISKS = [pull.DiskNow("vda", "/img/a.qcow2", "qcow2", 64 << 20)]


def chain(dest: Path, depth: int = 0, disks: list[pull.DiskNow] | None = None) -> dict[str, Any]:
    """A record whose newest archive (written now in ``dest``) made checkpoint kvm-backup-2."""
    parent = dest / "g-20261202T100000Z.inc.kvmbak.tar.zst"
    parent.write_bytes(b"x" * 10)
    (dest / "g-20261201T100000Z.kvmbak.tar.zst").write_bytes(b"full")
    st = os.stat(parent)
    entry = pull.link(parent.name, "a" * 64, st.st_size, st.st_mtime, "inc", "kvm-backup-2",
                      "g-20261201T100000Z.kvmbak.tar.zst", "b" * 64, "kvm-backup-1", depth, disks or DISKS,
                      {"vda": "inc"})
    return {os.path.realpath(dest): entry}


def test_full_asked_is_full(tmp_path: Path) -> None:
    p = pull.plan(None, DISKS, chain(tmp_path), str(tmp_path), "full", checkpoints=["kvm-backup-2"])
    assert (p.level, p.why_full) == ("full", "")


def test_inc_and_auto_follow_the_chain(tmp_path: Path) -> None:
    record = chain(tmp_path, depth=3)
    for level in ("inc", "auto"):
        p = pull.plan(None, DISKS, record, str(tmp_path), level, checkpoints=["kvm-backup-1", "kvm-backup-2"])
        assert (p.level, p.why_full, p.since, p.depth) == ("inc", "", "kvm-backup-2", 4)
        assert (p.parent, p.parent_sha256) == ("g-20261202T100000Z.inc.kvmbak.tar.zst", "a" * 64)
        assert (p.bitmaps, p.whole) == (("vda",), ())


def test_diff_starts_from_the_full(tmp_path: Path) -> None:
    p = pull.plan(None, DISKS, chain(tmp_path, depth=3), str(tmp_path), "diff",
                  checkpoints=["kvm-backup-1", "kvm-backup-2"])
    assert (p.level, p.since, p.parent, p.parent_sha256, p.depth) == \
        ("diff", "kvm-backup-1", "g-20261201T100000Z.kvmbak.tar.zst", "b" * 64, 1)


@pytest.mark.parametrize(("change", "why"), [
    ("no record", "no chain record"),
    ("other dest", "in another destination"),
    ("parent gone", "is missing"),
    ("parent changed", "changed since it was written"),
    ("checkpoint gone", "the checkpoint kvm-backup-2 is gone from libvirt"),
    ("resized", "vda was resized (67108864 -> 134217728 bytes)"),
    ("too long", "the chain has 30 archives (--max-chain 30)"),
    ("unreadable", "the chain record is unreadable"),
    ("parent outside", "the chain record names '../etc/g-20261202T100000Z.inc.kvmbak.tar.zst', not an archive"),
    ("root hidden", "the chain record names '.g-20261201T100000Z.kvmbak.tar.zst', not an archive"),
])
def test_fallbacks_to_full(tmp_path: Path, change: str, why: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    record = chain(dest, depth=29 if change == "too long" else 2)
    disks = DISKS
    checkpoints = ["kvm-backup-1", "kvm-backup-2"]
    entry = record[os.path.realpath(dest)]
    if change == "no record":
        record = {}
    elif change == "other dest":
        record = {"/elsewhere": entry}
    elif change == "parent gone":
        os.unlink(dest / entry["archive"])
    elif change == "parent changed":
        (dest / entry["archive"]).write_bytes(b"y" * 11)
    elif change == "checkpoint gone":
        checkpoints = ["kvm-backup-1"]
    elif change == "resized":
        disks = [DISKS[0]._replace(virtual_size=128 << 20)]
    elif change == "unreadable":
        del entry["depth"]
    elif change == "parent outside":  # a state file edited to point anywhere: never followed
        outside = tmp_path / "etc"
        outside.mkdir()
        (outside / "g-20261202T100000Z.inc.kvmbak.tar.zst").write_bytes(b"x" * 10)
        entry["archive"] = "../etc/g-20261202T100000Z.inc.kvmbak.tar.zst"
    elif change == "root hidden":
        entry["root"] = ".g-20261201T100000Z.kvmbak.tar.zst"
    p = pull.plan(None, disks, record, str(dest), "auto", checkpoints=checkpoints)
    assert p.level == "full"
    assert why in p.why_full, p.why_full


def test_raw_and_new_disks_are_copied_whole(tmp_path: Path) -> None:
    disks = [*DISKS, pull.DiskNow("vdb", "/img/b.raw", "raw", 1 << 20), pull.DiskNow("vdc", "/img/c.qcow2", "qcow2", 1 << 20)]
    p = pull.plan(None, disks, chain(tmp_path), str(tmp_path), "inc", checkpoints=["kvm-backup-2"])
    assert (p.level, p.bitmaps, p.whole) == ("inc", ("vda",), ("vdb", "vdc"))
    assert pull.why_whole(disks[1]) == "a raw disk has no dirty bitmap"
    assert pull.why_whole(disks[2]) == "new since the parent archive"


def test_record_round_trip(tmp_path: Path) -> None:
    record = chain(tmp_path)
    entry = next(iter(record.values()))
    pull.save_record(str(tmp_path), "u-1", str(tmp_path), entry)
    pull.save_record(str(tmp_path), "u-1", "/other", {"archive": "x"})
    assert pull.load_record(str(tmp_path), "u-1") == {**record, "/other": {"archive": "x"}}
    (tmp_path / "u-1.chain.json").write_text("{not json")
    assert pull.load_record(str(tmp_path), "u-1") == {}


def test_names_of_a_run() -> None:
    run = pull.names("0123abcd-0000-0000-0000-000000000000", 0, {"vda": "/img/a.qcow2"})
    assert run.checkpoint == "kvm-backup-19700101T000000Z"
    assert run.socket == "/run/kvm-backup/nbd-0123abcd/backup.nbd"
    assert run.scratch == {"vda": "/img/.0123abcd.kvm-backup-scratch-19700101T000000Z.vda.qcow2"}
    assert pull.names("0123abcd-0", 0, {"vda": "/img/a.qcow2"}, "/scratch").scratch["vda"].startswith("/scratch/.")
