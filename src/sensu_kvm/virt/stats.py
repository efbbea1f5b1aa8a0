"""Statistics: one bulk getAllDomainStats call, with a per-domain fallback for the groups the
driver's bulk call lacks (one broken domain makes only that domain unreadable), and the host's
own CPU and memory counters."""

from __future__ import annotations

import _thread
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import libvirt

from sensu_kvm import activity
from sensu_kvm.names import Names, entity_name, perf_label, visible
from sensu_kvm.virt.deadline import call_with_deadline, raw
from sensu_kvm.virt.errors import reason, translate

T = TypeVar("T")
R = TypeVar("R")


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
        """(target, source) of each disk ('disk') or interface ('interface') in the live XML (an
        interface without <target dev> with target "")."""
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
            if "target" in current or current["kind"] == "interface":  # counted, as the bulk call does
                found.append((current["kind"], current.get("target", ""), current.get("source", "")))
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
        if not target:
            continue  # no <target dev> (not started, or no host device): no name, no counters
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

    __slots__ = ("dom", "error", "name", "names", "stats", "uuid", "when")

    def __init__(self, name: str, uuid: str, stats: dict[str, Any], error: str | None = None, dom: Any = None,
                 when: float | None = None):
        self.name = name
        self.uuid = uuid
        self.stats = stats
        self.error = error
        self.dom = dom
        self.names: Names | None = None
        # When the counters were read: the middle of the call that answered them (None: not known).
        # A rate divides by the time between two of these, so it must not include the listing, the
        # other chunks or the pauses before a busy guest is asked again.
        self.when = when

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

# VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT (libvirt 4.5): a domain whose job another call holds
# (a migration, a backup, a QEMU monitor that does not answer) gives what it can without it
# instead of making the call wait for the job.
NOWAIT = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)
# The most domains asked for in one bulk call: keeps each answer far below libvirt's RPC message
# limit, and lets the calls of a large host run side by side.
CHUNK_MAX = 500
# Groups for which QEMU asks each domain's monitor, one domain after another within a call:
# these are the calls that spreading over libvirtd's workers speeds up.
MONITOR_GROUPS = frozenset({"balloon", "block", "vcpu"})
DEFAULT_CONCURRENCY = 5  # libvirtd's max_client_requests: calls of one client served at once

BUSY = ("busy: another operation holds its libvirt job (a migration, a backup, a block job starting, "
        "or a QEMU that does not answer its monitor), not measured")
_settings: dict[str, Any] = {"concurrency": None, "uri": None, "found": None}


class _Late:
    """What in_parallel gives for an item it did not finish within the time budget."""

    def __repr__(self) -> str:
        return "LATE"


LATE: Any = _Late()


def set_concurrency(calls: int | None, uri: str | None = None) -> None:
    """How many libvirt calls to make at once (--concurrency); None: what the daemon behind
    ``uri`` serves (see ``concurrency``)."""
    _settings.update(concurrency=calls, uri=uri, found=None)


def concurrency() -> int:
    """The concurrent calls to make: --concurrency, else libvirtd's own limit on the calls of one
    client (``max_client_requests``, capped by ``max_workers``) read from its configuration on
    this host, else libvirt's default of 5. A remote daemon's configuration cannot be read: 5."""
    given, uri = _settings["concurrency"], _settings["uri"]
    if given:
        return int(given)
    if uri is not None and "//" in uri and uri.split("//", 1)[1][:1] not in ("/", ""):
        return DEFAULT_CONCURRENCY  # qemu+ssh://host/system: not this host's daemon
    if _settings["found"] is None:  # the configuration is read once per run
        _settings["found"] = daemon_limit()
    return int(_settings["found"])


