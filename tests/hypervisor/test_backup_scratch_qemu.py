"""The scratch watch of `kvm-backup create --engine api` on real libvirtd + QEMU (TCG): the tiny Linux
guest overwrites its 320 MiB disk (filled with data first) while a slow backup (--bwlimit) keeps its
scratch file on a 280 MiB file system; the run ends the job before the file system fills, in one line
naming the folder and the figures, the guest was never paused nor given an I/O error, nothing is left
(job, scratch file, socket folder, partial archive, the run's checkpoint) and the chain record is the
one of the full before; then a run with room enough succeeds. Domains spk-q7-sc-*."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libvirt

from sensu_kvm.backup import pull, scratchwatch
from sensu_kvm.virt import backupjobs
from tests.conftest import run
from tests.hypervisor.conftest import own_fixtures
from tests.rig import rig

PREFIX = "spk-q7-sc-"
MiB = 1 << 20
URI = ["-u", rig.URI]
DISK_MIB = 320
SCRATCH_FS_MIB = 280  # just above what create's space check asks for a 320 MiB disk (256 + 16 MiB + metadata)
conn, images = own_fixtures(PREFIX)


class Watcher:
    """What the test sees of the domain while a run goes on: its states and the job's disk_temp_* figures."""

    def __init__(self, dom: libvirt.virDomain, folder: Path) -> None:
        self.dom, self.folder = dom, folder
        self.least_free = 1 << 62
        self.states: set[tuple[int, int]] = set()
        self.temp: list[tuple[int, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        while not self.done.is_set():
            state = self.dom.state()
            info = os.statvfs(self.folder)
            self.least_free = min(self.least_free, info.f_bavail * info.f_frsize)
            self.states.add((state[0], state[1]))
            try:
                stats = self.dom.jobStats(0)
            except libvirt.libvirtError:
                stats = {}
            if "disk_temp_used" in stats:
                self.temp.append((int(stats["disk_temp_used"]), int(stats.get("disk_temp_total", 0))))
            self.done.wait(0.2)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def create(dom: libvirt.virDomain, dest: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("kvm-backup", "create", dom.name(), "--dest", str(dest), "--state-dir", str(state), "--engine", "api",
               *args, *URI, timeout=600)


def test_scratch_watch_ends_the_job_before_the_guest_sees_it(conn: libvirt.virConnect, images: Path) -> None:
    kernel, initrd = rig.ensure_guest()
    image = rig.make_qcow2(images / "writer.qcow2", f"{DISK_MIB}M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x41 0 {DISK_MIB}M", str(image)], check=True,
                   capture_output=True)  # every block has data: each first overwrite goes to the scratch
    log = images / "writer.log"
    dest, state, roomy = images / "dest", images / "state", images / "roomy"
    dest.mkdir()
    roomy.mkdir(mode=0o755)
    with rig.small_fs(images / "tiny", SCRATCH_FS_MIB) as tiny:  # before the domain starts (QEMU's namespace)
        dom = conn.defineXML(rig.linux_guest_xml(f"{PREFIX}writer", image, kernel, initrd, "write", log))
        dom.create()
        try:
            rig.wait_serial(log, "SPK-WRITE-START", timeout=120)
            qemu_log = Path(f"/var/log/libvirt/qemu/{dom.name()}.log")
            logged = qemu_log.stat().st_size  # the log of this domain's name is kept across starts
            uuid8 = dom.UUIDString().replace("-", "")[:8]
            first = create(dom, dest, state, "--level", "full", "--json")
            assert first.returncode == 0, first.stderr
            record = (state / f"{dom.UUIDString()}.chain.json").read_bytes()
            checkpoints = pull.checkpoint_names(dom)
            archives = sorted(os.listdir(dest))

            writes = rig.serial_text(log).count("SPK-WRITE ")
            started = time.monotonic()
            with Watcher(dom, tiny) as seen:
                failed = create(dom, dest, state, "--level", "full", "--scratch-dir", str(tiny), "--bwlimit", "1")
            seconds = time.monotonic() - started
            assert failed.returncode == 1, (failed.stdout, failed.stderr)
            lines = failed.stderr.strip().splitlines()
            assert len(lines) == 1, failed.stderr
            line = lines[0]
            assert line.startswith(f"kvm-backup: backup failed: {dom.name()}: backup stopped before its scratch space ran out: "
                                   f"{tiny} has "), line
            assert "give --scratch-dir a folder with more free space" in line, line
            free = re.search(r" has ([\d,.]+) MiB free of ([\d,.]+) MiB \(this run's scratch files ([\d,.]+) MiB; "
                             r"libvirt disk_temp_used ([\d,.]+) MiB of disk_temp_total ([\d,.]+) MiB\), less than "
                             r"the margin of ([\d,.]+) MiB", line)
            assert free, line
            free_mib, size_mib, used_mib, temp_used, temp_total, margin = (float(g.replace(",", ""))
                                                                          for g in free.groups())
            assert free_mib < margin and margin >= scratchwatch.MIN_MARGIN / MiB
            assert 0 < used_mib <= size_mib and 0 < temp_used <= size_mib and temp_total == DISK_MIB
            print(f"\nscratch watch: tripped after {seconds:.1f}s: {line}")
            print(f"scratch watch: disk_temp_used/total seen by the test (MiB): first "
                  f"{[round(u / MiB, 1) for u, _ in seen.temp[:3]]}, last {round(seen.temp[-1][0] / MiB, 1)} of "
                  f"{round(seen.temp[-1][1] / MiB, 1)}, {len(seen.temp)} samples; least free seen "
                  f"{seen.least_free / MiB:.1f} MiB; guest wrote "
                  f"{(rig.serial_text(log).count('SPK-WRITE ') - writes) * 16} MiB meanwhile")
            assert seen.temp and max(u for u, _ in seen.temp) <= SCRATCH_FS_MIB * MiB
            assert {t for _, t in seen.temp} == {DISK_MIB * MiB}  # libvirt 9.0: the scratch's virtual size

            # the guest never stopped nor saw a failed write
            assert seen.states and all(s == libvirt.VIR_DOMAIN_RUNNING for s, _ in seen.states), seen.states
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert "SPK-WRITE-ERROR" not in rig.serial_text(log)
            assert "No space left" not in qemu_log.read_bytes()[logged:].decode(errors="replace")
            more = rig.serial_text(log).count("SPK-WRITE ")
            rig.wait_for(lambda: rig.serial_text(log).count("SPK-WRITE ") > more, timeout=60,
                         what="the guest writing on")

            # nothing left of the run, the chain as it was
            assert not backupjobs.running(dom) and backupjobs.current_xml(dom) is None
            assert os.listdir(tiny) == [] or os.listdir(tiny) == ["lost+found"]
            assert not Path(f"{pull.RUN_DIR}/nbd-{uuid8}").exists()
            assert sorted(os.listdir(dest)) == sorted([*archives, f".kvm-backup-failed.{dom.name()}.json"])
            assert pull.checkpoint_names(dom) == checkpoints
            assert (state / f"{dom.UUIDString()}.chain.json").read_bytes() == record
            assert list(state.glob("*.journal.json")) == []

            # with room enough, the same run (the guest still writing) succeeds and follows the chain
            started = time.monotonic()
            good = create(dom, dest, state, "--level", "inc", "--scratch-dir", str(roomy), "--json")
            assert good.returncode == 0, good.stderr
            result: dict[str, Any] = json.loads(good.stdout)["backups"][0]
            assert result["ok"] and result["level"] == "inc"
            assert result["parent"] == os.path.basename(json.loads(first.stdout)["backups"][0]["archive"])
            print(f"scratch watch: the inc with room enough took {time.monotonic() - started:.1f}s")
            assert os.listdir(roomy) == []
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert "SPK-WRITE-ERROR" not in rig.serial_text(log)
        finally:
            rig.cleanup(conn, PREFIX)  # before the small file system is unmounted
