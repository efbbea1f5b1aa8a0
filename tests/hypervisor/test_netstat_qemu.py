"""check-kvm-netstat on a real QEMU guest with traffic: rates against virsh domifstat, drops.

The tiny Linux guest (tests/rig/build-guest.sh, mode ``net``) has a virtio NIC on
``<interface type='ethernet'>`` whose tap the test makes (``ip tuntap``, ``managed='no'``, the
host's address on it) and a user-mode NIC, which has no host device. The guest pings the host
every 20 ms with 1000 bytes of payload and the host answers, so both directions carry about 50
packets and 52 kB a second. Three phases, each with two check runs 5 s apart whose
rates are compared with two ``virsh domifstat`` samples taken right after each run, within 5 %:

1. traffic: rx and tx bytes/s and packets/s;
2. a ``tbf`` qdisc on the tap (what the host sends into it, the guest's rx) limits the replies:
   the guest's rx packets/s falls to what the qdisc lets through, and the packets the qdisc
   drops are in ``tc -s qdisc`` only, counted neither as the guest's rx.drop nor as its tx.drop
   (measured here: the tap's own counters, which libvirt reads, do not see them), so the check
   cannot see them either: it says 0 drops, as domifstat does. (This kernel has no netem.)
3. the guest stopped (``virsh suspend``) while the test writes frames into the tap (a packet
   socket, paced): once the tap's queue is full each one is dropped there and libvirt reports
   it as the guest's rx.drop; judged against -w and -c.

With SPK_RECORD_DIR set the bulk records of phase 3's two samples are kept
(tests/data/netstat-qemu-drops.json, read by tests/unit/test_netstat_eval.py).
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
HOST, GUEST = "10.216.0.1", "10.216.0.2"
PING_INTERVAL = 0.02  # the guest's pings: 50 a second of 1000 bytes
RATE = 400  # frames per second the test writes into the stopped guest's tap
GAP = 5  # seconds between the two runs of a phase
KEYS = {"bytes": "bytes", "packets": "packets", "drops": "drop", "errors": "errs"}


@pytest.fixture(scope="module")
def tap() -> Iterator[str]:
    subprocess.run(["ip", "link", "del", TAP], capture_output=True, check=False)  # left by a killed run
    subprocess.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{HOST}/24", "dev", TAP], check=True)
        subprocess.run(["ip", "link", "set", TAP, "up"], check=True)
        yield TAP
    finally:
        subprocess.run(["ip", "link", "del", TAP], check=True)  # its qdiscs go with it


@pytest.fixture(scope="module")
def guest(conn: libvirt.virConnect, images: Path, tap: str) -> libvirt.virDomain:
    kernel, initrd = rig.ensure_guest()
    serial = images / "net.log"
    xml = rig.linux_guest_xml(NAME, rig.make_qcow2(images / "net.qcow2"), kernel, initrd, "net", serial, tap=tap,
                              extra_cmdline=f"spk.net.addr={GUEST}/24 spk.net.peer={HOST} "
                                            f"spk.net.interval={PING_INTERVAL}")
    # the user-mode NIC after the tap's, so that the tap's is the guest's eth0
    user = "<interface type='user'><model type='virtio'/><rom enabled='no'/></interface>"
    dom = conn.createXML(xml.replace("<controller type='usb'", user + "<controller type='usb'"), 0)
    rig.wait_serial(serial, "SPK-NET-UP", 60)
    # the first replies: the host has answered ARP and pings flow both ways
    rig.wait_for(lambda: domifstat()[1]["rx_packets"] > 20, 30, 0.2, "the host's replies reaching the guest")
    return dom


def send_frames(stop: threading.Event, sent: list[float]) -> None:
    """Broadcast frames of 1000 bytes into the tap at RATE a second; the time of each one the kernel
    took goes into ``sent``.

    A busy host (a whole make test: two cores, TCG guests) can starve this thread below RATE (262/s
    once), so the drops are compared with what was really sent in the window, not with RATE.
    """
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(986)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((TAP, 0))
        start, tried = time.monotonic(), 0
        while not stop.is_set():
            with contextlib.suppress(OSError):  # ENOBUFS: refused before the tap, not one of its drops
                s.send(frame)
                sent.append(time.time())
            tried += 1
            time.sleep(max(0.0, start + tried / RATE - time.monotonic()))


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


def qdisc_dropped() -> int:
    out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", TAP], capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"\(dropped (\d+),", out))


class Phase:
    """Two check runs GAP seconds apart (a fresh state directory), each followed by domifstat."""

    def __init__(self, state: Path, dom: libvirt.virDomain, *judged: str) -> None:
        self.args = ["-u", "qemu:///system", "-d", NAME, "--state-dir", str(state), "--min-interval", "1"]
        state.mkdir()
        self.first = run("check-kvm-netstat", *self.args)
        self.t1, self.s1 = domifstat()
        self.records = [bulk(dom)]
        assert (self.first.returncode, self.first.stdout) == (
            0, f"CheckKvmNetstat OK: {NAME}: first sample, rates on the next run; "
               "1 interface without <target dev> not measured | interfaces=1;;;0\n"), self.first
        time.sleep(GAP)
        self.second = run("check-kvm-netstat", *self.args, *judged)
        self.t2, self.s2 = domifstat()
        self.records.append(bulk(dom))
        self.seen = perfdata(self.second.stdout)

    def check(self, metric: str) -> float:
        return float(self.seen[f"{NAME}_{metric}_{TAP}"].split(";")[0])

    def virsh(self, metric: str) -> float:
        way, what, _ps = metric.split("_")
        key = f"{way}_{KEYS[what]}"
        return (self.s2[key] - self.s1[key]) / (self.t2 - self.t1)

    def agrees(self, *metrics: str) -> None:
        for metric in metrics:
            assert self.check(metric) == pytest.approx(self.virsh(metric), rel=0.05), (metric, self.seen)


def test_traffic_qdisc_and_stopped_guest_rates_match_domifstat(guest: libvirt.virDomain, tmp_path: Path) -> None:
    everything = [f"{way}_{what}_ps" for way in ("rx", "tx") for what in KEYS]

    traffic = Phase(tmp_path / "traffic", guest, "-m", "rx_packets_ps", "-w", "1000", "-c", "2000")
    assert traffic.second.returncode == 0, traffic.second
    assert traffic.second.stdout.startswith(f"CheckKvmNetstat OK: {NAME}: {TAP} rx_packets_ps "), traffic.second.stdout
    traffic.agrees(*everything)
    # the guest's pings and the host's replies: 50 a second, fewer when a busy host slows the TCG guest
    for metric in ("rx_packets_ps", "tx_packets_ps"):
        assert 0.5 / PING_INTERVAL < traffic.check(metric) < 1.1 / PING_INTERVAL, (metric, traffic.seen)
    assert traffic.check("rx_bytes_ps") > 1000 * traffic.check("rx_packets_ps")
    assert set(traffic.seen) == {"interfaces", *(f"{NAME}_{metric}_{TAP}" for metric in everything)}
    assert traffic.seen["interfaces"] == "1;;;0"  # the user-mode NIC is not counted

    # 10 kB/s into the tap: about 10 of the 50 replies a second reach the guest
    subprocess.run(["tc", "qdisc", "add", "dev", TAP, "root", "tbf", "rate", "80kbit", "burst", "1600", "limit", "3000"],
                   check=True)
    time.sleep(0.5)
    dropped, since = qdisc_dropped(), time.monotonic()
    shaped = Phase(tmp_path / "tbf", guest, "-m", "rx_drops_ps", "-w", "0", "-c", "0", "-v")
    dropped_ps = (qdisc_dropped() - dropped) / (time.monotonic() - since)
    subprocess.run(["tc", "qdisc", "del", "dev", TAP, "root"], check=True)
    assert shaped.second.returncode == 0, shaped.second  # what the qdisc drops is not a drop of the tap's
    shaped.agrees(*everything)
    assert shaped.check("rx_packets_ps") == pytest.approx(10, rel=0.3), shaped.seen
    assert shaped.check("tx_packets_ps") > 0.5 / PING_INTERVAL, shaped.seen
    assert dropped_ps == pytest.approx(shaped.check("tx_packets_ps") - shaped.check("rx_packets_ps"), rel=0.3)
    assert (shaped.check("rx_drops_ps"), shaped.virsh("rx_drops_ps"), shaped.virsh("tx_drops_ps")) == (0, 0, 0)

    guest.suspend()  # nothing reads the tap any more: once its queue is full each frame is dropped
    stop, sent = threading.Event(), list[float]()
    sender = threading.Thread(target=send_frames, args=(stop, sent), daemon=True)
    sender.start()
    try:
        rig.wait_for(lambda: domifstat()[1]["rx_drop"] > 0, 30, 0.5, "the first drops on the tap")
        time.sleep(0.5)
        stopped = Phase(tmp_path / "stopped", guest, "-m", "rx_drops_ps", "-w", "10", "-c", "100", "-v")
        time.sleep(1.5)
        warned = run("check-kvm-netstat", *stopped.args, "-m", "rx_drops_ps", "-w", "10", "-c", "100000")
    finally:
        stop.set()
        sender.join()
    record("netstat-qemu-drops.json", stopped.records)
    assert stopped.second.returncode == 2, stopped.second
    assert stopped.second.stdout.startswith(f"CheckKvmNetstat CRITICAL: {NAME}: {TAP} rx_drops_ps "), stopped.second
    assert "; 1 interface without <target dev> not measured" in stopped.second.stdout.splitlines()[0]
    sent_ps = sum(stopped.t1 <= t < stopped.t2 for t in sent) / (stopped.t2 - stopped.t1)
    assert sent_ps > 100, sent_ps  # enough for the CRITICAL (-c 100) even on a starved host
    assert stopped.virsh("rx_drops_ps") == pytest.approx(sent_ps, rel=0.1)  # every frame sent is dropped
    stopped.agrees("rx_drops_ps", "rx_packets_ps", "tx_packets_ps")
    assert (stopped.check("rx_packets_ps"), stopped.check("tx_packets_ps")) == (0, 0)
    assert warned.returncode == 1, warned
    assert warned.stdout.startswith(f"CheckKvmNetstat WARNING: {NAME}: {TAP} rx_drops_ps "), warned.stdout
    stats: dict[str, object] = stopped.records[1]["stats"]  # type: ignore[assignment]
    assert (stats["net.count"], "net.1.name" in stats) == (2, False)  # the user-mode NIC: counted, no name
