"""Smoke test of the real-QEMU rig; run by hand as root: ``python3 tests/rig/smoke.py``.

Prepares the host, builds (or reuses) the tiny guest, then on qemu:///system checks that
(a) a no-OS domain runs, (b) a guest writing to a qcow2 on a full 64 MiB file system
pauses with an I/O error (no space), (c) the ``cpu`` guest burns CPU, (d) the ``agent``
guest answers guest-ping and (e) its balloon reports unused/available memory. Prints
timings; exits non-zero on the first failure. Leaves no domain, image or mount behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import libvirt

from tests.rig import rig


def say(msg: str) -> None:
    print(f"smoke: {msg}", flush=True)


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", rig.URI, *args], check=True, capture_output=True, text=True).stdout.strip()


def start(conn: libvirt.virConnect, xml: str) -> tuple[libvirt.virDomain, float]:
    dom = conn.defineXML(xml)
    t0 = time.monotonic()
    dom.create()
    return dom, t0


def destroy(dom: libvirt.virDomain) -> float:
    t0 = time.monotonic()
    dom.destroy()
    return time.monotonic() - t0


Timings = dict[str, float]


def check_noos(conn: libvirt.virConnect, images: Path, timings: Timings) -> None:
    """(a) a no-OS domain starts and runs."""
    disk = rig.make_qcow2(images / "noos.qcow2")
    dom, t0 = start(conn, rig.noos_domain_xml(rig.PREFIX + "noos", disk))
    timings["noos start"] = time.monotonic() - t0
    state = dom.state()
    assert state[0] == libvirt.VIR_DOMAIN_RUNNING, state
    say(f"(a) no-OS domain running: state={state}")
    timings["noos destroy"] = destroy(dom)


def check_enospc(conn: libvirt.virConnect, images: Path, kernel: Path, initrd: Path, timings: Timings) -> None:
    """(b) writing guest, qcow2 on a full 64 MiB file system, error_policy=stop: paused (I/O error)."""
    with rig.small_fs(images / "smallfs", 64) as fs:
        disk = rig.make_qcow2(fs / "write.qcow2", "1G")
        log = images / "write.log"
        name = rig.PREFIX + "write"
        dom, t0 = start(conn, rig.linux_guest_xml(name, disk, kernel, initrd, "write", log, error_policy="stop"))
        rig.wait_serial(log, rig.READY_MARKER, 60)
        timings["write start-to-SPK-READY"] = time.monotonic() - t0
        t1 = time.monotonic()
        rig.wait_for(
            lambda: dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR],
            120,
            0.1,
            "paused (I/O error)",
        )
        timings["write SPK-READY-to-ENOSPC-pause"] = time.monotonic() - t1
        timings["write start-to-ENOSPC-pause"] = time.monotonic() - t0
        reason = virsh("domstate", "--reason", name)
        errors = dom.diskErrors()
        blkerror = virsh("domblkerror", name)
        say(f"(b) domstate --reason: {reason!r}; diskErrors(): {errors}; domblkerror: {blkerror!r}")
        assert reason == "paused (I/O error)", reason
        assert errors == {"vda": libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE}, errors
        written = [line for line in rig.serial_text(log).splitlines() if line.startswith("SPK-WRITE")]
        say(f"    guest progress: {written[-2:]}")
        df = subprocess.run(["df", "-m", str(fs)], capture_output=True, text=True).stdout.splitlines()[-1]
        say(f"    df -m: {df}")
        timings["write destroy (paused)"] = destroy(dom)


def check_cpu(conn: libvirt.virConnect, images: Path, kernel: Path, initrd: Path, timings: Timings) -> None:
    """(c) the cpu guest keeps its vCPU busy."""
    disk = rig.make_qcow2(images / "cpu.qcow2")
    log = images / "cpu.log"
    dom, t0 = start(conn, rig.linux_guest_xml(rig.PREFIX + "cpu", disk, kernel, initrd, "cpu", log))
    rig.wait_serial(log, "SPK-CPU-START", 60)
    timings["cpu start-to-SPK-CPU-START"] = time.monotonic() - t0
    c0, w0 = dom.info()[4], time.monotonic()
    time.sleep(3)
    c1, w1 = dom.info()[4], time.monotonic()
    pct = (c1 - c0) / 1e9 / (w1 - w0) * 100
    say(f"(c) cpu guest: {pct:.0f} % of one core over {w1 - w0:.1f} s")
    assert pct > 60, pct
    timings["cpu destroy"] = destroy(dom)


def check_agent(conn: libvirt.virConnect, images: Path, kernel: Path, initrd: Path, timings: Timings) -> None:
    """(d) the agent guest answers guest-ping; (e) its balloon reports unused/available."""
    disk = rig.make_qcow2(images / "agent.qcow2")
    log = images / "agent.log"
    name = rig.PREFIX + "agent"
    dom, t0 = start(conn, rig.linux_guest_xml(name, disk, kernel, initrd, "agent", log, agent_channel=True))
    rig.wait_serial(log, rig.READY_MARKER, 60)
    timings["agent start-to-SPK-READY"] = time.monotonic() - t0

    def ping() -> str:
        command = ["virsh", "-c", rig.URI, "qemu-agent-command", name, '{"execute":"guest-ping"}', "--timeout", "2"]
        r = subprocess.run(command, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    answer = rig.wait_for(ping, 60, 0.2, "guest-ping")
    timings["agent start-to-guest-ping"] = time.monotonic() - t0
    say(f"(d) guest-ping answered: {answer}")
    assert json.loads(answer) == {"return": {}}, answer

    def memstat() -> dict[str, int]:
        stats = dom.memoryStats()
        return stats if "unused" in stats and "available" in stats else {}

    stats = rig.wait_for(memstat, 30, 0.2, "balloon unused/available")
    timings["agent start-to-balloon-stats"] = time.monotonic() - t0
    say(f"(e) virsh dommemstat: {' '.join(virsh('dommemstat', name).split())}")
    assert stats["unused"] > 0 and stats["available"] > 0, stats
    timings["agent destroy"] = destroy(dom)


def main() -> int:
    timings: Timings = {}
    t0 = time.monotonic()
    rig.ensure_host()
    timings["host-setup"] = time.monotonic() - t0
    t0 = time.monotonic()
    kernel, initrd = rig.ensure_guest()
    timings["ensure_guest"] = time.monotonic() - t0

    conn = rig.connect()
    leftovers = rig.cleanup(conn)
    if leftovers:
        say(f"removed leftovers: {leftovers}")
    try:
        with rig.image_dir() as images:
            check_noos(conn, images, timings)
            check_enospc(conn, images, kernel, initrd, timings)
            check_cpu(conn, images, kernel, initrd, timings)
            check_agent(conn, images, kernel, initrd, timings)
    finally:
        t0 = time.monotonic()
        removed = rig.cleanup(conn)
        timings["cleanup"] = time.monotonic() - t0
        say(f"cleanup removed {removed}")
        conn.close()

    for key, value in timings.items():
        say(f"timing {key}: {value:.2f} s")
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
