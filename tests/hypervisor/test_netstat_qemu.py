"""check-kvm-netstat on a real QEMU guest: frames sent into its tap, rates against virsh domifstat.

The guest has no OS (SeaBIOS, option ROM off), a virtio NIC on ``<interface type='ethernet'>``
whose tap the test makes (``ip tuntap``, ``managed='no'``), and a user-mode NIC, which has no
host device. Nothing in the guest reads its NIC, so every frame the test writes into the tap
from the host side (a packet socket, paced) is dropped at the tap's queue: libvirt reports them
as the guest's ``rx.drop`` once the tap's queue is full (measured here: at 400 frames/s the
first drops come after about 2.5 s, then 400.4 drops/s; rx.pkts stays at 1, one packet of 90
bytes from the host's own stack). The check's rates between two runs are compared with two
``virsh domifstat`` samples taken right after each run, within 5 %. With SPK_RECORD_DIR set the
bulk records of the two samples are kept (tests/data/netstat-qemu-drops.json).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import run
from tests.hypervisor.conftest import own_fixtures, record
from tests.perfdata_consumers import perfdata
from tests.rig import rig

PREFIX = "spk-net-"
conn, images = own_fixtures(PREFIX)
TAP = "spknet0"
NAME = PREFIX + "drops"
RATE = 400  # frames per second the test writes into the tap


@pytest.fixture(scope="module")
def tap() -> Iterator[str]:
    subprocess.run(["ip", "link", "del", TAP], capture_output=True, check=False)  # left by a killed run
    subprocess.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "link", "set", TAP, "up"], check=True)
        yield TAP
    finally:
        subprocess.run(["ip", "link", "del", TAP], check=True)


@pytest.fixture(scope="module")
def guest(conn: libvirt.virConnect, images: Path, tap: str) -> libvirt.virDomain:
    xml = rig.noos_domain_xml(NAME, rig.make_qcow2(images / "drops.qcow2"))
    nics = (f"<interface type='ethernet'><target dev='{tap}' managed='no'/><model type='virtio'/>"
            "<rom enabled='no'/></interface>"
            "<interface type='user'><model type='virtio'/><rom enabled='no'/></interface>")
    return conn.createXML(xml.replace("<controller type='usb'", nics + "<controller type='usb'"), 0)


def send_frames(stop: threading.Event) -> None:
    """Broadcast frames of 1000 bytes into the tap at RATE a second (a refused send is a drop too)."""
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(986)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((TAP, 0))
        start, sent = time.monotonic(), 0
        while not stop.is_set():
            with contextlib.suppress(OSError):  # ENOBUFS: the tap's queue is full
                s.send(frame)
            sent += 1
            time.sleep(max(0.0, start + sent / RATE - time.monotonic()))


def domifstat() -> tuple[float, dict[str, int]]:
    before = time.time()
    out = subprocess.run(["virsh", "-r", "-c", "qemu:///system", "domifstat", NAME, TAP],
                         capture_output=True, text=True, check=True).stdout
    when = (before + time.time()) / 2
    return when, {key: int(value) for key, value in re.findall(rf"^{TAP} (\S+) (\d+)$", out, re.M)}


def bulk(dom: libvirt.virDomain) -> dict[str, object]:
    """The domain's state and interface groups from the bulk call, as tests/unit reads them."""
    ro = libvirt.openReadOnly("qemu:///system")
    try:
        before = time.time()
        ((_dom, stats),) = ro.domainListGetStats([ro.lookupByUUIDString(dom.UUIDString())],
                                                 libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_INTERFACE)
        return {"name": NAME, "uuid": dom.UUIDString(), "t": (before + time.time()) / 2, "stats": stats}
    finally:
        ro.close()


def test_drop_rate_matches_domifstat_and_user_nic_is_skipped(guest: libvirt.virDomain, tmp_path: Path) -> None:
    stop = threading.Event()
    sender = threading.Thread(target=send_frames, args=(stop,), daemon=True)
    sender.start()
    try:
        # the tap's queue (1000 frames) fills first: from then on every frame is dropped
        rig.wait_for(lambda: domifstat()[1]["rx_drop"] > 0, 30, 0.5, "the first drops on the tap")
        time.sleep(0.5)
        args = ["-u", "qemu:///system", "-d", NAME, "--state-dir", str(tmp_path)]
        first = run("check-kvm-netstat", *args)
        t1, s1 = domifstat()
        recorded = [bulk(guest)]
        assert (first.returncode, first.stdout) == (0, f"CheckKvmNetstat OK: {NAME}: first sample, rates on the next "
                                                       "run; 1 interface without <target dev> not measured | interfaces=1;;;0\n")
        time.sleep(4)
        second = run("check-kvm-netstat", *args, "-m", "rx_drops_ps", "-w", "10", "-c", "100000", "-v",
                     "--min-interval", "1")
        t2, s2 = domifstat()
        recorded.append(bulk(guest))
    finally:
        stop.set()
        sender.join()
    record("netstat-qemu-drops.json", recorded)
    assert second.returncode == 1, second
    assert second.stdout.startswith(f"CheckKvmNetstat WARNING: {NAME}: {TAP} rx_drops_ps "), second.stdout
    assert "; 1 interface without <target dev> not measured" in second.stdout.splitlines()[0]
    seen = perfdata(second.stdout)
    expected = (s2["rx_drop"] - s1["rx_drop"]) / (t2 - t1)
    assert expected == pytest.approx(RATE, rel=0.1)  # every frame sent is dropped, as measured when this was written
    measured = float(seen[f"{NAME}_rx_drops_ps_{TAP}"].split(";")[0])
    assert measured == pytest.approx(expected, rel=0.05), (measured, expected)
    stats: dict[str, object] = recorded[1]["stats"]  # type: ignore[assignment]
    assert (stats["net.count"], "net.1.name" in stats) == (2, False)  # the user-mode NIC: counted, no name
    for metric, key in (("rx_bytes_ps", "rx_bytes"), ("rx_packets_ps", "rx_packets"), ("tx_bytes_ps", "tx_bytes")):
        value = float(seen[f"{NAME}_{metric}_{TAP}"].split(";")[0])
        assert value == pytest.approx((s2[key] - s1[key]) / (t2 - t1), rel=0.05, abs=30), metric
    assert set(seen) == {"interfaces", *(f"{NAME}_{way}_{what}_ps_{TAP}" for way in ("rx", "tx")
                                         for what in ("bytes", "packets", "errors", "drops"))}
    assert seen["interfaces"] == "1;;;0"  # the user-mode NIC is not counted
