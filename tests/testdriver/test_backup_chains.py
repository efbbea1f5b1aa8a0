"""kvm-backup verify, list, prune (and restore) of kvm-backup/2 chains written file-only
(tests/chains.py: a full, two incrementals, a diff), as real processes; restore against libvirt's
test driver. No QEMU: the images are compared byte for byte (qcow2 through qemu-img)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sensu_kvm.backup import catalog
from tests import chains
from tests.conftest import refuses, run


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def chain(tmp_path: Path) -> list[chains.Point]:
    folder = tmp_path / "archives"
    folder.mkdir()
    return chains.build_chain(folder)


# --- verify -----------------------------------------------------------------------------------------


def test_verify_of_each_point_verifies_its_chain(chain):
    full, inc1, inc2, diff = (str(p.path) for p in chain)
    for point, links in zip(chain, ([full], [full, inc1], [full, inc1, inc2], [full, diff]), strict=True):
        result = run("kvm-backup", "verify", str(point.path), "--json")
        assert result.returncode == 0, result.stderr
        [report] = json.loads(result.stdout)
        assert report["ok"] and report["level"] == point.level and report["format"] == catalog.FORMAT_V2
        assert report["chain"] == links
    text = run("kvm-backup", "verify", inc2)
    assert text.returncode == 0 and "its chain of 3 archives back to the full too" in text.stdout


def test_a_flipped_byte_in_the_middle_inc_fails_verify_naming_it(chain):
    chains.flip_byte(chain[1].path)
    line = refuses("kvm-backup", 1, "verify", str(chain[2].path))
    assert chain[1].path.name in line and "verification failed" in line
    assert run("kvm-backup", "verify", str(chain[0].path)).returncode == 0  # the full is sound
    assert run("kvm-backup", "verify", str(chain[3].path)).returncode == 0  # so is the diff on it


def test_a_missing_parent_fails_verify_naming_it(chain):
    chain[1].path.unlink()
    line = refuses("kvm-backup", 1, "verify", str(chain[2].path))
    assert f"its parent {chain[1].path} is missing" in line and "its chain is broken" in line


def blank_full(path: Path, checkpoint: str) -> Path:
    """A sound full of the same domain and disks (all zeros)."""
    disks = [chains.Disk("vda", "qcow2", bytes(2 * chains.MIB)), chains.Disk("vdb", "raw", bytes(chains.MIB))]
    return chains.write(path, disks, chains.full_chain(checkpoint), "zstd")


def test_a_replaced_parent_fails_verify_by_its_sha256(chain, tmp_path):
    other = blank_full(tmp_path / "other.kvmbak.tar.zst", "cp0")
    shutil.copyfile(other, chain[0].path)  # a sound full, but not the one inc1 was made on
    assert run("kvm-backup", "verify", str(chain[0].path)).returncode == 0
    line = refuses("kvm-backup", 1, "verify", str(chain[1].path))
    assert chain[0].path.name in line and "is not the archive it was made from" in line


# --- list -------------------------------------------------------------------------------------------


def test_list_shows_levels_parents_and_roots(chain):
    folder = chain[0].path.parent
    result = run("kvm-backup", "list", str(folder), "--json", "--verify")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["backups"]
    assert [(r["level"], r["parent"], r["root"]) for r in rows] == [
        ("full", None, chain[0].path.name), ("inc", chain[0].path.name, chain[0].path.name),
        ("inc", chain[1].path.name, chain[0].path.name), ("diff", chain[0].path.name, chain[0].path.name)]
    assert [r["verified"] for r in rows] == ["yes, now"] + ["yes, now (with its chain)"] * 3
    text = run("kvm-backup", "list", str(folder)).stdout.splitlines()
    assert text[0].split()[4] == "Level" and text[0].split()[-1] == "Parent"
    column = text[0].index("Level")
    assert [line[column:].split()[0] for line in text[1:]] == ["full", "inc", "inc", "diff"]
    assert [line.split()[-1] for line in text[1:]] == ["-", chain[0].path.name, chain[1].path.name,
                                                       chain[0].path.name]
    chain[1].path.unlink()
    result = run("kvm-backup", "list", str(folder), "--json")
    assert result.returncode == 1
    rows = json.loads(result.stdout)["backups"]
    assert [r["verified"].startswith("FAILED: its chain is broken") for r in rows] == [False, True, False]


# --- prune ------------------------------------------------------------------------------------------


def test_prune_keep_last_1_keeps_the_chain_of_the_newest(chain, tmp_path):
    folder = chain[0].path.parent
    chain[3].path.unlink()  # the newest is then inc2, on inc1, on the full
    older = blank_full(folder / catalog.archive_name(chains.NAME, 1714615200 - 86400, "zstd"), "old")
    dry = run("kvm-backup", "prune", str(folder), "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        f"keep {chain[2].path} (the newest)",
        f"keep {chain[1].path} (needed by {chain[2].path.name} (its chain))",
        f"keep {chain[0].path} (needed by {chain[2].path.name} (its chain))",
        f"would delete {older} (beyond the policy)"]
    assert older.exists()
    plan = json.loads(run("kvm-backup", "prune", str(folder), "--keep-last", "1", "--dry-run", "--json").stdout)
    assert [(p["level"], p["action"]) for p in plan] == [("inc", "keep"), ("inc", "keep"), ("full", "keep"),
                                                         ("full", "would delete")]
    result = run("kvm-backup", "prune", str(folder), "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"deleted {older}\n"
    assert names(folder) == sorted(p.path.name for p in chain[:3])


def test_prune_with_a_diff_keeps_the_full_and_lets_the_incs_go(chain):
    folder = chain[0].path.parent
    result = run("kvm-backup", "prune", str(folder), "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    assert names(folder) == sorted([chain[0].path.name, chain[3].path.name])
    assert run("kvm-backup", "verify", str(chain[3].path)).returncode == 0


def test_prune_reports_a_broken_chain_and_never_counts_it(chain):
    folder = chain[0].path.parent
    chain[3].path.unlink()
    chain[0].path.unlink()  # inc1 and inc2 stand on nothing: no backup at all
    dry = run("kvm-backup", "prune", str(folder), "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0
    assert "its chain is broken" in dry.stderr and chain[1].path.name in dry.stderr
    # nothing of the domain verifies: nothing goes (never the last of a domain, even a broken one)
    result = run("kvm-backup", "prune", str(folder), "--keep-last", "1")
    assert names(folder) == sorted(p.path.name for p in chain[1:3])
    assert "its chain is broken" in result.stderr
    # with a sound full of the domain newer than them, the broken ones go
    newer = blank_full(folder / catalog.archive_name(chains.NAME, 1714615200 + 3600, "zstd"), "new")
    result = run("kvm-backup", "prune", str(folder), "--keep-last", "1", "--keep-daily", "5")
    assert result.returncode == 0, result.stderr
    assert names(folder) == [newer.name]
    assert result.stdout.count("its chain is broken") == 2


# --- the age check ----------------------------------------------------------------------------------


def test_the_age_check_counts_an_inc_as_the_newest_backup(tmp_path):
    now = time.time()
    full = tmp_path / catalog.archive_name("test", now - 30 * 3600, "zstd")
    full.write_bytes(b"x" * 1000)
    inc = tmp_path / catalog.archive_name("test", now - 600, "zstd", "inc")
    inc.write_bytes(b"x" * 77)
    (tmp_path / f".{inc.name}.partial").write_bytes(b"x")
    assert [(e.level, e.size) for e in catalog.scan(str(tmp_path))] == [("full", 1000), ("inc", 77)]
    result = run("check-kvm-backup-age", "--backup-dir", str(tmp_path), "--state-dir", str(tmp_path / "state"),
                 "-w", "1h", "-c", "2h", "-u", "test:///default")
    assert result.returncode == 0, result.stdout
    assert "test: newest backup" in result.stdout and "(2 kept)" in result.stdout and "test_size=77B" in result.stdout


# --- restore ----------------------------------------------------------------------------------------

URI = ["-u", "test:///default"]


def test_restore_of_each_point_gives_its_images_back(chain, tmp_path):
    for index, point in enumerate(chain):
        out = tmp_path / f"point{index}"
        out.mkdir()
        new = ["--name", f"copy{index}"] if index == 2 else []
        result = run("kvm-backup", *URI, "restore", str(point.path), "--image-dir", str(out), "--json", *new)
        assert result.returncode == 0, result.stderr
        done = json.loads(result.stdout)
        prefix = f"copy{index}" if new else chains.NAME
        assert done["images"] == {"vda": str(out / f"{prefix}-vda.qcow2"), "vdb": str(out / f"{prefix}-vdb.raw")}
        assert done["format"] == catalog.FORMAT_V2 and done["chain"][-1] == str(point.path)
        assert chains.as_raw(done["images"]["vda"], "qcow2", tmp_path) == point.images["vda"], point.level
        assert Path(done["images"]["vdb"]).read_bytes() == point.images["vdb"], point.level
        info = subprocess.run(["qemu-img", "info", "--output=json", done["images"]["vda"]], capture_output=True,
                              text=True, check=True).stdout
        assert '"format": "qcow2"' in info and "backing-filename" not in info
        assert names(out) == sorted([f"{prefix}-vda.qcow2", f"{prefix}-vdb.raw"])  # no work folder left
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())
    text = run("kvm-backup", *URI, "restore", str(chain[1].path), "--image-dir", str(tmp_path / "point0"))
    assert text.returncode == 2 and "exists already" in text.stderr  # as v1: never over an image


def test_restore_refuses_what_v1_refuses_in_the_last_archive_and_leaves_nothing(chain, tmp_path):
    folder = chain[0].path.parent
    out = tmp_path / "out"
    out.mkdir()
    evil = "<serial type='file'><source path='/etc/cron.d/spk-ch-evil'/><target port='0'/></serial>"
    vda = chains.Disk("vda", "qcow2", chain[1].images["vda"], "inc", old=chain[0].images["vda"])
    vdb = chains.Disk("vdb", "raw", chain[1].images["vdb"])
    bad = chains.write(chains.stamped(folder, 90, "inc"), [vda, vdb],
                       chains.inc_chain(chain[0].path, "cp0", "cp9", 1), "zstd", devices=evil)
    before = names(folder)
    line = refuses("kvm-backup", 2, *URI, "restore", str(bad), "--image-dir", str(out))
    assert "/etc/cron.d/spk-ch-evil" in line
    assert names(out) == [] and names(folder) == before and not Path("/etc/cron.d/spk-ch-evil").exists()
    # images only where v1 puts them: not into the archive's folders when this host does not vouch for them
    line = refuses("kvm-backup", 2, *URI, "restore", str(chain[2].path))  # no --image-dir: the archive's folders
    assert "/var/lib/libvirt/images" in line and names(folder) == before
    assert not Path(f"/var/lib/libvirt/images/{chains.NAME}-vda.qcow2").exists()


def test_a_restore_that_fails_while_rebuilding_leaves_nothing(chain, tmp_path):
    folder = chain[0].path.parent
    out = tmp_path / "out"
    out.mkdir()
    # an inc whose sparse map goes beyond its disk: refused by the rebuild, after the full was written
    vda = chains.Disk("vda", "qcow2", chain[0].images["vda"], "inc", parts=[(0, chains.BLK), (8 * chains.MIB,
                                                                                             chains.BLK)],
                      zeroed=[])
    vdb = chains.Disk("vdb", "raw", chain[0].images["vdb"])
    bad = chains.write(chains.stamped(folder, 30, "inc"), [vda, vdb], chains.inc_chain(chain[0].path, "cp0", "cpx", 1),
                       "zstd", strict=False)
    line = refuses("kvm-backup", 2, *URI, "restore", str(bad), "--image-dir", str(out))
    assert bad.name in line and "goes beyond the size" in line
    assert names(out) == []  # the work folder is gone too
    # a damaged parent: its last byte (past its header, which still reads; the middle of a small
    # archive falls in the header's frame or after it depending on how well the images compress)
    data = bytearray(chain[1].path.read_bytes())
    data[-1] ^= 0xFF
    chain[1].path.write_bytes(bytes(data))
    line = refuses("kvm-backup", 2, *URI, "restore", str(chain[2].path), "--image-dir", str(out))
    assert f"its parent {chain[1].path.name} is not the archive it was made from" in line and names(out) == []


def test_restore_of_a_chain_without_a_copied_disk_defines_the_domain(tmp_path):
    folder = tmp_path / "archives"
    folder.mkdir()
    full = chains.write(chains.stamped(folder, 0), [], chains.full_chain("cp0"), "zstd")
    inc = chains.write(chains.stamped(folder, 60, "inc"), [], chains.inc_chain(full, "cp0", "cp1", 1), "zstd")
    result = run("kvm-backup", *URI, "restore", str(inc), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == {} and names(folder) == sorted([full.name, inc.name])