def daemon_limit(paths: Iterable[str] = ("/etc/libvirt/libvirtd.conf", "/etc/libvirt/virtqemud.conf")) -> int:
    """max_client_requests (capped by max_workers) of the first configuration file that exists."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as conf:
                text = conf.read()
        except OSError:
            continue
        values = {"max_client_requests": DEFAULT_CONCURRENCY, "max_workers": 20}
        for line in text.splitlines():
            key, _, value = line.partition("=")
            key, value = key.strip(), value.split("#", 1)[0].strip()
            if key in values and value.isdigit() and int(value) > 0:
                values[key] = int(value)
        return max(1, min(values["max_client_requests"], values["max_workers"]))
    return DEFAULT_CONCURRENCY


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


def _complete(record: DomainRecord, groups: Iterable[str]) -> tuple[dict[str, Any], str | None]:
    """The groups the bulk call left out, read through their per-domain fallbacks, and the error
    that stopped them (None): returned, not stored, since a late answer must change nothing.

    Only the state group is filled for a domain that does not run: the others have nothing to
    say about it. On a driver whose bulk call has every group (QEMU), nothing is called here.
    """
    shared = _Domain(record.dom)
    found: dict[str, Any] = {}
    state = record.stats.get("state.state")
    for name in groups:
        group = GROUPS[name]
        if group.fallback is None or any(k.startswith(group.prefix) for k in record.stats):
            continue
        if name != "state" and state in _INACTIVE:
            continue
        try:
            found.update(group.fallback(shared))
        except libvirt.libvirtError as err:
            return found, f"{name} statistics unreadable: {reason(err)}"
        except Exception as err:  # unparsable XML, say: this domain alone is unreadable
            return found, f"{name} statistics unreadable: {type(err).__name__}: {err}"
        if name == "state":
            state = found.get("state.state")
    return found, None


def _timed(func: Callable[..., R], *args: Any) -> tuple[R, float]:
    """What ``func`` returns, and the middle of the time it took (when what it read was read)."""
    before = time.time()
    value = func(*args)
    return value, (before + time.time()) / 2


def _busy(stats: dict[str, Any], wanted: Iterable[str]) -> bool:
    """Whether QEMU answered a NOWAIT bulk call for this running domain without its job: then the
    balloon group has no ``balloon.rss`` and a disk with a source no ``capacity`` (measured on
    libvirt 9.0 with the job held by a call waiting on a stopped QEMU: docs/decisions.md)."""
    if stats.get("state.state") in _INACTIVE:
        return False
    if "balloon" in wanted and "balloon.current" in stats and "balloon.rss" not in stats:
        return True
    if "block" in wanted:
        for n in range(int(stats.get("block.count", 0) or 0)):
            if f"block.{n}.path" in stats and f"block.{n}.capacity" not in stats:
                return True
    return False


LATE_MARK = "not read: time ran out"


def late_error(phase: str) -> str:
    """The error of a domain not read within the time budget."""
    return f"{LATE_MARK} while {phase}"


def gather(conn: libvirt.virConnect, groups: Iterable[str], fill: bool = True,
           doms: list[Any] | None = None, extra: int = 0) -> list[DomainRecord]:
    """Statistics for the given groups of every domain (or of ``doms``): bulk calls, per-domain
    fallback where the driver's bulk call lacks a group.

    Groups that QEMU reads from each domain's monitor (balloon, block, vcpu) are asked for in
    chunks, on as many concurrent calls as libvirtd serves (``concurrency``), since one call
    queries the domains one after another; a state-only read of every domain is one call. Every
    call passes NOWAIT: a domain whose job another call holds is answered without it, and gets
    the ``BUSY`` error instead of stalling the check. Calls not answered within the process's
    time budget (activity.left) leave their domains with a ``late_error``, and the phase is
    recorded (activity.ran_out). Without ``fill`` only the state is read per domain, and only
    when the bulk call failed: what the driver's bulk call lacks stays missing. ``extra`` adds
    flags to the bulk calls (VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING: every image of each disk's
    backing chain, for check-kvm-blockjob's chain depth).
    """
    wanted = sorted(dict.fromkeys(groups), key=lambda g: g != "state")  # state first: fallbacks need it
    flags = 0
    for name in wanted:
        flags |= GROUPS[name].flag
    phase = f"reading domain statistics ({', '.join(wanted)})"
    activity.doing(phase)
    chunked = doms is not None or bool(MONITOR_GROUPS.intersection(wanted))
    records: list[DomainRecord]
    if not chunked:
        answered, when = _timed(_bulk, conn, flags, extra)
        records = [DomainRecord(dom.name(), dom.UUIDString(), dict(stats), None, dom, when if stats else None)
                   for dom, stats in answered]
    else:
        if doms is None:
            try:
                doms = conn.listAllDomains(0)
            except libvirt.libvirtError as err:
                raise translate(err, "cannot list domains") from err
        records = _chunked(conn, doms, flags, phase, extra)
    if NOWAIT and MONITOR_GROUPS.intersection(wanted) and conn.getType() == "QEMU":
        _settle_busy(conn, [r for r in records if r.error is None and _busy(r.stats, wanted)], flags, wanted, extra)
    filled = wanted if fill else [g for g in wanted if g == "state"]
    lacking = [r for r in records if r.error is None and _lacks(r, filled)]
    if lacking:
        phase = f"reading statistics of {len(lacking)} domains one by one (the driver's bulk call lacks them)"
        for record, answer in zip(lacking, in_parallel(lambda r: _timed(_complete, r, filled), lacking,
                                                        concurrency(), phase)):
            if answer is LATE:
                record.error = late_error(phase)
            else:
                (found, record.error), record.when = answer
                record.stats.update(found)
    return records


# How long a guest may stay busy before it is reported so: another reader's query holds a guest's
# job for milliseconds (two checks that run at the same moment, measured by the overlap test), a
# stuck operation for good. The busy ones are asked again, still with NOWAIT, after each pause.
BUSY_PAUSES = (0.05, 0.1, 0.2, 0.4)


def _settle_busy(conn: libvirt.virConnect, busy: list[DomainRecord], flags: int, wanted: list[str],
                 extra: int = 0) -> None:
    """Ask the busy guests again after short pauses (within the time budget); those still busy
    then get the ``BUSY`` error, the others their fresh statistics."""
    if busy:
        activity.doing(f"waiting for {len(busy)} busy domains (another operation holds their libvirt job)")
    for pause in BUSY_PAUSES:
        if not busy or activity.left() < pause:
            break
        time.sleep(pause)
        try:
            pairs, when = _timed(conn.domainListGetStats, [raw(r.dom) for r in busy], flags, NOWAIT | extra)
        except libvirt.libvirtError:
            break  # one of them is gone meanwhile: the busy ones stay busy
        answers = {dom.UUIDString(): dict(stats) for dom, stats in pairs}
        for record in busy:
            if record.uuid in answers:
                record.stats, record.when = answers[record.uuid], when
        busy = [r for r in busy if _busy(r.stats, wanted)]
    for record in busy:
        record.error = BUSY


def _bulk(conn: libvirt.virConnect, flags: int, extra: int = 0) -> list[tuple[Any, dict[str, Any]]]:
    """One getAllDomainStats call; if it fails (an old driver, a domain gone meanwhile), every
    domain with no statistics, for the per-domain fallback."""
    try:
        return list(conn.getAllDomainStats(flags, NOWAIT | extra))
    except libvirt.libvirtError:
        try:
            return [(dom, {}) for dom in conn.listAllDomains(0)]
        except libvirt.libvirtError as err:
            raise translate(err, "cannot list domains") from err


def _chunked(conn: libvirt.virConnect, doms: list[Any], flags: int, phase: str, extra: int = 0) -> list[DomainRecord]:
    """domainListGetStats over chunks of ``doms``, the chunks asked for side by side."""
    if not doms:
        return []
    calls = concurrency()
    size = max(1, min(CHUNK_MAX, -(-len(doms) // calls)))
    chunks = [doms[i:i + size] for i in range(0, len(doms), size)]

    def read(chunk: list[Any]) -> dict[str, dict[str, Any]]:
        try:
            pairs = conn.domainListGetStats([raw(d) for d in chunk], flags, NOWAIT | extra)
        except libvirt.libvirtError:  # a domain of the chunk is gone: each one is read alone
            return {}
        return {dom.UUIDString(): dict(stats) for dom, stats in pairs}

    answers = (in_parallel(lambda chunk: _timed(read, chunk), chunks, calls, phase) if len(chunks) > 1
               else [_timed(read, chunks[0])])
    records = []
    for chunk, answer in zip(chunks, answers):
        for dom in chunk:
            uuid = dom.UUIDString()
            if answer is LATE:
                records.append(DomainRecord(dom.name(), uuid, {}, late_error(phase), dom))
            else:
                stats, when = answer
                records.append(DomainRecord(dom.name(), uuid, stats.get(uuid, {}), None, dom,
                                            when if uuid in stats else None))
    return records


def in_parallel(func: Callable[[T], R], items: list[T], threads: int, phase: str = "") -> list[Any]:
    """``func`` of every item, called from a few threads (libvirt multiplexes independent calls
    on one connection, and libvirt-python releases the GIL while it waits), in the items' order.

    ``phase`` says what the calls read (activity.doing, for the watchdog's line). An item not
    finished when the process's time budget runs out (activity.left) gives ``LATE`` and records
    ``phase`` as the one that ran out of time; its call may still be running, and
    what it returns later is thrown away. ``func`` must not raise, and must change nothing that
    the caller reads: it returns what it found. Bare ``_thread``: concurrent.futures costs ~20 ms
    of imports.
    """
    results: list[Any] = [LATE] * len(items)
    if not items:
        return results
    if phase:
        activity.doing(phase)
    pending = list(range(len(items) - 1, -1, -1))
    guard = _thread.allocate_lock()
    closed = [False]
    workers = min(max(1, threads), len(items))
    finished = [_thread.allocate_lock() for _ in range(workers)]

    def work(done: Any) -> None:
        try:
            while True:
                with guard:
                    if not pending or closed[0]:
                        return
                    index = pending.pop()
                value = func(items[index])
                with guard:
                    if closed[0]:
                        return
                    results[index] = value
        finally:
            done.release()

    for done in finished:
        done.acquire()
        _thread.start_new_thread(work, (done,))
    for done in finished:
        left = activity.left()
        if not done.acquire(timeout=-1 if left == float("inf") else left):
            break
    with guard:
        closed[0] = True
        late = any(r is LATE for r in results)
    if late:
        activity.ran_out(phase or activity.current())
    return results


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
