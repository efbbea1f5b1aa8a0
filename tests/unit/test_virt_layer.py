"""The libvirt layer's classifier and per-call deadline proxy (virt.errors, virt.deadline)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import libvirt
import pytest

from sensu_kvm import virt
from sensu_kvm.errors import (
    AccessDenied,
    AgentUnavailable,
    CallTimeout,
    ConnectError,
    Disconnected,
    LibvirtFailure,
    NotFound,
    ReadOnlyRefused,
    Unsupported,
)


def error(code: int, domain: int = libvirt.VIR_FROM_NONE, message: str = "some text") -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, domain, message, 2, None, None, None, 0, 0)
    return err


@pytest.mark.parametrize(("code", "domain", "expected"), [
    (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, NotFound),
    (libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT, libvirt.VIR_FROM_DOMAIN_SNAPSHOT, NotFound),
    (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE, NotFound),
    (libvirt.VIR_ERR_OPERATION_DENIED, libvirt.VIR_FROM_DOMAIN, ReadOnlyRefused),
    (libvirt.VIR_ERR_ACCESS_DENIED, libvirt.VIR_FROM_ACCESS, AccessDenied),
    (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_FROM_AUTH, AccessDenied),
    (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_FROM_TEST, Unsupported),
    (libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_FROM_QEMU, Unsupported),
    (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_FROM_QEMU, AgentUnavailable),
    (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_FROM_QEMU, CallTimeout),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, Disconnected),
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU, LibvirtFailure),  # not the connection: a plain failure
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU, LibvirtFailure),
])
def test_classifier_by_code_and_domain(code: int, domain: int, expected: type) -> None:
    found = virt.translate(error(code, domain, "  the   reason\n"), "web1: doing it")
    assert type(found) is expected
    assert str(found) == "web1: doing it: the reason"


@pytest.mark.parametrize("text", ["read only access prevents virDomainCreate", "Domain not found",
                                  "guest agent is not connected"])
def test_classifier_ignores_message_text(text: str) -> None:
    assert type(virt.translate(error(libvirt.VIR_ERR_INTERNAL_ERROR, message=text), "x")) is LibvirtFailure


def test_classifier_on_real_test_driver_errors() -> None:
    conn = libvirt.openReadOnly("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as missing:
            conn.lookupByName("no-such-domain")
        assert isinstance(virt.translate(missing.value, "x"), NotFound)
        with pytest.raises(libvirt.libvirtError) as refused:
            conn.lookupByName("test").create()
        assert isinstance(virt.translate(refused.value, "x"), ReadOnlyRefused)
    finally:
        conn.close()


def test_connect_wraps_every_object_and_keeps_raw_errors() -> None:
    conn = virt.connect("test:///default", timeout=5)
    try:
        assert isinstance(conn, virt.Timed) and conn.deadline == 5
        dom = conn.lookupByName("test")
        assert isinstance(dom, virt.Timed) and dom.name() == "test"
        assert isinstance(virt.raw(dom), libvirt.virDomain)
        assert all(isinstance(d, virt.Timed) for d in conn.listAllDomains(0))
        pairs = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
        assert isinstance(pairs[0][0], virt.Timed) and "state.state" in pairs[0][1]
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        with pytest.raises(libvirt.libvirtError) as err:  # raised unchanged: code checks keep working
            conn.lookupByName("no-such-domain")
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        records = virt.gather(conn, ["state", "cpu"])
        assert [r.name for r in records] == ["test"] and "cpu.time" in records[0].stats
    finally:
        assert conn.close() >= 0  # the references still held by the domain objects


def test_connect_without_timeout_gives_libvirts_connection() -> None:
    for conn in (virt.connect("test:///default", timeout=None), virt.connect("test:///default")):
        try:
            assert isinstance(conn, libvirt.virConnect)  # the checks': their watchdog bounds them
        finally:
            conn.close()


def test_set_default_timeout_applies_to_later_connections() -> None:
    try:
        virt.set_default_timeout(7)
        conn = virt.connect("test:///default")
        assert conn.deadline == 7
        conn.close()
    finally:
        virt.set_default_timeout(None)


class virDomain:
    """A domain whose block job query never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def name(self) -> str:
        return "web1"

    def blockJobInfo(self, disk: str, flags: int) -> dict[str, int]:
        self.calls.append(disk)
        self.release.wait(30)
        return {}

    def create(self) -> int:
        time.sleep(0.3)
        return 0


def test_a_call_that_never_answers_raises_call_timeout_naming_it() -> None:
    fake = virDomain()
    dom: Any = virt.Timed(fake, 0.2)
    started = time.monotonic()
    with pytest.raises(CallTimeout) as err:
        dom.blockJobInfo("vda", 0)
    took = time.monotonic() - started
    fake.release.set()
    assert 0.2 <= took < 1.5
    assert str(err.value) == "virDomainBlockJobInfo on web1 did not answer within 0.2s"
    assert fake.calls == ["vda"]


def test_long_calls_get_a_longer_deadline() -> None:
    dom: Any = virt.Timed(virDomain(), 0.1)  # create sleeps 0.3 s: over the deadline, under LONG_FACTOR times it
    assert dom.create() == 0


def test_call_with_deadline_translates_and_times_out() -> None:
    def fails() -> None:
        raise error(libvirt.VIR_ERR_NO_DOMAIN, message="Domain not found")

    with pytest.raises(NotFound, match=r"^web1: disk errors: Domain not found$"):
        virt.call_with_deadline(fails, 1, "web1: disk errors")
    with pytest.raises(CallTimeout, match=r"^web1: disk errors: no answer within 0\.1s$"):
        virt.call_with_deadline(lambda: time.sleep(2), 0.1, "web1: disk errors")


def test_connect_failure_is_connect_error() -> None:
    with pytest.raises(ConnectError, match=r"cannot connect to qemu\+unix:///system\?socket=/nonexistent/x\.sock"):
        virt.connect("qemu+unix:///system?socket=/nonexistent/x.sock", timeout=5)


class Interrupted(Exception):
    pass


def test_a_signal_during_a_call_lets_the_call_end_first() -> None:
    """As if the call ran in the main thread: the handler's exception comes once libvirt is done,
    so the backup's undo path sees the snapshot that was being made, not a call in flight."""
    ended: list[float] = []

    def slow() -> None:
        time.sleep(0.4)
        ended.append(time.monotonic())

    def handler(_sig: int, _frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupted):
            virt.run_with_deadline(slow, 5, "slow call")
        assert ended, "the exception came before the call ended"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
