"""kvm-backup/2 archives without libvirt: disks given as extents and a read callback
(ArchiveWriter.extents_member), incrementals whose holes mean "unchanged" and whose ``zeroed`` ranges
became zero, resizes between archives, point-in-time rebuilds of a full and two incrementals compared
byte for byte, GNU tar on a full, and crafted archives refused in one line with nothing written."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from sensu_kvm.backup import archive, catalog, policy, reader, restore
from sensu_kvm.errors import BadRequest, Corrupt, KvmError
from tests.chains import (
    BLK,
    MIB,
    NAME,
    UUID,
    Disk,
    as_raw,
    full_chain,
    inc_chain,
    listing,
    pattern,
    stamped,
    write,
)

# --- the member -------------------------------------------------------------------------------------


def test_gnu_tar_extracts_a_v2_full_as_the_raw_disk(tmp_path):
    content = bytes(pattern(3 * MIB, {0: 0x11, 2 * MIB: 0x22}))
    path = write(tmp_path / "full.kvmbak.tar.zst", [Disk("vda", "qcow2", content)], full_chain(), "zstd")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(path), "-C", str(out)], check=True)
    assert (out / "disks" / "vda.img").read_bytes() == content
    assert (out / "disks" / "vda.img").stat().st_blocks * 512 < 1 * MIB  # its holes stay holes
    with pytest.raises(Corrupt, match="format 'kvm-backup/2'"):
        reader.read_header(str(path))  # kvm-backup/1 only unless the caller says both


def test_the_writer_refuses_extents_it_cannot_store(tmp_path):
    writer = archive.ArchiveWriter(str(tmp_path / "x.kvmbak.tar"), "none")
    try:
        for parts, says in (([(0, BLK), (BLK // 2, BLK)], "overlaps"), ([(MIB - 512, 1024)], "beyond the size")):
            with pytest.raises(KvmError, match=says):
                writer.extents_member("disks/vda.img", MIB, parts, lambda v, o: len(v))
    finally:
        writer.abort()
    assert listing(tmp_path) == []


def test_a_hole_in_an_incremental_is_unchanged_and_zeroed_ranges_become_zero(tmp_path):
    old = pattern(MIB, {0: 1, BLK: 2, 4 * BLK: 3})
    new = bytearray(old)
    new[BLK:2 * BLK] = bytes(BLK)  # became zero: listed as zeroed, not stored
    new[8 * BLK:9 * BLK] = b"\x44" * BLK  # new data
    full = write(stamped(tmp_path, 0), [Disk("vda", "raw", bytes(old))], full_chain())
    disk = Disk("vda", "raw", bytes(new), "inc", old=bytes(old))
    assert disk.parts == [(8 * BLK, BLK)] and disk.zeroed == [[BLK, BLK]]
    inc = write(stamped(tmp_path, 60, "inc"), [disk], inc_chain(full, "cp0", "cp1", 1))
    out = tmp_path / "out"
    out.mkdir()
    images = restore.restore_files(str(inc), str(out))
    assert Path(images["vda"]).read_bytes() == bytes(new)
    assert listing(out) == [f"{NAME}-vda.raw"]  # no work folder left
    assert Path(images["vda"]).stat().st_mode & 0o777 == 0o600


def test_a_chain_restores_at_every_point_through_a_grow_and_a_shrink(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    # vda: qcow2, 2 MiB -> grows to 3 MiB (with writes in the new part) -> shrinks to 1.5 MiB
    vda = [pattern(2 * MIB, {0: 0xA0, 5 * BLK: 0xA1, 31 * BLK: 0xA2})]
    grown = pattern(3 * MIB, {0: 0xB0, 31 * BLK: 0xA2, 40 * BLK: 0xB1})  # block 5 became zero
    vda.append(grown)
    shrunk = bytearray(grown[:24 * BLK])
    shrunk[3 * BLK:4 * BLK] = b"\xc0" * BLK
    vda.append(shrunk)
    # vdb: raw, copied whole each time (a raw disk has no bitmap: level full inside an incremental)
    vdb = [pattern(MIB, {0: 0x10}), pattern(MIB, {BLK: 0x20}), pattern(2 * MIB, {20 * BLK: 0x30})]
    paths: list[Path] = []
    for point in range(3):
        disks = [Disk("vda", "qcow2", bytes(vda[point]), "full" if point == 0 else "inc",
                      old=bytes(vda[point - 1]) if point else None),
                 Disk("vdb", "raw", bytes(vdb[point]))]
        chain = full_chain() if point == 0 else inc_chain(paths[-1], f"cp{point - 1}", f"cp{point}", point)
        paths.append(write(stamped(archives, 60 * point, "full" if point == 0 else "inc"), disks, chain, "zstd"))
    assert [link.path for link in reader.resolve_chain(str(paths[2]))] == [str(p) for p in paths]
    verified = reader.verify_chain(str(paths[2]))
    assert [(p, d) for p, _m, d in verified] == [(str(p), reader.file_sha256(str(p))) for p in paths]
    for point, path in enumerate(paths):
        out = tmp_path / f"point{point}"
        out.mkdir()
        images = restore.restore_files(str(path), str(out))
        assert as_raw(images["vda"], "qcow2", tmp_path) == bytes(vda[point]), f"vda at point {point}"
        assert Path(images["vdb"]).read_bytes() == bytes(vdb[point]), f"vdb at point {point}"
        info = subprocess.run(["qemu-img", "info", "--output=json", images["vda"]], capture_output=True,
                              text=True, check=True).stdout
        assert '"format": "qcow2"' in info and "backing-filename" not in info
        assert listing(out) == sorted([f"{NAME}-vda.qcow2", f"{NAME}-vdb.raw"])


# --- crafted archives: refused in one line, nothing written ------------------------------------------


def crafted_cases(folder: Path) -> dict[str, tuple[Path, type, str]]:
    """label -> (the archive to restore, the refusal's class, what its line says)."""
    base = bytes(pattern(MIB, {0: 1, 4 * BLK: 2}))
    full = write(stamped(folder, 0), [Disk("vda", "raw", base)], full_chain())
    cases: dict[str, tuple[Path, type, str]] = {}

    def add(label: str, disk: Disk, refused: type, says: str, parent: Path = full, strict: bool = False,
            **kw: Any) -> None:
        sub = folder / label
        sub.mkdir()
        parent_copy = sub / parent.name
        parent_copy.write_bytes(parent.read_bytes())
        chain = kw.pop("chain", None) or inc_chain(parent_copy, "cp0", "cp1", 1)
        cases[label] = (write(stamped(sub, 60, "inc"), [disk], chain, strict=strict, **kw), refused, says)

    def inc(**kw: Any) -> Disk:
        return Disk("vda", "raw", base, "inc", **{"parts": [(0, BLK)], "zeroed": [], **kw})

    add("extent-beyond-size", inc(parts=[(0, BLK), (MIB, BLK)]), policy.Unsafe, "goes beyond the size")
    add("overlapping-extents", inc(parts=[(0, 2 * BLK), (BLK, BLK)]), policy.Unsafe, "overlaps the one before")
    add("zeroed-beyond-size", inc(zeroed=[[MIB - BLK, 2 * BLK]]), policy.Unsafe, "goes beyond the virtual size")
    add("zeroed-overlaps-data", inc(zeroed=[[BLK // 2, BLK]]), policy.Unsafe, "overlaps the zeroed range")
    resized = inc()
    add("size-not-virtual-size", resized, policy.Unsafe, "is not the disk's virtual size",
        header_changes={"disks": [{**resized.header(), "virtual_size": 2 * MIB}]})
    add("member-dotdot", inc(member="disks/../../evil.img"), policy.Unsafe, "not an image its header lists")
    add("inc-in-a-full", inc(), policy.Unsafe, "does not fit a full archive", chain=full_chain())
    add("parent-not-a-name", inc(), policy.Unsafe, "is not the name of an archive",
        chain={**catalog.chain_record("inc", "cp1", "cp0", "../" + full.name, "0" * 64)})
    # the header lists a member name with ../ (the writer then stores that member)
    dotdot = inc()
    dotdot.member = "disks/../vda.img"
    add("header-member-dotdot", dotdot, policy.Unsafe, "is not disks/vda.img",
        header_changes={"disks": [{**dotdot.header(), "member": "disks/../vda.img"}]})
    # the parent was replaced by another full after the incremental was made
    add("parent-sha256", inc(), policy.Unsafe, "is not the archive it was made from")
    swapped = folder / "parent-sha256" / full.name
    swapped.unlink()
    write(swapped, [Disk("vda", "raw", bytes(pattern(MIB, {0: 9})))], full_chain())
    sub = folder / "parent-missing"
    sub.mkdir()
    cases["parent-missing"] = (write(stamped(sub, 60, "inc"), [inc()], inc_chain(full, "cp0", "cp1", 1)),
                               BadRequest, "is missing")
    return cases


@pytest.fixture(scope="module")
def crafted_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, type, str]]:
    return crafted_cases(tmp_path_factory.mktemp("crafted-v2"))


@pytest.mark.parametrize("label", ["extent-beyond-size", "overlapping-extents", "zeroed-beyond-size",
                                   "zeroed-overlaps-data", "size-not-virtual-size", "member-dotdot",
                                   "header-member-dotdot", "inc-in-a-full", "parent-not-a-name", "parent-sha256",
                                   "parent-missing"])
def test_a_crafted_v2_archive_is_refused_in_one_line_and_nothing_is_written(crafted_archives, tmp_path, label):
    path, refused, says = crafted_archives[label]
    out = tmp_path / "out"
    out.mkdir()
    around = listing(path.parent.parent)
    with pytest.raises(refused) as caught:
        restore.restore_files(str(path), str(out))
    line = str(caught.value)
    assert says in line and "\n" not in line, line
    assert isinstance(caught.value, (BadRequest, policy.Unsafe))  # kvm-backup: exit 2, bad input
    assert listing(out) == []
    assert listing(path.parent.parent) == around
    with pytest.raises(refused, match=says.replace("'", ".")):  # verify of the chain refuses it too
        reader.verify_chain(str(path))
    assert not any(p.name == "evil.img" for p in tmp_path.parent.rglob("evil.img"))


def plain_v2(level: str = "inc", **disk: Any) -> dict[str, Any]:
    chain = full_chain() if level == "full" else catalog.chain_record(
        level, "cp1", "cp0", f"{NAME}-20240502T020000Z.kvmbak.tar.zst", "a" * 64)
    entry = {**Disk("vda", "qcow2", bytes(MIB), "full" if level == "full" else "inc").header(), **disk}
    return {"format": catalog.FORMAT_V2, "domain": NAME, "uuid": UUID, "created": 1714615200, "disks": [entry],
            "chain": chain}


@pytest.mark.parametrize(("header", "says"), [
    ({**plain_v2(), "chain": None}, "no chain object"),
    ({**plain_v2(), "chain": {**plain_v2()["chain"], "level": "weekly"}}, "is not full, inc or diff"),
    ({**plain_v2(), "chain": {**plain_v2()["chain"], "since": "../x"}}, "not a plain checkpoint name"),
    ({**plain_v2(), "chain": {**plain_v2()["chain"], "since": None}}, "names no checkpoint it starts from"),
    ({**plain_v2(), "chain": {**plain_v2()["chain"], "parent_sha256": "A" * 64}}, "is not a sha256"),
    ({**plain_v2(), "chain": {**plain_v2()["chain"], "parent": ".hidden-20240502T020000Z.kvmbak.tar"}},
     "is not the name of an archive"),
    ({**plain_v2("full"), "chain": {**full_chain(), "parent": "x"}}, "names a parent"),
    (plain_v2(stored="file"), "not raw-sparse"),
    (plain_v2(virtual_size=True), "is not a size"),
    (plain_v2(virtual_size=-1), "is not a size"),
    (plain_v2(zeroed=[[0, 0]]), "is not [offset, length]"),
    (plain_v2(zeroed=[[0, 1.5]]), "is not [offset, length]"),
    (plain_v2(zeroed=[[BLK, BLK], [0, BLK]]), "out of order"),
    (plain_v2(zeroed="all"), "not a list"),
    (plain_v2(zeroed=[[0, 1]] * (catalog.MAX_ZEROED + 1)), "at most 100000"),
])
def test_v2_headers_that_are_refused(header, says):
    policy.check_header(header)
    with pytest.raises(policy.Unsafe, match=says.replace("[", r"\[").replace(".", r"\.")):
        policy.check_v2(header)


def test_a_plain_v2_header_passes():
    for level in ("full", "inc", "diff"):
        header = plain_v2(level, zeroed=[[0, BLK], [4 * BLK, BLK]])
        assert policy.check_v2(header)["level"] == level
