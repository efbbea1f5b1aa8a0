"""The scratch watch of a pull backup (--engine api; docs/decisions.md "Issue 17: the scratch watch").

While a pull job runs, QEMU copies the old data of every block the guest overwrites into the
scratch file of its disk (copy-before-write). When the scratch's file system fills, QEMU 7.2 fails
the guest's write (its default ``on-cbw-error=break-guest-write``, which libvirt 9.0 keeps): an I/O
error inside the guest, or a pause for a disk with ``error_policy='stop'``. The backup itself would
stay right, the guest would not.

``Watch`` polls, every INTERVAL seconds from just after ``backupBegin`` to the end of the copy, the
free space of each file system holding a scratch file of the run (statvfs, as an unprivileged user
sees it) and the job's ``disk_temp_used`` / ``disk_temp_total`` (``jobStats``; libvirt 9.0 reports
them for a backup job: the scratch files' allocation and their virtual size). As soon as a scratch
file system has less than ``margin`` free, the watch ends the job itself (``abortJob``: the NBD
server stops, so the copy fails at its next read, and QEMU deletes the scratch files) and
``stop()`` raises ScratchFull with the one line to show; the run then undoes the rest as for any
failure (partial archive, socket folder, the run's checkpoint; the chain record is not touched).

The margin is the largest of MIN_MARGIN, MARGIN_FRACTION of the file system, and REACT seconds of
the fastest shrinking of its free space seen in the last WINDOW seconds (a guest writing fast needs
more room between two polls and the end of the job)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sensu_kvm.errors import KvmError, Refused
from sensu_kvm.virt import api, backupjobs

MIB = 1024 * 1024
INTERVAL = 0.25  # seconds between two polls
MIN_MARGIN = 64 * MIB
MARGIN_FRACTION = 0.02
REACT = 1.0  # seconds of the fastest recent growth kept free as well (a poll + abortJob, twice over)
WINDOW = 5.0  # seconds over which that growth is remembered


class ScratchFull(Refused):
    """The watch ended the backup job before a scratch file system filled up."""


class Fs(NamedTuple):
    """A file system holding scratch files of the run, at one poll."""

    folder: str  # the (first) scratch folder on it
    size: int  # bytes of the file system
    free: int  # bytes free to unprivileged users
    used: int  # bytes allocated by this run's scratch files on it


def margin(size: int, rate: float) -> int:
    """Bytes that must stay free on a scratch file system of ``size`` bytes whose free space
    shrinks at up to ``rate`` bytes/s."""
    return int(max(MIN_MARGIN, MARGIN_FRACTION * size, REACT * max(rate, 0.0)))


def mib(count: float) -> str:
    return f"{count / MIB:,.1f} MiB"


def problem(name: str, fs: Fs, rate: float, temp: tuple[int, int] | None) -> str:
    """'' while ``fs`` has room enough, else the one line that ends the run."""
    need = margin(fs.size, rate)
    if fs.free >= need:
        return ""
    stats = f"; libvirt disk_temp_used {mib(temp[0])} of disk_temp_total {mib(temp[1])}" if temp else ""
    return (f"{name}: backup stopped before its scratch space ran out: {fs.folder} has {mib(fs.free)} free of "
            f"{mib(fs.size)} (this run's scratch files {mib(fs.used)}{stats}), less than the margin of {mib(need)}; "
            "the guest overwrote more during the backup than the folder can take: give --scratch-dir a folder "
            f"with more free space (up to the copied disks' size{', ' + mib(temp[1]) if temp else ''})")


def fs_of(folder: str) -> tuple[int, int, int]:
    """(device, size, free to unprivileged users) of the file system of ``folder``."""
    info = os.statvfs(folder)
    return os.stat(folder).st_dev, info.f_blocks * info.f_frsize, info.f_bavail * info.f_frsize


def allocated(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def temp_stats(dom: Any) -> tuple[int, int] | None:
    """The job's (disk_temp_used, disk_temp_total), or None when libvirt does not say."""
    try:
        stats = dom.jobStats(0)
    except api.Error:
        return None
    if "disk_temp_used" not in stats or "disk_temp_total" not in stats:
        return None
    return int(stats["disk_temp_used"]), int(stats["disk_temp_total"])


class Watch:
    """Watch the scratch files ``scratch`` (target -> path) of the pull job of ``dom``."""

    def __init__(self, dom: Any, scratch: Mapping[str, str], interval: float = INTERVAL,
                 fs: Callable[[str], tuple[int, int, int]] = fs_of,
                 stats: Callable[[Any], tuple[int, int] | None] = temp_stats,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dom = dom
        self.name = str(dom.name())
        self.scratch = dict(scratch)
        self.interval = interval
        self.fs, self.stats, self.clock = fs, stats, clock
        self.error = ""
        self.polls = 0
        self.peak: tuple[int, int] | None = None  # the largest disk_temp_used seen, with its total
        self._last: dict[int, tuple[float, int]] = {}  # device -> (time, free) of the previous poll
        self._rates: dict[int, list[tuple[float, float]]] = {}  # device -> (time, bytes/s) in WINDOW
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scratch-watch", daemon=True)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def poll(self) -> str:
        """One look: '' while every scratch file system has room, else the line that ends the run."""
        self.polls += 1
        temp = self.stats(self.dom)
        if temp is not None and (self.peak is None or temp[0] > self.peak[0]):
            self.peak = temp
        found: dict[int, Fs] = {}
        for path in self.scratch.values():
            folder = os.path.dirname(path) or "."
            try:
                device, size, free = self.fs(folder)
            except OSError:
                continue
            old = found.get(device)
            found[device] = Fs(old.folder if old else folder, size, free, (old.used if old else 0) + allocated(path))
        now = self.clock()
        for device, fs in found.items():
            rates = [r for r in self._rates.get(device, []) if now - r[0] <= WINDOW]
            last = self._last.get(device)
            if last is not None and now > last[0]:
                rates.append((now, (last[1] - fs.free) / (now - last[0])))
            self._rates[device] = rates
            self._last[device] = (now, fs.free)
            line = problem(self.name, fs, max((r for _t, r in rates), default=0.0), temp)
            if line:
                return line
        return ""

    def _run(self) -> None:
        while True:
            line = self.poll()
            if line:
                try:
                    backupjobs.abort(self.dom)
                except KvmError as err:  # the job may have ended meanwhile; the run's undo ends it else
                    line += f" (ending the job: {err})"
                self.error = line
                return
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        """Stop watching; raises ScratchFull when the watch ended the job."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.error:
            raise ScratchFull(self.error)
