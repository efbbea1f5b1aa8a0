"""check-kvm-domstate on a real QEMU guest being saved (virsh save), observed mid-way.

A migration needs a second libvirtd with its own host UUID; a save runs the same QEMU migration
code into a file and shows the same job details (jobStats), so this test uses a save. A 128 MiB
no-OS guest saves in ~30 ms (its memory is almost all zero pages, ~1 MB on the wire), so the
guest is the tiny Linux guest of tests/rig (idle: ~100 MB of its memory is not zero), and the
save goes to a FIFO the test reads: after 48 MiB it stops reading, QEMU blocks once libvirt's
iohelper and the pipe are full, and the job stays where it is (measured here: 2.3 % done at 64
KiB read, data_processed unchanged over 3 s) until the test drains the FIFO. The check's
percentage and remaining bytes are compared with `virsh domjobinfo` taken right after it. A
migration bandwidth limit does not hold a save: libvirt lifts it for a save to a file.

The test reads those 48 MiB at ~20 MiB/s, not at once: QEMU 7.2 switches to the completion stage
when the bandwidth it measured would send the rest within the downtime limit (300 ms), and that
stage writes all the remaining memory holding the big QEMU lock, so a FIFO that stops then also
stops QEMU's monitor, and every jobStats waits until the FIFO is read again (measured: 53 s, to
the end of the save; gdb: the live_migration thread in writev, the main loop waiting for the
lock). Read slowly, QEMU stays in its iterations, which write without that lock.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import libvirt
import pytest

from tests.conftest import FAULTS, run
from tests.hypervisor.conftest import own_fixtures, record
from tests.perfdata_consumers import perfdata, text_lines
from tests.rig import rig

PREFIX = "spk-mig-"
conn, images = own_fixtures(PREFIX)
NAME = PREFIX + "saving"
HELD_AT = 48 << 20  # bytes of the save the test reads before it stops reading
PACE = 0.025  # seconds between reads of 512 KiB up to HELD_AT: ~20 MiB/s (why: the module's docstring)
T = TypeVar("T")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


@pytest.fixture(scope="module")
def guest_dom(conn: libvirt.virConnect, images: Path, guest: tuple[Path, Path]) -> Iterator[libvirt.virDomain]:
    kernel, initrd = guest
    disk = rig.make_qcow2(images / "saving.qcow2")
    dom = conn.defineXML(rig.linux_guest_xml(NAME, disk, kernel, initrd, "idle", images / "saving.log"))
    dom.create()
    rig.wait_serial(images / "saving.log", timeout=120)
    yield dom
    rig.cleanup(conn, PREFIX)


def domstate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("check-kvm-domstate", "-u", rig.URI, *args, env=env)


def calls_logged(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The check's result and every virDomain method it called (tests/faults: log-domain-calls)."""
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    result = domstate(*args, env={"PYTHONPATH": str(FAULTS), "SPK_FAULT": "log-domain-calls",
                                  "SPK_CALL_LOG": str(log)})
    return result, log.read_text().split() if log.exists() else []


def read_upto(fd: int, count: int, timeout: float, pace: float = 0.0) -> int:
    """Read ``count`` bytes from the FIFO (fewer if nothing comes for ``timeout`` seconds), with
    ``pace`` seconds between reads of 512 KiB."""
    got = 0
    while got < count:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        got += len(os.read(fd, min(512 << 10, count - got)))
        time.sleep(pace)
    return got


