"""Every libvirt call under a deadline: a thread-based one, since a signal handler never runs
while libvirt blocks (rig-facts: SIGALRM did not fire in 20 s; libvirt-python releases the GIL
while it waits, so a waiting thread does not hold the process).

``Timed`` wraps a connection, and every domain, snapshot or other libvirt object its methods
return, so that each method call runs under the per-call deadline and a call that does not
answer raises CallTimeout naming the call and the object ("virDomainBlockJobInfo on web1 did not
answer within 30s"). The libvirtError of a call that fails is raised unchanged, so code that
inspects error codes keeps working; the classifier (virt.errors) translates it where caught.

Calls that only read the object's own fields (name, UUID, ID) make no RPC and run directly.
Calls that may legitimately take long (starting a big guest, a snapshot with memory, a revert,
deleting an internal snapshot, saving memory, destroying a guest QEMU is slow to kill) get
``LONG_FACTOR`` times the per-call deadline.
"""

from __future__ import annotations

import _thread
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from sensu_kvm.errors import CallTimeout
from sensu_kvm.virt.errors import translate

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0  # seconds per call, the tools' and the handler's --timeout default
LONG_FACTOR = 20  # the deadline of the calls in LONG_CALLS: 10 minutes at the default

# Methods (libvirt-python's names) that only read fields kept in the Python or C object.
LOCAL_CALLS = frozenset({"name", "UUID", "UUIDString", "ID", "getName", "connect", "getConnect", "getDomain",
                         "domain"})
# Methods that may take much longer than one ordinary RPC.
LONG_CALLS = frozenset({"create", "createWithFlags", "createWithFiles", "createXML", "snapshotCreateXML",
                        "revertToSnapshot", "delete", "save", "saveFlags", "managedSave", "restore",
                        "restoreFlags", "coreDump", "coreDumpWithFormat", "destroy", "destroyFlags",
                        "shutdownFlags", "undefineFlags", "checkpointCreateXML", "backupBegin"})

_PREFIX = {"virConnect": "virConnect", "virDomain": "virDomain", "virDomainSnapshot": "virDomainSnapshot",
           "virDomainCheckpoint": "virDomainCheckpoint", "virStoragePool": "virStoragePool",
           "virStorageVol": "virStorageVol", "virNetwork": "virNetwork", "virSecret": "virSecret",
           "virNodeDevice": "virNodeDevice", "virInterface": "virInterface"}
_WRAPPED = tuple(getattr(libvirt, name) for name in _PREFIX if hasattr(libvirt, name))


class Pending:
    """A call running in a daemon thread, started now and waited for later (``start``)."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self._box: dict[str, Any] = {}
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, (func,))

    def _run(self, func: Callable[[], Any]) -> None:
        try:
            self._box["value"] = func()
        except BaseException as err:  # handed to whoever waits
            self._box["error"] = err
        finally:
            self._done.release()

    def finished(self, seconds: float) -> bool:
        """Whether the call has ended, waiting up to ``seconds`` for it (it may still end later;
        infinite: until it ends)."""
        if self._done.acquire(timeout=-1 if seconds == float("inf") else seconds):
            self._done.release()
            return True
        return False

    def outcome(self) -> Any:
        """The call's value, or its exception raised (once it has finished)."""
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]


def start(func: Callable[[], Any]) -> Pending:
    """Start ``func`` in a daemon thread now; Pending.finished waits for it."""
    return Pending(func)


def run_with_deadline(func: Callable[[], T], seconds: float, what: str, late: str | None = None) -> T:
    """Run ``func`` in a daemon thread; after ``seconds`` give up with CallTimeout, whose message is
    ``late`` or else "WHAT: no answer within Ns".

    Exceptions of ``func`` are raised unchanged. The abandoned thread dies with the process.
    """
    pending = Pending(func)
    give_up = time.monotonic() + seconds
    try:
        finished = pending.finished(seconds)
    except BaseException:
        # A signal handler raised while the call runs. Made in this thread, the call would have
        # ended before the handler ran: let it end first (within its deadline), so that whoever
        # handles the signal (the backup's undo path) sees what libvirt did, not a call in flight.
        pending.finished(max(0.0, give_up - time.monotonic()))
        raise
    if not finished:
        raise CallTimeout(late or f"{what}: no answer within {seconds:g}s")
    value: T = pending.outcome()
    return value


def call_with_deadline(func: Callable[[], T], seconds: float, what: str) -> T:
    """Like run_with_deadline, with a libvirtError translated by the classifier (``what: reason``)."""
    try:
        return run_with_deadline(func, seconds, what)
    except libvirt.libvirtError as err:
        raise translate(err, what) from err


def api_name(obj: Any, method: str) -> str:
    """libvirt's C name of a method, near enough to find it in the API docs (virDomainBlockJobInfo)."""
    prefix = _PREFIX.get(type(obj).__name__, type(obj).__name__)
    return prefix + method[:1].upper() + method[1:]


def _label(obj: Any) -> str:
    if isinstance(obj, libvirt.virConnect):
        return ""
    try:
        return str(obj.name())  # a field of the object: no RPC
    except Exception:
        return ""


def wrap(value: Any, seconds: float) -> Any:
    """``value`` with every libvirt object in it (also in a list or tuple) wrapped in Timed."""
    if isinstance(value, _WRAPPED):
        return Timed(value, seconds)
    if isinstance(value, list):
        if value and isinstance(value[0], (*_WRAPPED, tuple)):
            return [wrap(item, seconds) for item in value]
        return value
    if isinstance(value, tuple) and value and isinstance(value[0], _WRAPPED):
        return tuple(wrap(item, seconds) for item in value)
    return value


def raw(obj: Any) -> Any:
    """The libvirt object inside a Timed (for module functions such as libvirt_qemu's)."""
    return obj.unwrapped if isinstance(obj, Timed) else obj


class Timed:
    """A libvirt object whose method calls run under a deadline (see the module's docstring)."""

    __slots__ = ("_label", "_obj", "_seconds")

    def __init__(self, obj: Any, seconds: float) -> None:
        self._obj = obj
        self._seconds = seconds
        self._label = _label(obj)

    @property
    def unwrapped(self) -> Any:
        return self._obj

    @property
    def deadline(self) -> float:
        return self._seconds

    def __repr__(self) -> str:
        return f"<Timed {self._obj!r} {self._seconds:g}s>"

    def __getattr__(self, method: str) -> Any:
        attr = getattr(self._obj, method)
        if method in LOCAL_CALLS or method.startswith("_") or not callable(attr):
            return attr
        seconds = self._seconds * LONG_FACTOR if method in LONG_CALLS else self._seconds
        where = f" on {self._label}" if self._label else ""

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(raw(a) for a in args)
            what = api_name(self._obj, method) + where
            result = run_with_deadline(lambda: attr(*args, **kwargs), seconds, what,
                                       f"{what} did not answer within {seconds:g}s")
            return wrap(result, self._seconds)

        return call

    def close(self) -> int:
        """Close the connection; one that does not answer is left to die with the process."""
        try:
            return int(run_with_deadline(self._obj.close, self._seconds, "virConnectClose"))
        except CallTimeout:
            return -1
