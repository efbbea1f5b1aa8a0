"""check-kvm-backup-age as a real process against libvirt's test driver (domain 'test'), on a folder of
archive names: it reads names, sizes and failure markers only."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from sensu_kvm.backup import archive as archives
from sensu_kvm.backup import catalog, tested
from tests.conftest import run

URI = ["-u", "test:///default"]


def check(folder: Path, *args: str):
    return run("check-kvm-backup-age", "--backup-dir", str(folder), "--state-dir", str(folder / "state"), *args, *URI)


def archive(folder: Path, domain: str, age: float, size: int = 1234) -> Path:
    path = folder / catalog.archive_name(domain, time.time() - age, "zstd")
    path.write_bytes(b"x" * size)
    return path


def test_fresh_old_missing_and_failed(tmp_path):
    result = check(tmp_path)
    assert result.returncode == 2
    assert result.stdout.startswith("CheckKvmBackupAge CRITICAL: test: no backup in")
    assert "| domains_without_backup=1;;;0;1" in result.stdout
    archive(tmp_path, "test", 30 * 3600)
    result = check(tmp_path)
    assert result.returncode == 1 and "test: newest backup 1d 6h old (1 kept)" in result.stdout
    age = re.search(r"test_age=(\d+)s;93600;180000;0", result.stdout)
    assert age and 108000 <= int(age.group(1)) <= 108000 + 30, result.stdout  # the archive was written just now
    assert "test_size=1234B;;;0" in result.stdout
    assert "domains_without_backup=0;;;0;1" in result.stdout
    archive(tmp_path, "test", 600, 99)
    result = check(tmp_path, "-w", "1h", "-c", "2h")
    assert result.returncode == 0, result.stdout
    assert "test_size=99B" in result.stdout
    catalog.write_marker(str(tmp_path), "test", "not enough free space in /srv/backup", time.time())
    result = check(tmp_path)
    assert result.returncode == 2 and "a later backup failed" in result.stdout and "free space" in result.stdout
    # a marker of a remote backup lives in the state folder
    catalog.clear_marker(str(tmp_path), "test")
    (tmp_path / "state").mkdir()
    catalog.write_marker(str(tmp_path / "state"), "test", "rsync failed", time.time())
    assert check(tmp_path).returncode == 2
    (tmp_path / "state" / ".kvm-backup-failed.test.json").write_text(json.dumps({"domain": "test", "time": 1}))
    assert check(tmp_path).returncode == 0


def test_bad_input(tmp_path):
    result = check(tmp_path / "missing")
    assert result.returncode == 2 and "cannot read" in result.stdout and "not mounted?" in result.stdout
    result = check(tmp_path, "-w", "soon")
    assert result.returncode == 3 and "invalid duration" in result.stderr
    result = check(tmp_path, "-d", "nosuch")
    assert result.returncode == 2 and "nosuch not found" in result.stdout


def make_archive(folder: Path, domain: str, age: float, payload: bytes = b"data") -> Path:
    """A real (tiny) kvm-backup archive of no disk, made by the engine's writer."""
    created = time.time() - age
    path = folder / catalog.archive_name(domain, created, "zstd")
    writer = archives.ArchiveWriter(str(path), "zstd")
    uuid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    header = {"format": catalog.FORMAT, "domain": domain, "uuid": uuid, "created": int(created), "mode": "offline",
              "consistency": "shut off", "disks": []}
    writer.member(catalog.HEADER, archives.header_json(header))
    xml = (f"<domain type='qemu'><name>{domain}</name><uuid>{uuid}</uuid></domain><!-- ".encode() + payload
           + b" -->")  # one that a restore would accept: verify checks that too
    files = [{"member": catalog.XML_MEMBER, "size": len(xml), "sha256": writer.member(catalog.XML_MEMBER, xml)}]
    writer.member(catalog.MANIFEST, archives.manifest_json(header, files))
    writer.close()
    return path


