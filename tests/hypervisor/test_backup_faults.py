"""The fault harness of kvm-backup create and recover against real libvirtd + QEMU (TCG), through the
installed command: kill -9 at seeded random and event-triggered points of live, stop and suspend runs,
with `kvm-backup recover` raced against whatever libvirt is still finishing; SIGTERM, SIGINT and SIGHUP
in every phase; internal errors after the snapshot (faults from tests/faults); an undo that fails too.
After each, the guest must run on its own image with nothing left behind. Every live run says --engine
overlay (the default, auto, takes the backup API on the rig). Domains are spk-bkf-*."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import BIN, FAULTS, refuses, run
from tests.hypervisor.conftest import own_fixtures
from tests.hypervisor.test_backup_qemu import archives, journal_phase, noos, sources
from tests.rig import rig

PREFIX = "spk-bkf-"
URI = ["-u", rig.URI]
TAG = "kvm-backup-overlay"
OVERLAY = ("--engine", "overlay")  # every live run here is of the overlay engine (the default is auto: api here)


conn, images = own_fixtures(PREFIX)


@pytest.fixture(scope="module")
def writer(conn: libvirt.virConnect, images: Path) -> tuple[libvirt.virDomain, Path]:
    """The tiny Linux guest writing its 32 MiB disk over and over; and its serial log."""
    kernel, initrd = rig.ensure_guest()
    disk = rig.make_qcow2(images / "spk-bkf-writer.qcow2", "32M")
    log = images / "writer.log"
    dom = conn.defineXML(rig.linux_guest_xml("spk-bkf-writer", disk, kernel, initrd, "write", log))
    dom.create()
    rig.wait_serial(log, "SPK-WRITE-WRAP", timeout=120)  # written once: the image has data
    return dom, log


def launch(*args: str, fault: str = "") -> subprocess.Popen[str]:
    """kvm-backup in the background (to be killed or signalled), with SPK_FAULT when given."""
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    if fault:
        env.update(PYTHONPATH=str(FAULTS), SPK_FAULT=fault)
    return subprocess.Popen([str(BIN / "kvm-backup"), *args, *URI], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def overlays_of(base: str) -> list[str]:
    stem = Path(base).stem
    return sorted(str(p) for p in Path(base).parent.iterdir() if p.name.startswith(stem + ".") and TAG in p.name)


def deleted_images_open() -> list[str]:
    """Disk images that a QEMU process still has open after they were deleted (the data loss)."""
    found = []
    for pid_file in Path("/run/libvirt/qemu").glob("*.pid"):
        pid = pid_file.read_text().strip()
        with_fds = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd) for fd in with_fds.iterdir()]
        except OSError:
            continue
        found += [f"{pid}: {link}" for link in links if link.endswith(" (deleted)") and ".qcow2" in link]
    return found


def chain_below(dom: libvirt.virDomain) -> list[str]:
    """The backing images libvirt lists under each disk of the live XML (none: on its own image)."""
    root = ET.fromstring(dom.XMLDesc(0))
    return [src.get("file", "") for src in root.iterfind("devices/disk/backingStore/source")]


def assert_back_on_its_image(dom: libvirt.virDomain, base: str, dest: Path, state_dir: Path, what: str) -> None:
    """The guest on its own image, running or as it was, and nothing of the run left."""
    assert sources(dom) == {"vda": base}, what
    assert chain_below(dom) == [], what
    assert sources(dom, libvirt.VIR_DOMAIN_XML_INACTIVE) == {"vda": base}, what
    if dom.isActive():
        assert dom.blockJobInfo("vda", 0) == {}, what
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, (what, dom.state())
    assert overlays_of(base) == [], what
    assert deleted_images_open() == [], what
    left = sorted(p.name for p in state_dir.iterdir()) if state_dir.exists() else []
    assert [n for n in left if not n.endswith(".lock")] == [], (what, left)
    assert [p.name for p in dest.iterdir() if p.name.endswith(".partial") or p.name.endswith(".tmp")] == [], what


def wait_overlay(proc: subprocess.Popen[str], base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not overlays_of(base):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no overlay appeared"
        time.sleep(0.001)


def wait_open(proc: subprocess.Popen[str], qemu: int, timeout: float = 30) -> None:
    """Until QEMU has the overlay open (libvirt is in the middle of the snapshot)."""
    deadline = time.monotonic() + timeout
    folder = Path(f"/proc/{qemu}/fd")
    while True:
        for fd in folder.iterdir():
            with contextlib.suppress(OSError):
                if TAG in os.readlink(fd):
                    return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "QEMU never opened an overlay"


@pytest.fixture(scope="module")
def commits() -> Iterator[list[str]]:
    """The disks of every active commit job that libvirt reports completed (pivoted), as it happens."""
    libvirt.virEventRegisterDefaultImpl()
    done: list[str] = []
    connection = rig.connect()

    def on_job(_conn, _dom, disk, kind, status, _opaque):
        if kind == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT and status == libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED:
            done.append(disk)

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, daemon=True).start()
    callback = connection.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, on_job, None)
    yield done
    connection.domainEventDeregisterAny(callback)
    connection.close()


def wait_phase(proc: subprocess.Popen[str], state_dir: Path, phase: str, timeout: float = 60) -> bool:
    """Whether the run reached ``phase`` (False: it ended first)."""
    rig.wait_for(lambda: journal_phase(state_dir) == phase or proc.poll() is not None, timeout=timeout,
                 interval=0.005, what=f"phase {phase}")
    return proc.poll() is None


def kill_points(seed: int = 11) -> list[tuple[str, str, float, float]]:
    """(label, event, delay after the event, delay before recover): distinct and reproducible."""
    rng = random.Random(seed)
    points = [(f"overlay appears, recover after {d:.2f}s", "overlay", 0.0, d) for d in (0, 0.05, 0.1, 0.25)]
    # QEMU stopped for a while the moment the overlay appears: libvirt is held in the middle of the
    # snapshot (as on a loaded host) while recover looks, and goes on after it answered or waited
    points += [(f"overlay appears, QEMU stalled {d:.2f}s", "stall", d, 0.0) for d in (0.4, 0.8)]
    points += [(f"QEMU opens the overlay, QEMU stalled {d:.2f}s", "stall-open", d, 0.0) for d in (0.4, 0.8, 1.2)]
    points += [(f"copy +{d:.2f}s", "copy", d, rng.uniform(0, 0.25)) for d in sorted(rng.uniform(0, 0.6) for _ in range(4))]
    points += [(f"commit +{d:.2f}s", "commit", d, rng.uniform(0, 0.25)) for d in sorted(rng.uniform(0, 0.4) for _ in range(4))]
    points += [(f"verify +{d:.3f}s", "verify", d, 0.0) for d in sorted(rng.uniform(0, 0.03) for _ in range(3))]
    points += [(f"start +{d:.2f}s", "start", d, rng.uniform(0, 0.25)) for d in sorted(rng.uniform(0.2, 1.8) for _ in range(5))]
    return points


def test_kill_9_at_random_points_of_live_runs_then_recover_races_libvirt(conn, images, writer, commits, tmp_path):
    dom, serial = writer
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    dest = tmp_path / "dest"
    dest.mkdir()
    state = ["--state-dir", str(state_dir)]
    killed = 0
    for number, (label, event, delay, race) in enumerate(kill_points()):
        what = f"kill point {number} ({label})"
        extra = ["--commit-bwlimit", "1"] if event == "commit" else ["--bwlimit", "24"]
        proc = launch("create", "spk-bkf-writer", "--dest", str(dest), "--compress", "none", *OVERLAY, *extra,
                      *state)
        qemu = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
        if event in ("overlay", "stall"):
            wait_overlay(proc, base)
        elif event == "stall-open":
            wait_open(proc, qemu)
        elif event != "start":
            wait_phase(proc, state_dir, event)
        seen = len(commits)
        # the racer: recover, or at every sixth point the next create (which recovers first)
        racing = (["create", "spk-bkf-writer", "--dest", str(dest), "--compress", "none", *OVERLAY] if number % 6 == 5
                  else ["recover", "spk-bkf-writer"])
        if event.startswith("stall"):
            os.kill(proc.pid, signal.SIGKILL)
            os.kill(qemu, signal.SIGSTOP)
            try:
                killed += 1
                proc.communicate()
                racer = launch(*racing, *state)
                time.sleep(delay)
            finally:
                os.kill(qemu, signal.SIGCONT)
            out, err = racer.communicate(timeout=120)
            result = subprocess.CompletedProcess(racer.args, racer.returncode, out, err)
        else:
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.communicate()
            time.sleep(race)  # recover starts while libvirt may still be finishing the killed run's call
            result = run("kvm-backup", *racing, *state, *URI, timeout=120)
        assert result.returncode == 0, (what, racing[0], result.stdout, result.stderr)
        time.sleep(0.3)  # anything libvirt was still finishing has finished by now
        assert_back_on_its_image(dom, base, dest, state_dir, f"{what}: {result.stdout}")
        if racing[0] == "recover":  # it says "committed back" exactly when libvirt finished a commit job for it
            assert ("committed back" in result.stdout) == ("vda" in commits[seen:]), (what, result.stdout,
                                                                                      commits[seen:])
        if number % 4 == 3:
            result = run("kvm-backup", "create", "spk-bkf-writer", "--dest", str(dest), "--compress", "none", *OVERLAY,
                         *state, *URI, timeout=120)
            assert result.returncode == 0, (what, result.stdout, result.stderr)
            assert_back_on_its_image(dom, base, dest, state_dir, f"{what}, then a create")
    assert killed >= len(kill_points()) - 3, killed  # nearly every point was hit in flight
    writes = rig.serial_text(serial).count("SPK-WRITE ")
    rig.wait_for(lambda: rig.serial_text(serial).count("SPK-WRITE ") > writes, timeout=60,
                 what="the guest to keep writing")
    result = run("kvm-backup", "create", "spk-bkf-writer", "--dest", str(dest), *OVERLAY, *state, *URI, timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    newest = archives(dest)[-1]
    assert run("kvm-backup", "verify", str(newest)).returncode == 0
    assert_back_on_its_image(dom, base, dest, state_dir, "the last create")


def test_kill_9_in_stop_and_suspend_runs_then_recover(conn, images, tmp_path):
    dom = noos(conn, images, "spk-bkf-modes", fill_mib=16)
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    dest = tmp_path / "dest"
    dest.mkdir()
    state = ["--state-dir", str(state_dir)]
    points = [("stop", "stop", 0.5), ("stop", "destroy", 0.0), ("stop", "copy", 0.2),
              ("suspend", "suspend", 0.0), ("suspend", "copy", 0.2)]
    for mode, event, delay in points:
        what = f"--mode {mode}, killed in {event} +{delay}s"
        extra = ["--force", "--shutdown-timeout", "1"] if mode == "stop" else []
        proc = launch("create", "spk-bkf-modes", "--mode", mode, *extra, "--dest", str(dest), "--bwlimit", "8",
                      *state)
        assert wait_phase(proc, state_dir, event), (what, proc.communicate())
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        result = run("kvm-backup", "recover", "spk-bkf-modes", *state, *URI, timeout=120)
        assert result.returncode == 0, (what, result.stdout, result.stderr)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, (what, dom.state(), result.stdout)
        assert_back_on_its_image(dom, base, dest, state_dir, f"{what}: {result.stdout}")
        assert archives(dest) == [], what
    result = run("kvm-backup", "create", "spk-bkf-modes", "--mode", "suspend", "--dest", str(dest), *state, *URI)
    assert result.returncode == 0, result.stderr
    dom.destroy()


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# phase: (the fault that holds the run in that phase, the domain, extra options)
PHASES = {
    "start": ("pause-after-phase:start", "noos", []),
    "snapshot": ("slow-snapshot", "noos", []),  # the snapshot is made: the signal comes as the call returns
    "copy": ("", "noos", ["--bwlimit", "4"]),
    "commit": ("", "writer", ["--commit-bwlimit", "1"]),  # a writing guest outruns it: hurried by the signal
    "verify": ("pause-after-phase:verify", "noos", []),
}


def test_signals_in_every_phase_undo_everything(conn, images, writer, tmp_path):
    guests = {"noos": noos(conn, images, "spk-bkf-sig", fill_mib=16), "writer": writer[0]}
    for phase, (fault, which, extra) in PHASES.items():
        dom = guests[which]
        base = sources(dom)["vda"]
        for sig in SIGNALS:
            what = f"{sig.name} in {phase}"
            state_dir = tmp_path / f"state-{phase}-{sig.name}"
            dest = tmp_path / f"dest-{phase}-{sig.name}"
            dest.mkdir()
            proc = launch("create", dom.name(), "--dest", str(dest), "--state-dir", str(state_dir), *OVERLAY, *extra,
                          fault=fault)
            if phase == "snapshot":
                wait_overlay(proc, base)
                assert wait_phase(proc, state_dir, "snapshot"), what
            else:
                assert wait_phase(proc, state_dir, phase), (what, proc.communicate())
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, (what, out, err)
            lines = err.strip().splitlines()
            assert lines == [f"kvm-backup: {dom.name()}: interrupted by {sig.name}; the domain is back on its own "
                             "images"], (what, err)
            assert out == "", what
            assert_back_on_its_image(dom, base, dest, state_dir, what)
            assert [p.name for p in dest.iterdir()] == [f".kvm-backup-failed.{dom.name()}.json"], what
            age = run("check-kvm-backup-age", "--backup-dir", str(dest), "-d", dom.name(), *URI)
            assert age.returncode == 2 and sig.name in age.stdout, (what, age.stdout)
    guests["noos"].destroy()


@pytest.mark.parametrize("fault", ["crash-after-copy", "crash-in-commit"])
def test_an_internal_error_after_the_snapshot_is_undone_and_marked(conn, images, writer, tmp_path, fault):
    dom = writer[0]
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run("kvm-backup", "create", "spk-bkf-writer", "--dest", str(dest), "--state-dir", str(state_dir),
                 *OVERLAY, *URI, env={"PYTHONPATH": str(FAULTS), "SPK_FAULT": fault}, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"kvm-backup: spk-bkf-writer: backup failed: internal error: RuntimeError: injected fault: "
        f"{'after the copy' if fault == 'crash-after-copy' else 'in the commit'}"], result.stderr
    assert_back_on_its_image(dom, base, dest, state_dir, fault)
    assert [p.name for p in dest.iterdir()] == [".kvm-backup-failed.spk-bkf-writer.json"]
    age = run("check-kvm-backup-age", "--backup-dir", str(dest), "-d", "spk-bkf-writer", *URI)
    assert age.returncode == 2 and "RuntimeError" in age.stdout, age.stdout
    # a value that cannot work is refused before anything is done
    line = refuses("kvm-backup", 2, "create", "spk-bkf-writer", "--dest", str(dest), "--state-dir", str(state_dir),
                   "--commit-bwlimit", "1e300", *URI)
    assert "--commit-bwlimit" in line
    assert [p.name for p in dest.iterdir()] == [".kvm-backup-failed.spk-bkf-writer.json"]


def test_an_undo_that_fails_keeps_the_overlay_in_the_journal_and_says_so(conn, images, tmp_path):
    dom = noos(conn, images, "spk-bkf-stuck", fill_mib=4)
    base = sources(dom)["vda"]
    state_dir = tmp_path / "state"
    dest = tmp_path / "dest"
    dest.mkdir()
    # a journal write killed half-way by an earlier run left a temporary file (its process is gone)
    state_dir.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = state_dir / f"{dom.UUIDString()}.journal.json.{gone.pid}.tmp"
    stale.write_text("{")
    result = run("kvm-backup", "create", "spk-bkf-stuck", "--dest", str(dest), "--state-dir", str(state_dir),
                 *OVERLAY, *URI, env={"PYTHONPATH": str(FAULTS), "SPK_FAULT": "commit-refused"}, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert not stale.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    overlay = sources(dom)["vda"]
    assert overlay != base and TAG in overlay  # honestly still on the overlay, and it says so
    journal = state_dir / f"{dom.UUIDString()}.journal.json"
    assert f"vda still on {overlay}, recorded in {journal}; run kvm-backup recover spk-bkf-stuck" in lines[0], lines
    assert "back on its own images" not in lines[0]
    assert json.loads(journal.read_text())["overlays"]["vda"]["overlay"] == overlay
    assert [p.name for p in dest.iterdir()] == [".kvm-backup-failed.spk-bkf-stuck.json"]
    result = run("kvm-backup", "recover", "spk-bkf-stuck", "--state-dir", str(state_dir), *URI, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"spk-bkf-stuck: vda committed back from {overlay} onto {base}\n"
    assert_back_on_its_image(dom, base, dest, state_dir, "recovered")
    # nothing left: recover says so, and does nothing
    result = run("kvm-backup", "recover", "spk-bkf-stuck", "--state-dir", str(state_dir), *URI)
    assert (result.returncode, result.stdout) == (0, "nothing to recover\n"), result.stderr
    dom.destroy()


def test_recover_reports_a_killed_publish_and_a_killed_journal_write_truthfully(tmp_path):
    """A run killed between linking its archive and removing the temporary name, another killed in
    the copy, a journal write killed half-way: what they leave, as recover finds it (test driver:
    the domains are gone)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    final = dest / "gone1-20240101T000000Z.kvmbak.tar"
    final.write_bytes(b"archive")
    linked = dest / f".{final.name}.partial"
    os.link(final, linked)
    unfinished = dest / ".gone2-20240101T000000Z.kvmbak.tar.partial"
    unfinished.write_bytes(b"half")
    for uuid, name, partial in (("11111111-1111-1111-1111-111111111111", "gone1", linked),
                                ("22222222-2222-2222-2222-222222222222", "gone2", unfinished)):
        (state_dir / f"{uuid}.journal.json").write_text(json.dumps(
            {"uuid": uuid, "domain": name, "partial": str(partial), "final": str(final) if name == "gone1" else "",
             "overlays": {}, "phase": "publish" if name == "gone1" else "copy"}))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (state_dir / f"33333333-3333-3333-3333-333333333333.journal.json.{gone.pid}.tmp").write_text("{")
    result = run("kvm-backup", "recover", "--all", "--state-dir", str(state_dir), "-u", "test:///default")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"gone1: removed the temporary name {linked} of the published archive {final}",
        f"gone2: removed the unfinished archive {unfinished}"]
    assert [p.name for p in dest.iterdir()] == [final.name] and final.read_bytes() == b"archive"
    assert [p for p in state_dir.iterdir() if not p.name.endswith(".lock")] == []
