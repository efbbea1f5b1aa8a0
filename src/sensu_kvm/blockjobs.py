"""Block jobs and backing chains of running domains, read for check-kvm-blockjob and metrics-kvm
--block-jobs: the disks of each domain (from the bulk ``block`` group, else its live XML), one
``blockJobInfo`` call per disk, and the depth of each disk's backing chain.

libvirt has no bulk call for block jobs: ``virDomainGetBlockJobInfo`` is asked per disk (on QEMU
~0.2 ms a call, answered by libvirtd from its own record of the disk's job, without asking QEMU
when there is none). A driver that has no block jobs at all (libvirt's test driver answers
VIR_ERR_NO_SUPPORT) is found out with one call (``supported``), and no other disk is asked.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sensu_kvm import virt
from sensu_kvm.errors import Unsupported

# virDomainBlockJobType
TYPES = {0: "unknown", 1: "pull", 2: "copy", 3: "commit", 4: "active commit", 5: "backup"}
MIRRORS = (2, 4)  # the jobs that reach a ready phase and wait for a pivot (or an abort)
BANDWIDTH_BYTES = 1  # VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES: the bandwidth in bytes/s, not MiB/s


class Disk(NamedTuple):
    """One disk of a running domain: its target, its active image and the images below it."""

    name: str
    path: str  # "" for a drive without a medium (no job can run on it)
    depth: int | None  # backing images below the active one; None when the driver did not say


class Job(NamedTuple):
    """The block job on one disk, as blockJobInfo gives it."""

    disk: str
    type: int
    cur: int
    end: int
    bandwidth: int  # bytes/s, 0: no limit

    @property
    def word(self) -> str:
        return TYPES.get(self.type, f"type {self.type}")

    @property
    def ready(self) -> bool:
        """A copy or active commit that has mirrored everything and waits for a pivot or an abort
        (libvirt's blockJobInfo has no ready flag: cur == end is how kvm-backup waits for it too)."""
        return self.type in MIRRORS and self.end > 0 and self.cur == self.end

    @property
    def percent(self) -> float:
        return 100.0 * self.cur / self.end if self.end > 0 else 0.0


def from_stats(stats: dict[str, Any], chain: bool) -> list[Disk] | None:
    """The disks in a domain's bulk ``block`` group, None when the group is missing. Read with
    VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING (``chain``) every image of a chain is an entry of its
    own with the disk's name: the entries after the first one of a name are its backing chain.
    Without that flag (one entry per disk) the depth is unknown."""
    if "block.count" not in stats:
        return None
    order: list[str] = []
    paths: dict[str, str] = {}
    layers: dict[str, int] = {}
    for n in range(int(stats.get("block.count") or 0)):
        name = stats.get(f"block.{n}.name")
        if not name:
            continue
        name = str(name)
        if name in layers:
            layers[name] += 1
        else:
            order.append(name)
            paths[name] = str(stats.get(f"block.{n}.path") or "")
            layers[name] = 0
    return [Disk(name, paths[name], layers[name] if chain else None) for name in order]


def from_xml(text: str) -> list[Disk]:
    """The disks of a domain's live XML, with the depth of each one's <backingStore> nesting
    (an empty <backingStore/> ends a chain and is not an image). expat, as virt.stats reads it."""
    import xml.parsers.expat  # noqa: PLC0415 (only the per-domain fallback needs it)

    found: list[Disk] = []
    path: list[str] = []
    disk: dict[str, Any] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        path.append(tag)
        if len(path) == 3 and path[1] == "devices" and tag == "disk":
            disk.clear()
            disk.update(depth=0, path="")
        elif not disk or len(path) < 4:
            return
        elif len(path) == 4 and tag == "target" and attrs.get("dev"):
            disk["name"] = attrs["dev"]
        elif len(path) == 4 and tag == "source":
            disk["path"] = attrs.get("file") or attrs.get("dev") or attrs.get("name") or attrs.get("volume") or ""
        elif tag == "source" and path[-2] == "backingStore" and all(p == "backingStore" for p in path[3:-1]):
            disk["depth"] = max(disk["depth"], len(path) - 4)

    def end(tag: str) -> None:
        if len(path) == 3 and disk:
            if disk.get("name"):
                found.append(Disk(disk["name"], disk["path"], disk["depth"]))
            disk.clear()
        path.pop()

    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(text, True)
    return found


def disks_of(record: virt.DomainRecord, chain: bool) -> list[Disk]:
    """The disks of a running domain: from its bulk statistics (read with the BACKING flag:
    ``chain``), else from its live XML (a call)."""
    given = from_stats(record.stats, chain)
    if given is not None:
        return given
    return from_xml(record.dom.XMLDesc(0))


def job_on(dom: Any, disk: str) -> Job | None:
    """The job on one disk, None when there is none (blockJobInfo answers {})."""
    info = dom.blockJobInfo(disk, BANDWIDTH_BYTES)
    if not info:
        return None
    return Job(disk, int(info.get("type", 0)), int(info.get("cur", 0)), int(info.get("end", 0)),
               int(info.get("bandwidth", 0)))


def supported(dom: Any, disk: str) -> bool:
    """Whether the driver has block jobs at all: False when it answers VIR_ERR_NO_SUPPORT (libvirt's
    test driver); any other answer, an error included, says it has."""
    try:
        job_on(dom, disk)
    except virt.libvirtError as err:
        return not issubclass(virt.kind(err), Unsupported)
    return True


class Found(NamedTuple):
    """What was read of one domain: its disks and the job on each that has one, or an error."""

    disks: tuple[Disk, ...] = ()
    jobs: tuple[Job, ...] = ()
    error: str = ""


def read(record: virt.DomainRecord, with_jobs: bool, chain: bool) -> Found:
    """One domain's disks and jobs (``with_jobs`` false: the disks alone). Never raises: an error
    is returned, for that domain alone."""
    try:
        disks = disks_of(record, chain)
        jobs = [job_on(record.dom, d.name) for d in disks if d.path] if with_jobs else []
    except virt.libvirtError as err:
        return Found(error=f"block jobs unreadable: {virt.reason(err)}")
    except Exception as err:  # an XML that does not parse: this domain alone
        return Found(error=f"block jobs unreadable: {type(err).__name__}: {err}")
    return Found(tuple(disks), tuple(j for j in jobs if j is not None))


def read_all(records: list[virt.DomainRecord], chain: bool) -> tuple[list[Any], bool, str]:
    """``read`` of every record (running, readable), on concurrent calls within the time budget
    (an item not read in time is virt.LATE), whether the driver has block jobs at all (asked
    once, of the first disk found), and the phase's name (for the domains not read in time).
    Without ``chain`` (metrics-kvm, which wants the jobs alone) a driver without block jobs costs
    that one probe, not a call per domain."""
    with_jobs = True
    probe = next(((r, d) for r in records for d in (from_stats(r.stats, chain) or []) if d.path), None)
    if probe is None and records:  # no bulk block group (a driver that lacks it): the XML of the first
        first = records[0]
        try:
            disks = from_xml(first.dom.XMLDesc(0))
        except virt.libvirtError:
            disks = []
        probe = next(((first, d) for d in disks if d.path), None)
    if probe is not None:
        with_jobs = supported(probe[0].dom, probe[1].name)
    phase = f"reading the block jobs of {len(records)} domain{'s' if len(records) != 1 else ''}"
    if not with_jobs and not chain:  # no jobs to read, and no chains asked for: nothing to call
        return [Found() for _record in records], with_jobs, phase
    return virt.in_parallel(lambda r: read(r, with_jobs, chain), records, virt.concurrency(), phase), with_jobs, phase