def test_list_verify_and_prune_as_processes(tmp_path):
    day = 86400.0
    paths = [make_archive(tmp_path, "web", age) for age in (10 * day, 3 * day, 2 * day, day, 60)]
    make_archive(tmp_path, "db", 40 * day)
    out = run("kvm-backup", "list", str(tmp_path))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["Domain", "Created"]
    assert len(lines) == 7 and all("offline" in line and "at creation" in line for line in lines[1:])
    listing = json.loads(run("kvm-backup", "list", str(tmp_path), "--json", "--domain", "db").stdout)
    assert [b["domain"] for b in listing["backups"]] == ["db"]
    assert run("kvm-backup", "verify", *map(str, paths)).returncode == 0

    dry = run("kvm-backup", "prune", str(tmp_path), "--keep-last", "2", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would delete") == 3
    assert len(list(tmp_path.iterdir())) == 6
    # the newest archive of web is damaged: it is kept, and nothing older goes
    data = bytearray(paths[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths[-1].write_bytes(bytes(data))
    result = run("kvm-backup", "prune", str(tmp_path), "--keep-last", "1")
    assert result.returncode == 0 and "does not verify" in result.stderr
    assert all(p.exists() for p in paths[:-1])
    # with a sound newest one, the policy applies; db's only archive always stays
    paths[-1].unlink()
    result = run("kvm-backup", "prune", str(tmp_path), "--keep-last", "1", "--keep-daily", "2")
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 3 and any(n.startswith("db-") for n in left)
    assert run("kvm-backup", "prune", str(tmp_path)).returncode == 2
    assert run("kvm-backup", "list", str(tmp_path / "missing")).returncode == 2


def write_tested(path: Path, result: str, age: float, message: str = "") -> None:
    tested.write(str(path), tested.Record(path.name, "0" * 64, result, "agent" if result == "passed" else "", 12.5,
                                          time.time() - age, message, "host1", "0.1.0"))


def test_require_tested(tmp_path):
    newest = archive(tmp_path, "test", 600)
    result = check(tmp_path, "--require-tested", "8d")
    assert result.returncode == 1, result.stdout
    # (10m, or 10m 1s when the second turned between writing the archive and the check)
    assert re.search(r"test: newest backup 10m( 1s)? old \(1 kept\); no backup passed a test restore", result.stdout)
    assert "tested_age" not in result.stdout
    assert check(tmp_path, "--require-tested", "8d", "--require-tested-critical", "15d").returncode == 2
    # a passed test of an older kept archive counts (weekly tests of daily backups)
    older = archive(tmp_path, "test", 3 * 86400)
    write_tested(older, "passed", 2 * 86400)
    result = check(tmp_path, "--require-tested", "8d", "--require-tested-critical", "15d")
    assert result.returncode == 0, result.stdout
    assert "last test restore passed 2d" in result.stdout
    assert re.search(r"test_tested_age=1728\d\ds;691200;1296000;0", result.stdout), result.stdout
    # too old: WARNING, then CRITICAL
    assert check(tmp_path, "--require-tested", "1d").returncode == 1
    assert check(tmp_path, "--require-tested", "1d", "--require-tested-critical", "36h").returncode == 2
    # the latest test failed: WARNING (CRITICAL with --require-tested-critical), even with an older pass
    write_tested(newest, "failed", 60, "the guest agent did not answer guest-ping within 120s")
    result = check(tmp_path, "--require-tested", "8d")
    assert result.returncode == 1
    assert "the latest test restore failed 1m ago: the guest agent did not answer" in result.stdout
    assert check(tmp_path, "--require-tested", "8d", "--require-tested-critical", "15d").returncode == 2
    write_tested(newest, "refused", 30, "verify: sha256 mismatch")
    assert "the latest test restore refused" in check(tmp_path, "--require-tested", "8d").stdout
    # a record that is not one (foreign, damaged, another archive's) counts as no test
    (tmp_path / (newest.name + ".tested.json")).write_text("{not json")
    assert "last test restore passed" in check(tmp_path, "--require-tested", "8d").stdout
    # without the option the records are not read
    assert check(tmp_path).returncode == 0


def test_require_tested_bad_value(tmp_path):
    result = check(tmp_path, "--require-tested", "weekly")
    assert result.returncode == 3 and "invalid duration" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
