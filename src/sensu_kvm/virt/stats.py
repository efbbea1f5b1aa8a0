"""Statistics: one bulk getAllDomainStats call, with a per-domain fallback for the groups the
driver's bulk call lacks (one broken domain makes only that domain unreadable), and the host's
own CPU and memory counters."""

from __future__ import annotations

import _thread
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import libvirt

from sensu_kvm import activity
from sensu_kvm.names import Names, entity_name, perf_label, visible
from sensu_kvm.virt.deadline import call_with_deadline
from sensu_kvm.virt.errors import reason, translate

T = TypeVar("T")


# Per-domain fallbacks, for drivers whose bulk call lacks a group; each returns the bulk call's keys.
class _Domain:
    """One domain's answers that several fallbacks share, each fetched at most once."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom
        self._info: list[int] | None = None
        self._xml: list[tuple[str, str, str]] | None = None

    def info(self) -> list[int]:
        """[state, max memory KiB, memory KiB, vCPUs, CPU time ns]"""
        if self._info is None:
            self._info = self.dom.info()
        return self._info

    def devices(self, kind: str) -> list[tuple[str, str]]:
        """(target, source) of each disk ('disk') or interface ('interface') in the live XML."""
        if self._xml is None:
            self._xml = _device_list(self.dom.XMLDesc(0))
        return [(target, source) for k, target, source in self._xml if k == kind]


def _device_list(text: str) -> list[tuple[str, str, str]]:
    """(kind, target dev, source) of every disk and interface under <devices>, read with expat
    (ElementTree costs ~15 ms of imports, on a path that runs once per domain at most)."""
    import xml.parsers.expat  # noqa: PLC0415 (only the fallback path needs it)

    found: list[tuple[str, str, str]] = []
    path: list[str] = []
    current: dict[str, str] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        path.append(tag)
        if len(path) == 3 and path[1] == "devices" and tag in ("disk", "interface"):
            current.clear()
            current["kind"] = tag
        elif len(path) == 4 and current and tag == "target" and attrs.get("dev"):
            current["target"] = attrs["dev"]
        elif len(path) == 4 and current and tag == "source":
            current["source"] = attrs.get("file") or attrs.get("dev") or attrs.get("network") or ""

    def end(tag: str) -> None:
        if len(path) == 3 and current:
            if "target" in current:
                found.append((current["kind"], current["target"], current.get("source", "")))
            current.clear()
        path.pop()

    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(text, True)
    return found


def _state_fallback(d: _Domain) -> dict[str, Any]:
    state, why = d.dom.state()
    return {"state.state": state, "state.reason": why}


def _cpu_fallback(d: _Domain) -> dict[str, Any]:
    return {"cpu.time": d.info()[4]}


def _vcpu_fallback(d: _Domain) -> dict[str, Any]:
    infos, _maps = d.dom.vcpus()
    stats: dict[str, Any] = {"vcpu.current": len(infos)}
    for number, state, cpu_time, _cpu in infos:
        stats[f"vcpu.{number}.state"] = state
        stats[f"vcpu.{number}.time"] = cpu_time
    return stats


def _balloon_fallback(d: _Domain) -> dict[str, Any]:
    stats = {f"balloon.{'current' if k == 'actual' else k.replace('_update', '-update')}": v
             for k, v in d.dom.memoryStats().items()}
    stats["balloon.maximum"] = d.info()[1]
    return stats


def _block_fallback(d: _Domain) -> dict[str, Any]:
    disks = d.devices("disk")
    stats: dict[str, Any] = {"block.count": len(disks)}
    for n, (target, path) in enumerate(disks):
        key = f"block.{n}."
        stats[key + "name"] = target
        if path:
            stats[key + "path"] = path
        try:
            rd_reqs, rd_bytes, wr_reqs, wr_bytes, _errs = d.dom.blockStats(target)
            stats.update({key + "rd.reqs": rd_reqs, key + "rd.bytes": rd_bytes,
                          key + "wr.reqs": wr_reqs, key + "wr.bytes": wr_bytes})
            capacity, allocation, physical = d.dom.blockInfo(target)
            stats.update({key + "capacity": capacity, key + "allocation": allocation, key + "physical": physical})
        except libvirt.libvirtError:
            continue  # an empty CD-ROM drive, say: no statistics for this disk
    return stats


def _interface_fallback(d: _Domain) -> dict[str, Any]:
    nics = d.devices("interface")
    stats: dict[str, Any] = {"net.count": len(nics)}
    names = ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")
    for n, (target, _source) in enumerate(nics):
        stats[f"net.{n}.name"] = target
        stats.update({f"net.{n}.{k}": v for k, v in zip(names, d.dom.interfaceStats(target))})
    return stats


class Group(NamedTuple):
    flag: int
    prefix: str
    fallback: Callable[[_Domain], dict[str, Any]] | None = None


GROUPS: dict[str, Group] = {
    "state": Group(libvirt.VIR_DOMAIN_STATS_STATE, "state.", _state_fallback),
    "cpu": Group(libvirt.VIR_DOMAIN_STATS_CPU_TOTAL, "cpu.", _cpu_fallback),
    "balloon": Group(libvirt.VIR_DOMAIN_STATS_BALLOON, "balloon.", _balloon_fallback),
    "vcpu": Group(libvirt.VIR_DOMAIN_STATS_VCPU, "vcpu.", _vcpu_fallback),
    "interface": Group(libvirt.VIR_DOMAIN_STATS_INTERFACE, "net.", _interface_fallback),
    "block": Group(libvirt.VIR_DOMAIN_STATS_BLOCK, "block.", _block_fallback),
}


class DomainRecord:
    """One domain's statistics; ``error`` says why some of them could not be read.

    ``names`` is the host's :class:`sensu_kvm.names.Names` (``domains.choose`` sets it, made from
    every domain of the host); ``text``, ``label`` and ``entity`` are the domain's name in human
    text, in perfdata labels and as a Sensu entity (without ``names``: mapped alone, no suffix).
    """

    __slots__ = ("dom", "error", "name", "names", "stats", "uuid")

    def __init__(self, name: str, uuid: str, stats: dict[str, Any], error: str | None = None, dom: Any = None):
        self.name = name
        self.uuid = uuid
        self.stats = stats
        self.error = error
        self.dom = dom
        self.names: Names | None = None

    @property
    def text(self) -> str:
        return self.names.text(self.name) if self.names is not None else visible(self.name)

    @property
    def label(self) -> str:
        return self.names.label(self.name) if self.names is not None else perf_label(self.name)

    @property
    def entity(self) -> str:
        return self.names.entity(self.name) if self.names is not None else entity_name(self.name)


_INACTIVE = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)


FALLBACK_THREADS = 8


def _lacks(record: DomainRecord, groups: Iterable[str]) -> bool:
    """Whether a group with a fallback is missing from the record (no call made to find out)."""
    inactive = record.stats.get("state.state") in _INACTIVE
    for name in groups:
        group = GROUPS[name]
        if group.fallback is None or (inactive and name != "state"):
            continue
        if not any(k.startswith(group.prefix) for k in record.stats):
            return True
    return False


def _complete(record: DomainRecord, groups: Iterable[str]) -> None:
    """Fill groups the bulk call left out through their per-domain fallback.

    Only the state group is filled for a domain that does not run: the others have nothing to
    say about it. On a driver whose bulk call has every group (QEMU), nothing is called here.
    """
    shared = _Domain(record.dom)
    for name in groups:
        group = GROUPS[name]
        if group.fallback is None or any(k.startswith(group.prefix) for k in record.stats):
            continue
        if name != "state" and record.stats.get("state.state") in _INACTIVE:
            continue
        try:
            record.stats.update(group.fallback(shared))
        except libvirt.libvirtError as err:
            record.error = f"{name} statistics unreadable: {reason(err)}"
            return
        except Exception as err:  # unparsable XML, say: this domain alone is unreadable
            record.error = f"{name} statistics unreadable: {type(err).__name__}: {err}"
            return


def gather(conn: libvirt.virConnect, groups: Iterable[str], fill: bool = True) -> list[DomainRecord]:
    """Statistics of every domain for the given groups: one bulk call, per-domain fallback.

    Without ``fill`` only the state is read per domain, and only when the bulk call failed: what
    the driver's bulk call lacks stays missing.
    """
    wanted = sorted(dict.fromkeys(groups), key=lambda g: g != "state")  # state first: fallbacks need it
    flags = 0
    for name in wanted:
        flags |= GROUPS[name].flag
    activity.doing(f"reading domain statistics ({', '.join(wanted)})")
    try:
        pairs = conn.getAllDomainStats(flags)
    except libvirt.libvirtError:
        try:
            doms = conn.listAllDomains(0)
        except libvirt.libvirtError as err:
            raise translate(err, "cannot list domains") from err
        pairs = [(dom, {}) for dom in doms]
    records = [DomainRecord(dom.name(), dom.UUIDString(), dict(stats), None, dom) for dom, stats in pairs]
    filled = wanted if fill else [g for g in wanted if g == "state"]
    lacking = [r for r in records if _lacks(r, filled)]
    if lacking:
        activity.doing(f"reading statistics of {len(lacking)} domains one by one (the driver's bulk call lacks them)")
        in_parallel(lambda r: _complete(r, filled), lacking, FALLBACK_THREADS)
    return records


def in_parallel(func: Callable[[T], None], items: list[T], threads: int) -> None:
    """Call ``func`` on every item from a few threads (libvirt multiplexes independent calls on
    one connection, and libvirt-python releases the GIL while it waits), and wait for all.

    Bare ``_thread``: concurrent.futures costs ~20 ms of imports. ``func`` must not raise.
    """
    pending = list(reversed(items))
    guard = _thread.allocate_lock()
    workers = min(threads, len(items))
    finished = [_thread.allocate_lock() for _ in range(workers)]

    def work(done: Any) -> None:
        try:
            while True:
                with guard:
                    if not pending:
                        return
                    item = pending.pop()
                func(item)
        finally:
            done.release()

    for done in finished:
        done.acquire()
        _thread.start_new_thread(work, (done,))
    for done in finished:
        done.acquire()


def disk_errors(dom: libvirt.virDomain, seconds: float) -> dict[str, int]:
    """virDomainGetDiskErrors for one domain, under a deadline."""
    return call_with_deadline(lambda: dict(dom.diskErrors()), seconds, f"{dom.name()}: disk errors")


def node_cpu_stats(conn: libvirt.virConnect) -> dict[str, int]:
    """The host's CPU time counters in ns (kernel, user, idle, iowait), summed over all CPUs."""
    activity.doing("reading the host's CPU statistics")
    try:
        return dict(conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS))
    except libvirt.libvirtError as err:
        raise translate(err, "cannot read the host's CPU statistics") from err


def node_memory_stats(conn: libvirt.virConnect) -> dict[str, int]:
    """The host's memory in KiB (total, free, buffers, cached)."""
    activity.doing("reading the host's memory statistics")
    try:
        return dict(conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS))
    except libvirt.libvirtError as err:
        raise translate(err, "cannot read the host's memory statistics") from err