def jobinfo(name: str) -> dict[str, float]:
    """`virsh domjobinfo`: the data figures in bytes."""
    out = subprocess.run(["virsh", "-c", rig.URI, "domjobinfo", name], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    found = {}
    for key in ("Data remaining", "Data total"):
        match = re.search(rf"^{key}:\s+([\d.]+) (\w+)", out, re.M)
        assert match, out
        found[key] = float(match.group(1)) * UNITS[match.group(2)]
    return found


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` in a thread, given up after ``seconds``: a libvirt call of the test that does not
    answer must fail the test, not keep the save (and the shared lock) held."""
    out: list[T] = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if not out:
        raise TimeoutError(f"{call} did not answer within {seconds:g}s")
    return out[0]


def stalled(dom: libvirt.virDomain) -> dict[str, int]:
    """The job's statistics once QEMU has stopped making progress (the FIFO is full)."""
    def steady() -> dict[str, int]:
        first = within(15, dom.jobStats)
        time.sleep(0.3)
        second: dict[str, int] = within(15, dom.jobStats)
        same = first.get("data_processed") == second.get("data_processed") and second.get("type")
        return second if same else {}

    return rig.wait_for(steady, timeout=20, what="the save to stall on the full FIFO")


def test_a_save_held_mid_way_is_warning_with_its_progress(guest_dom, images, tmp_path):
    result, calls = calls_logged(tmp_path, "-d", NAME)
    assert (result.returncode, text_lines(result.stdout)[0]) == (0, f"CheckKvmDomstate OK: {NAME} running (booted)")
    assert "jobStats" not in calls  # a domain whose state reason says no job: no job read

    fifo = images / "save.fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    fd = os.open(fifo, os.O_RDWR)  # never blocks, and never reads EOF before the save opened it
    save = subprocess.Popen(["virsh", "-q", "-c", rig.URI, "save", NAME, str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_upto(fd, HELD_AT, timeout=20, pace=PACE) == HELD_AT
        job = stalled(guest_dom)
        assert within(15, guest_dom.state) == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE]

        result, calls = calls_logged(tmp_path, "-d", NAME)
        virsh = jobinfo(NAME)
        assert result.returncode == 1, result
        line = text_lines(result.stdout)[0]
        found = re.fullmatch(rf"CheckKvmDomstate WARNING: {NAME} saving \((\d+) % done, ([\d.]+) (\w+) remaining"
                             r"(, \d+s elapsed)?\)", line)
        assert found, line
        done, remaining = int(found.group(1)), float(found.group(2)) * UNITS[found.group(3)]
        expected = (virsh["Data total"] - virsh["Data remaining"]) * 100 / virsh["Data total"]
        assert 5 < done < 95  # mid-way
        assert abs(done - expected) <= 1, (line, virsh)
        assert abs(remaining - virsh["Data remaining"]) <= max(0.001 * virsh["Data remaining"], 64 << 10), (line, virsh)
        assert calls.count("jobStats") == 1, calls  # the one domain with a job, read once
        assert perfdata(result.stdout)["saving"] == "1;;;0;1"
        assert perfdata(result.stdout)["migrating"] == "0;;;0;1"
        record("domstate-qemu-save.json", {"state": within(15, guest_dom.state), "job": job})  # its "held" entry

        # the job read does not come back within the time budget: still "saving", from the state reason
        late = domstate("-d", NAME, "-t", "3", env={"PYTHONPATH": str(FAULTS), "SPK_FAULT": "slow-domain-calls:20"})
        assert (late.returncode, text_lines(late.stdout)[0]) == (
            1, f"CheckKvmDomstate WARNING: {NAME} saving (job details not read in time)"), late
    finally:
        give_up = time.monotonic() + 60
        while (save.poll() is None or select.select([fd], [], [], 0)[0]) and time.monotonic() < give_up:
            read_upto(fd, 1 << 30, timeout=0.5)
        if save.poll() is None:
            save.kill()
        save.wait()
        os.close(fd)
        fifo.unlink()
    assert save.returncode == 0, save.stderr

    result = domstate("--match", f"^{NAME}$")
    assert (result.returncode, text_lines(result.stdout)[0]) == (0, f"CheckKvmDomstate OK: {NAME} shut off (saved)")
    assert perfdata(result.stdout)["saving"] == "0;;;0;1"
