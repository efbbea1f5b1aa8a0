"""kill -9 of `kvm-backup create --engine api` at random points of 10 full and 10 inc runs, with a
`kvm-backup recover` racing it: afterwards no backup job runs on the domain, no scratch file, overlay,
partial archive or socket folder is left, the guest runs, only checkpoints of published runs remain,
and the next create succeeds with an archive that rebuilds equal to the image. Real QEMU (TCG), a
no-OS guest written with HMP qemu-io between runs (nothing writes during a run); domains spk-ap-*.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from sensu_kvm.backup import restore
from sensu_kvm.virt import backupjobs
from tests.hypervisor.conftest import own_fixtures
from tests.hypervisor.test_backup_chain_qemu import TOOL, reference, same, write
from tests.rig import rig

PREFIX = "spk-ap-k"
conn, images = own_fixtures(PREFIX)
RUNS = 10  # of each level


@pytest.fixture(scope="module")
def guest(conn: libvirt.virConnect, images: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    image = rig.make_qcow2(images / "kill.qcow2", "64M")
    dom = conn.defineXML(rig.noos_domain_xml(f"{PREFIX}guest", image))
    dom.create()
    yield dom, image
    rig.cleanup(conn, PREFIX)


def left_over(dom: libvirt.virDomain, images: Path, dest: Path) -> list[str]:
    found = []
    if dom.jobStats(0).get("type") != libvirt.VIR_DOMAIN_JOB_NONE:
        found.append("a job")
    if backupjobs.current_xml(dom) is not None:
        found.append("a backup job")
    found += [str(p) for p in images.rglob("*kvm-backup-scratch*")]
    found += [str(p) for p in images.rglob("*kvm-backup-overlay*")]
    found += [str(p) for p in dest.glob(".*.partial")]
    found += [str(p) for p in Path("/run/kvm-backup").glob(f"nbd-{dom.UUIDString().replace('-', '')[:8]}")]
    if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        found.append(f"state {dom.state()}")
    return found


def test_kill_at_random_points(guest: tuple[libvirt.virDomain, Path], images: Path) -> None:
    dom, image = guest
    dest, state = images / "dest", images / "state"
    dest.mkdir()
    rng = random.Random(17)
    args = [dom.name(), "--dest", str(dest), "--state-dir", str(state), "--engine", "api"]
    # the kill falls within a run: at a random fraction of how long the last whole run took (a fixed
    # range of delays let 6 of 10 runs finish first on a loaded machine, and would kill none on a
    # slow one); each level goes on until RUNS of its runs were really killed
    began = time.monotonic()
    assert subprocess.run([TOOL, "create", *args, "--level", "full"], capture_output=True, check=False).returncode == 0
    duration = time.monotonic() - began
    n = 0
    outcomes: dict[str, list[str]] = {"full": [], "inc": []}
    for level, killed_in in outcomes.items():
        while killed_in.count("killed") < RUNS:
            assert len(killed_in) < 3 * RUNS, (level, killed_in, duration)
            n += 1
            write(dom, f"write -P {0x20 + n % 200} {n % 30 * 2}M 1M")
            ref = reference(dom, image, images / f"ref{n}.raw")
            child = subprocess.Popen([TOOL, "create", *args, "--level", level], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            at = rng.uniform(0.02, 0.95) * duration
            lead = rng.uniform(0, min(0.3, at))  # the racing recover starts up to 0.3 s before the kill
            time.sleep(at - lead)
            racer = subprocess.Popen([TOOL, "recover", dom.name(), "--state-dir", str(state)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(lead)
            child.kill()
            code = child.wait()
            racer.wait(120)
            killed_in.append("finished" if code == 0 else "killed")
            done = subprocess.run([TOOL, "recover", dom.name(), "--state-dir", str(state)], capture_output=True,
                                  text=True, check=False)
            assert done.returncode == 0, done.stderr
            assert left_over(dom, images, dest) == [], (n, done.stdout)
            began = time.monotonic()
            made = subprocess.run([TOOL, "create", *args, "--level", level, "--json"], capture_output=True,
                                  text=True, check=False)
            duration = time.monotonic() - began
            assert made.returncode == 0, made.stderr
            (result,) = json.loads(made.stdout)["backups"]
            if level == "inc":
                assert result["level"] == "inc", result
            assert left_over(dom, images, dest) == []
            out = images / f"out{n}"
            out.mkdir()
            (rebuilt,) = restore.restore_files(result["archive"], str(out)).values()
            assert same(Path(rebuilt), ref), result["archive"]
            (images / f"ref{n}.raw").unlink()
