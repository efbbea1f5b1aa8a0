"""kvm-backup create's default engine (auto) on real libvirtd + QEMU (TCG): on this host, which has the
backup API, a live backup without --engine goes through it (kvm-backup/2) and says nothing on stderr; with
libvirt's domain capabilities saying <backup supported='no'/> (tests/faults: no-backup-api, a host without
the API) it takes the overlay engine, says why in one line on stderr, and writes kvm-backup/1; a --level
auto asked there is a full, saying why. Domains are spk-au-*."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import libvirt

from tests.conftest import FAULTS, run
from tests.hypervisor.conftest import own_fixtures
from tests.hypervisor.test_backup_chain_kill import left_over
from tests.hypervisor.test_backup_qemu import archives, noos, sources
from tests.rig import rig

PREFIX = "spk-au-"
URI = ["-u", rig.URI]
NO_API = {"PYTHONPATH": str(FAULTS), "SPK_FAULT": "no-backup-api"}
WHY = ("kvm-backup: spk-au-guest: overlay engine: the backup API cannot be used: this libvirt/QEMU has no "
       "incremental backup support (domain capabilities: no <backup supported='yes'/>)")

conn, images = own_fixtures(PREFIX)


def header(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("kvm-backup.json")
        assert member is not None
        return json.loads(member.read())


def create(dest: Path, state: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    dest.mkdir(exist_ok=True)
    result = run("kvm-backup", "create", "spk-au-guest", "--dest", str(dest), "--state-dir", str(state),
                 "--compress", "none", *args, *URI, env=env, timeout=180)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout, result.stderr


def test_auto_is_the_default_and_falls_back_to_overlay_saying_why(conn, images, tmp_path):
    dom = noos(conn, images, "spk-au-guest", fill_mib=8)
    base = sources(dom)["vda"]
    state = tmp_path / "state"

    # this host has the backup API: the default takes it, quietly
    out, err = create(tmp_path / "api", state, "--json")
    (summary,) = json.loads(out)["backups"]
    assert err == "" and summary["engine"] == "api" and summary["mode"] == "live", (out, err)
    assert header(Path(summary["archive"]))["format"] == "kvm-backup/2"
    assert left_over(dom, images, tmp_path / "api") == []

    # a host without it: overlay, one line on stderr saying why, kvm-backup/1
    out, err = create(tmp_path / "overlay", state, env=NO_API)
    assert err.splitlines() == [WHY], err
    assert out.startswith("spk-au-guest: ") and ", live, overlay, full, " in out and out.count("\n") == 1, out
    (archive,) = archives(tmp_path / "overlay")
    assert header(archive)["format"] == "kvm-backup/1"
    assert os.stat(archive).st_mode & 0o777 == 0o600
    assert run("kvm-backup", "verify", str(archive)).returncode == 0
    assert sources(dom) == {"vda": base} and left_over(dom, images, tmp_path / "overlay") == []

    # an incremental asked for there: a full, the summary says why (stderr: still the one line)
    out, err = create(tmp_path / "overlay", state, "--level", "auto", env=NO_API)
    assert err.splitlines() == [WHY], err
    assert ", overlay, full instead of auto: the overlay engine writes full backups only, " in out, out
    assert [header(a)["format"] for a in archives(tmp_path / "overlay")] == ["kvm-backup/1"] * 2
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    dom.destroy()


def test_a_qcow2_v2_disk_takes_overlay_saying_why(conn, images, tmp_path):
    """A qcow2 v2 (compat=0.10) image cannot store the checkpoint's dirty bitmap: auto backs it up
    through the overlay engine, as before auto was the default, saying so, rather than fail."""
    disk = images / "spk-au-v2.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(disk), "32M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", str(disk)], check=True, capture_output=True)
    dom = conn.defineXML(rig.noos_domain_xml("spk-au-v2", disk))
    dom.create()
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run("kvm-backup", "create", "spk-au-v2", "--dest", str(dest), "--state-dir", str(tmp_path / "state"),
                 "--compress", "none", *URI, timeout=180)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        f"kvm-backup: spk-au-v2: overlay engine: the backup API cannot be used: vda: {disk} is a qcow2 v2 image "
        "(compat=0.10), which cannot hold a dirty bitmap (qemu-img amend -o compat=1.1 upgrades it, the guest shut "
        "off)"], result.stderr
    assert ", live, overlay, full, " in result.stdout, result.stdout
    (archive,) = archives(dest)
    assert header(archive)["format"] == "kvm-backup/1"
    assert sources(dom) == {"vda": str(disk)} and left_over(dom, images, dest) == []
    assert dom.listAllCheckpoints() == []
    dom.destroy()
