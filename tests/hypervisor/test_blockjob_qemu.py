"""check-kvm-blockjob on real QEMU block jobs (no-OS guests on qemu:///system, named spk-bj-*):

- a commit of a backing image held slow by a bandwidth limit (1 MiB/s over 64 MiB), running
  across two runs: its progress is reported and moves, nothing is stalled;
- an active commit of an empty overlay, ready at once and never pivoted (no progress ever again):
  "ready, waiting for pivot", judged by its age since the check first saw it; with a kvm-backup
  journal written as kvm-backup writes it (sensu_kvm.backup.journal.Journal) for a run that is
  gone, it is named as kvm-backup's, and `kvm-backup recover` is the fix that ends it;
- a backing chain of three external disk-only snapshots (`virsh snapshot-create-as --disk-only
  --no-metadata`), judged against --chain-warning/--chain-critical.

Every job is aborted, every domain destroyed and undefined, every image removed, even when a test
fails. A bandwidth of 1 byte/s is not a stall on QEMU 7.2 (it still copies a chunk per time slice:
docs/decisions.md), so the job that makes no progress is the ready one.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from sensu_kvm.backup.journal import Journal
from tests.conftest import run
from tests.hypervisor.conftest import own_fixtures
from tests.perfdata_consumers import perfdata
from tests.rig import rig

PREFIX = "spk-bj-"
conn, images = own_fixtures(PREFIX)
SYSTEM = "qemu:///system"
FLOOR = 5.2  # seconds between two runs: a run within 5 s of the last one repeats its verdict
MIB = 2**20


def qemu_io(path: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-c", command, str(path)], check=True, capture_output=True)


def overlay(path: Path, backing: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(path)],
                   check=True, capture_output=True)
    return path


def abort_jobs(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive() and dom.blockJobInfo("vda", 0):
            dom.blockJobAbort("vda", 0)


def blockjob(*args: str, state: Path) -> tuple[int, str, dict[str, str]]:
    out = run("check-kvm-blockjob", "-u", SYSTEM, "--match", f"^{PREFIX}", "--state-dir", str(state), "-v", *args)
    assert out.stderr == "", out
    return out.returncode, out.stdout, perfdata(out.stdout)


@pytest.fixture(scope="module")
def slow(conn: libvirt.virConnect, images: Path) -> Iterator[libvirt.virDomain]:
    """spk-bj-slow on top.qcow2 <- mid.qcow2 <- base.qcow2, each with data of its own."""
    base = rig.make_qcow2(images / "slow-base.qcow2")
    qemu_io(base, "write -P 1 0 16M")
    mid = overlay(images / "slow-mid.qcow2", base)
    qemu_io(mid, "write -P 2 0 8M")
    top = overlay(images / "slow-top.qcow2", mid)
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}slow", top))
    dom.create()
    try:
        yield dom
    finally:
        abort_jobs(dom)


@pytest.fixture(scope="module")
def ready(conn: libvirt.virConnect, images: Path) -> Iterator[libvirt.virDomain]:
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}ready", rig.make_qcow2(images / "ready.qcow2")))
    dom.create()
    try:
        yield dom
    finally:
        abort_jobs(dom)


def test_a_slow_commit_is_reported_and_moves_across_two_runs(slow: libvirt.virDomain, tmp_path: Path) -> None:
    images = Path(slow.XMLDesc(0).split("slow-top.qcow2")[0].split("'")[-1])
    slow.blockCommit("vda", str(images / "slow-base.qcow2"), str(images / "slow-mid.qcow2"), MIB,
                     libvirt.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES)
    try:
        code, first, perf = blockjob("-d", f"{PREFIX}slow", state=tmp_path)
        assert code == 0, first
        assert first.startswith(f"CheckKvmBlockjob OK: {PREFIX}slow: vda commit "), first
        progress = float(perf[f"{PREFIX}slow_blockjob_progress_vda"].split("%")[0])
        assert 0 <= progress < 50
        assert perf[f"{PREFIX}slow_blockjob_age_vda"] == "0s;21600;86400;0"
        assert perf[f"{PREFIX}slow_chain_depth_vda"] == "2;3;8;0"  # from the bulk call's backing entries
        assert perf["blockjobs"] == "1;;;0"
        time.sleep(FLOOR)
        code, second, perf = blockjob("-d", f"{PREFIX}slow", state=tmp_path)
        assert code == 0, second
        assert "no progress" not in second and "seen for 5s" in second, second
        later = float(perf[f"{PREFIX}slow_blockjob_progress_vda"].split("%")[0])
        assert later > progress + 5, (progress, later)  # ~1 MiB/s of 64 MiB: ~8 % in 5 s
        assert int(perf[f"{PREFIX}slow_blockjob_age_vda"].split("s")[0]) >= 5
        info = slow.blockJobInfo("vda", 0)
        assert info["type"] == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT and info["cur"] < info["end"]
    finally:
        slow.blockJobAbort("vda", 0)


def test_a_chain_of_chosen_depth_against_the_thresholds(ready: libvirt.virDomain, tmp_path: Path) -> None:
    for n in range(3):
        done = subprocess.run(["virsh", "-c", SYSTEM, "snapshot-create-as", ready.name(), f"s{n}", "--disk-only",
                               "--no-metadata", "--atomic"], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    code, out, perf = blockjob("-d", ready.name(), "--chain-warning", "2", "--chain-critical", "5", state=tmp_path)
    assert (code, out.splitlines()[0]) == (1, f"CheckKvmBlockjob WARNING: {PREFIX}ready: vda backing chain 3 "
                                              "images deep"), out
    assert perf[f"{PREFIX}ready_chain_depth_vda"] == "3;2;5;0"
    code, out, _perf = blockjob("-d", ready.name(), "--chain-critical", "2", state=tmp_path)
    assert code == 2, out


def is_ready(dom: libvirt.virDomain) -> bool:
    info = dom.blockJobInfo("vda", 0)
    return bool(info) and info["cur"] == info["end"]


def chain(dom: libvirt.virDomain) -> list[str]:
    from sensu_kvm.backup.hostinfo import live_chains  # noqa: PLC0415

    return live_chains(dom.XMLDesc(0))["vda"]


def test_a_ready_commit_never_pivoted_is_named_as_kvm_backups_and_recover_ends_it(
        ready: libvirt.virDomain, tmp_path: Path) -> None:
    """Follows the chain test: vda is on the third snapshot's overlay."""
    top, base = chain(ready)[:2]
    backup_state = tmp_path / "kvm-backup"
    journal = Journal(str(backup_state), ready.UUIDString())
    backup_state.mkdir()
    gone_pid = 2**22 + 4321  # above any pid_max Linux allows (4194304): no process has it, the run is gone
    journal.save(domain=ready.name(), uuid=ready.UUIDString(), pid=gone_pid, started=time.time(), mode="live",
                 partial=str(tmp_path / ".x.partial"), overlays={"vda": {"overlay": top, "base": base}},
                 stopped=False, suspended=False, phase="commit")
    state = tmp_path / "state"
    flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
    ready.blockCommit("vda", None, None, 0, flags)  # an empty overlay: ready at once, and never pivoted
    rig.wait_for(lambda: is_ready(ready), timeout=10, what="the active commit to be ready")
    args = ["-d", ready.name(), "--backup-state-dir", str(backup_state), "--age-warning", "4s"]
    code, first, perf = blockjob(*args, state=state)
    name = ready.name()
    assert (code, first.splitlines()[0]) == (
        0, f"CheckKvmBlockjob OK: {name}: vda active commit 100 % (ready, waiting for pivot, started by kvm-backup; "
           f"run kvm-backup recover {name} if it stays)"), first
    assert perf[f"{name}_blockjob_progress_vda"] == "100%;;;0;100"
    time.sleep(FLOOR)
    code, second, perf = blockjob(*args, state=state)
    assert code == 1, second  # older than --age-warning; waiting for a pivot is not "no progress"
    assert second.splitlines()[0].startswith(f"CheckKvmBlockjob WARNING: {name}: vda active commit 100 % (ready, "
                                             "waiting for pivot, seen for 5s, started by kvm-backup;"), second
    assert "no progress" not in second
    # a corrupt state file costs the job's history, never the check
    (state_file,) = state.glob("blockjob-*.json")
    state_file.write_text('{"version": 1, "samples": ')
    code, third, perf = blockjob(*args, state=state)
    assert code == 0 and perf[f"{name}_blockjob_age_vda"] == "0s;4;86400;0", third
    assert json.loads(state_file.read_text())["samples"]  # rebuilt with the job
    recovered = run("kvm-backup", "recover", name, "-u", SYSTEM, "--state-dir", str(backup_state), timeout=60)
    assert recovered.returncode == 0, recovered
    assert ready.blockJobInfo("vda", 0) == {} and chain(ready)[0] == base
    code, after, perf = blockjob(*args, state=state)
    assert (code, perf["blockjobs"], perf[f"{name}_chain_depth_vda"]) == (0, "0;;;0", "2;3;8;0"), after
