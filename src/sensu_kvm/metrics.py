"""Metric points from libvirt statistics, and their four text formats (pure, no I/O).

One model, four renderings: a Point has a measurement (domain, vcpu, block, net, host, pool), tags and
numeric fields in base units (bytes, seconds), each field a counter or a gauge, and each of a fixed
type (INT or FLOAT), declared in the tables below: InfluxDB keeps one type per field and refuses a
whole batch in which a field's type changes ("field type conflict"), so the type never depends on
the value (an idle disk's write_seconds is 0.0, never 0i).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sensu_kvm.names import Names, graphite_node, influx_tag, prom_value, visible

NS = 1e-9
KIB = 1024
INT, FLOAT = "integer", "float"  # a field's type in InfluxDB (Graphite and Prometheus have only numbers)


class Field(NamedTuple):
    """How one libvirt statistic becomes a field: its name, kind, scale, type and help text.

    The type: counts, bytes, states and reasons are integers; seconds (and any ratio) are floats.
    """

    key: str
    name: str
    counter: bool
    scale: float
    type: str
    help: str


def _f(key: str, name: str, counter: bool, scale: float, kind: str, text: str) -> Field:
    return Field(key, name, counter, scale, kind, text)


DOMAIN_FIELDS = (
    _f("state.state", "state", False, 1, INT, "libvirt domain state (1 running, 3 paused, 5 shut off, 6 crashed)"),
    _f("state.reason", "state_reason", False, 1, INT, "libvirt reason code for the state"),
    _f("cpu.time", "cpu_seconds", True, NS, FLOAT, "CPU time used by the domain"),
    _f("cpu.user", "cpu_user_seconds", True, NS, FLOAT, "user CPU time used by the domain"),
    _f("cpu.system", "cpu_system_seconds", True, NS, FLOAT, "system CPU time used by the domain"),
    _f("vcpu.current", "vcpus", False, 1, INT, "vCPUs online"),
    _f("vcpu.maximum", "vcpus_maximum", False, 1, INT, "vCPUs at most"),
    _f("balloon.current", "memory_actual_bytes", False, KIB, INT, "memory the guest has (balloon actual)"),
    _f("balloon.maximum", "memory_maximum_bytes", False, KIB, INT, "memory the guest may have"),
    _f("balloon.rss", "memory_rss_bytes", False, KIB, INT, "resident size of the QEMU process"),
    _f("balloon.available", "memory_available_bytes", False, KIB, INT, "memory the guest sees"),
    _f("balloon.usable", "memory_usable_bytes", False, KIB, INT, "memory the guest could use without swapping"),
    _f("balloon.unused", "memory_unused_bytes", False, KIB, INT, "memory the guest leaves unused"),
    _f("balloon.disk_caches", "memory_disk_caches_bytes", False, KIB, INT, "guest memory used for disk caches"),
    _f("balloon.swap_in", "swap_in_bytes", True, KIB, INT, "data the guest read from swap"),
    _f("balloon.swap_out", "swap_out_bytes", True, KIB, INT, "data the guest wrote to swap"),
    _f("balloon.major_fault", "major_faults", True, 1, INT, "major page faults in the guest"),
    _f("balloon.minor_fault", "minor_faults", True, 1, INT, "minor page faults in the guest"),
)
VCPU_FIELDS = (
    _f("state", "state", False, 1, INT, "vCPU state (0 offline, 1 running, 2 blocked)"),
    _f("time", "seconds", True, NS, FLOAT, "CPU time used by the vCPU"),
    _f("wait", "wait_seconds", True, NS, FLOAT, "time the vCPU waited on I/O"),
    _f("delay", "delay_seconds", True, NS, FLOAT, "time the vCPU waited for a host CPU (steal)"),
)
BLOCK_FIELDS = (
    _f("rd.reqs", "read_ops", True, 1, INT, "read operations"),
    _f("rd.bytes", "read_bytes", True, 1, INT, "bytes read"),
    _f("rd.times", "read_seconds", True, NS, FLOAT, "time spent reading"),
    _f("wr.reqs", "write_ops", True, 1, INT, "write operations"),
    _f("wr.bytes", "write_bytes", True, 1, INT, "bytes written"),
    _f("wr.times", "write_seconds", True, NS, FLOAT, "time spent writing"),
    _f("fl.reqs", "flush_ops", True, 1, INT, "flush operations"),
    _f("fl.times", "flush_seconds", True, NS, FLOAT, "time spent flushing"),
    _f("allocation", "allocation_bytes", False, 1, INT, "highest allocated offset (qcow2) or allocated bytes"),
    _f("capacity", "capacity_bytes", False, 1, INT, "virtual size of the disk"),
    _f("physical", "physical_bytes", False, 1, INT, "size of the image on the host"),
)
NET_FIELDS = (
    _f("rx.bytes", "receive_bytes", True, 1, INT, "bytes received"),
    _f("rx.pkts", "receive_packets", True, 1, INT, "packets received"),
    _f("rx.errs", "receive_errors", True, 1, INT, "receive errors"),
    _f("rx.drop", "receive_drops", True, 1, INT, "received packets dropped"),
    _f("tx.bytes", "transmit_bytes", True, 1, INT, "bytes sent"),
    _f("tx.pkts", "transmit_packets", True, 1, INT, "packets sent"),
    _f("tx.errs", "transmit_errors", True, 1, INT, "transmit errors"),
    _f("tx.drop", "transmit_drops", True, 1, INT, "sent packets dropped"),
)
HOST_FIELDS = (
    _f("cpu.kernel", "cpu_kernel_seconds", True, NS, FLOAT, "host CPU time in the kernel, all CPUs"),
    _f("cpu.user", "cpu_user_seconds", True, NS, FLOAT, "host CPU time in user space, all CPUs"),
    _f("cpu.idle", "cpu_idle_seconds", True, NS, FLOAT, "host CPU time idle, all CPUs"),
    _f("cpu.iowait", "cpu_iowait_seconds", True, NS, FLOAT, "host CPU time waiting for I/O, all CPUs"),
    _f("memory.total", "memory_total_bytes", False, KIB, INT, "host memory"),
    _f("memory.free", "memory_free_bytes", False, KIB, INT, "host memory free"),
    _f("memory.buffers", "memory_buffers_bytes", False, KIB, INT, "host memory in buffers"),
    _f("memory.cached", "memory_cached_bytes", False, KIB, INT, "host memory in the page cache"),
)
POOL_FIELDS = (
    _f("state", "state", False, 1, INT,
       "libvirt storage pool state (0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible)"),
    _f("capacity", "capacity_bytes", False, 1, INT, "size of the storage pool"),
    _f("allocation", "allocation_bytes", False, 1, INT, "bytes of the storage pool allocated to its volumes"),
    _f("available", "available_bytes", False, 1, INT, "bytes of the storage pool still free"),
    _f("volumes", "volumes", False, 1, INT, "volumes in the storage pool"),
)
BLOCKJOB_FIELDS = (
    _f("type", "type", False, 1, INT, "block job type (1 pull, 2 copy, 3 commit, 4 active commit, 5 backup)"),
    _f("cur", "progress_current", False, 1, INT, "block job progress: units done (bytes on QEMU)"),
    _f("end", "progress_end", False, 1, INT, "block job progress: units to do (bytes on QEMU)"),
    _f("ratio", "progress_ratio", False, 1, FLOAT, "block job progress: done / to do (1.0: done, or a mirror ready)"),
    _f("bandwidth", "bandwidth_bytes_per_second", False, 1, INT, "block job bandwidth limit (0: none)"),
)
BLOCK_JOBS = Field("", "block_jobs", False, 1, INT, "block jobs running on the domain's disks (metrics-kvm --block-jobs)")
UP = Field("", "up", False, 1, INT, "1 when the domain's statistics were read, 0 when they failed")
POOL_UP = Field("", "up", False, 1, INT, "1 when the storage pool was read, 0 when it failed")
ALL_FIELDS: dict[tuple[str, str], Field] = {
    (measurement, f.name): f
    for measurement, fields in (("domain", (*DOMAIN_FIELDS, UP, BLOCK_JOBS)), ("vcpu", VCPU_FIELDS),
                                ("block", BLOCK_FIELDS), ("blockjob", BLOCKJOB_FIELDS), ("net", NET_FIELDS),
                                ("host", HOST_FIELDS), ("pool", (*POOL_FIELDS, POOL_UP)))
    for f in fields
}


class Point(NamedTuple):
    """One measurement with its tags and fields, e.g. block{domain=web1,device=vda} read_bytes=..."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, float]
    error: str | None = None


def _scaled(value: Any, f: Field) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if f.scale == 1 else value * f.scale


def _fields(stats: Mapping[str, Any], prefix: str, fields: Iterable[Field]) -> dict[str, float]:
    out = {}
    for f in fields:
        value = _scaled(stats.get(prefix + f.key), f)
        if value is not None:
            out[f.name] = value
    return out


def domain_points(name: str, stats: Mapping[str, Any], error: str | None,
                  jobs: Sequence[Any] | None = None) -> list[Point]:
    """The points of one domain; a domain whose statistics failed gives up=0 and the error.
    ``jobs`` (sensu_kvm.blockjobs.Job, read with --block-jobs; None: not read) adds the count of
    block jobs to the domain's point and a ``blockjob`` point per job."""
    tags = {"domain": name}
    main = Point("domain", dict(tags), {"up": 0 if error else 1, **_fields(stats, "", DOMAIN_FIELDS)}, error)
    if jobs is not None:
        main.fields["block_jobs"] = len(jobs)
    points = [main]
    for job in jobs or ():
        values = {"type": job.type, "cur": job.cur, "end": job.end,
                  "ratio": job.cur / job.end if job.end > 0 else 0.0, "bandwidth": job.bandwidth}
        points.append(Point("blockjob", {**tags, "device": job.disk, "job_type": job.word.replace(" ", "-")},
                            _fields(values, "", BLOCKJOB_FIELDS)))
    for n in range(int(stats.get("vcpu.maximum", stats.get("vcpu.current", 0)) or 0)):
        values = _fields(stats, f"vcpu.{n}.", VCPU_FIELDS)
        if values:
            points.append(Point("vcpu", {**tags, "vcpu": str(n)}, values))
    for n in range(int(stats.get("block.count", 0))):
        device = stats.get(f"block.{n}.name")
        values = _fields(stats, f"block.{n}.", BLOCK_FIELDS)
        if device and values:
            points.append(Point("block", {**tags, "device": str(device)}, values))
    for n in range(int(stats.get("net.count", 0))):
        nic = stats.get(f"net.{n}.name")
        values = _fields(stats, f"net.{n}.", NET_FIELDS)
        if nic and values:
            points.append(Point("net", {**tags, "interface": str(nic)}, values))
    return points


def pool_point(name: str, state: int, capacity: int, allocation: int, available: int, volumes: int,
               error: str | None = None) -> Point:
    """The point of one storage pool (sensu_kvm.pools.Pool's numbers): up, state, and for an active
    pool its sizes and number of volumes (an inactive pool has none: libvirt says 0 for each); a
    pool that could not be read gives up=0 and the error."""
    if error:
        return Point("pool", {"pool": name}, {"up": 0}, error)
    fields: dict[str, float] = {"up": 1, "state": state}
    if state != 0:
        fields.update(capacity_bytes=capacity, allocation_bytes=allocation, available_bytes=available,
                      volumes=volumes)
    return Point("pool", {"pool": name}, fields)


def host_points(cpu: Mapping[str, Any], memory: Mapping[str, Any]) -> list[Point]:
    stats = {**{f"cpu.{k}": v for k, v in cpu.items()}, **{f"memory.{k}": v for k, v in memory.items()}}
    values = _fields(stats, "", HOST_FIELDS)
    return [Point("host", {}, values)] if values else []


# --- renderings ----------------------------------------------------------------------------------

def _number(value: float) -> str:
    if isinstance(value, int) or (value == int(value) and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def _names(points: Sequence[Point], names: Names | None) -> Names:
    """The names given, else the domains of these points (UUIDs unknown: suffixes from the name)."""
    return names if names is not None else Names({p.tags["domain"]: None for p in points if "domain" in p.tags})


def _pools(points: Sequence[Point], pools: Names | None) -> Names:
    """The pool names given, else those of these points."""
    return pools if pools is not None else Names({p.tags["pool"]: None for p in points if "pool" in p.tags})


def graphite(points: Sequence[Point], scheme: str, timestamp: int, names: Names | None = None,
             pools: Names | None = None) -> str:
    """Graphite plaintext: ``<scheme>.domain.<name>[.<group>.<id>].<field> <value> <timestamp>``,
    ``<scheme>.host.<field>`` and ``<scheme>.pool.<pool>.<field>``.

    ``<name>`` is ``names.graphite`` (one path node per domain, never shared: build ``names`` from
    every domain of the host), ``<pool>`` is ``pools.graphite`` (from every pool of the host);
    devices and interfaces are path nodes by the same character rules.
    """
    names = _names(points, names)
    pools = _pools(points, pools)
    lines = []
    for p in points:
        if p.measurement == "host":
            path = f"{scheme}.host"
        elif p.measurement == "pool":
            path = f"{scheme}.pool.{pools.graphite(p.tags['pool'])}"
        else:
            path = f"{scheme}.domain.{names.graphite(p.tags['domain'])}"
            if p.measurement != "domain":
                ident = next(v for k, v in p.tags.items() if k != "domain")
                path += f".{p.measurement}.{graphite_node(ident)}"
        lines += [f"{path}.{name} {_number(value)} {timestamp}" for name, value in p.fields.items()]
    return "\n".join(lines)


MAX_ERROR = 1024  # characters of an error kept in the string field (InfluxDB allows 64 KiB)


def influx_value(value: float, kind: str) -> str | None:
    """A field value of a fixed type: INT as ``12i``, FLOAT always with a point or an exponent
    (``0.0``, ``1.5e-05``); None for a value the type cannot hold (NaN, infinity)."""
    if not math.isfinite(value):
        return None
    if kind == INT:
        return f"{round(value)}i"
    return repr(float(value))


def influx_string(text: str) -> str:
    """A string field value, quoted: one line (control characters shown as escapes), '"' and '\\'
    backslashed, at most MAX_ERROR characters."""
    shown = visible(text)[:MAX_ERROR]
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxdb(points: Sequence[Point], host: str, timestamp_ns: int, names: Names | None = None,
             pools: Names | None = None) -> str:
    """InfluxDB line protocol: measurement kvm_<group>, tags host, domain and device/vcpu/interface
    (kvm_pool: host and pool).

    The domain tag is ``names.influx`` (injective over the host's domains: no two share a series),
    the pool tag ``pools.influx``; other tags are escaped by the same rules. Each field has its
    declared type (ALL_FIELDS).
    """
    names = _names(points, names)
    pools = _pools(points, pools)
    host_tag = influx_tag(host)
    lines = []
    for p in points:
        tags = [("host", host_tag)] if host_tag else []
        tags += [(k, names.influx(v) if k == "domain" else pools.influx(v) if k == "pool" else influx_tag(v))
                 for k, v in p.tags.items()]
        tag_text = "".join(f",{k}={v}" for k, v in sorted(tags) if v != "")
        parts = []
        for name, value in p.fields.items():
            text = influx_value(value, ALL_FIELDS[(p.measurement, name)].type)
            if text is not None:
                parts.append(f"{name}={text}")
        if p.error:
            parts.append(f"error={influx_string(p.error)}")
        if parts:
            lines.append(f"kvm_{p.measurement}{tag_text} {','.join(parts)} {timestamp_ns}")
    return "\n".join(lines)


UP_HELP = "1 when metrics-kvm read the host's statistics, 0 when it failed (it exits 3, the error on stderr)"


def prometheus_up(value: int) -> str:
    """The ``kvm_up`` family alone: 1 in every output, 0 on its own when the run failed (as an
    exporter's ``<name>_up``; ``up`` itself is the one Prometheus adds to every scrape)."""
    return f"# HELP kvm_up {UP_HELP}\n# TYPE kvm_up gauge\nkvm_up {value}"


def prometheus(points: Sequence[Point], names: Names | None = None) -> str:
    """Prometheus text exposition format 0.0.4, counters with the _total suffix; ``kvm_up 1`` first.

    Label values are the names themselves (of domains, pools, devices), escaped
    (``names.prometheus``, ``prom_value``): the escaping alone keeps them apart.
    """
    names = _names(points, names)
    families: dict[str, list[str]] = {}
    headers: dict[str, str] = {}
    for p in points:
        labels = ",".join(f'{k}="{names.prometheus(v) if k == "domain" else prom_value(v)}"' for k, v in p.tags.items())
        for name, value in p.fields.items():
            f = ALL_FIELDS[(p.measurement, name)]
            metric = f"kvm_{p.measurement}_{name}" + ("_total" if f.counter else "")
            if metric not in headers:
                kind = "counter" if f.counter else "gauge"
                headers[metric] = f"# HELP {metric} {f.help}\n# TYPE {metric} {kind}"
            sample = f"{metric}{{{labels}}}" if labels else metric
            families.setdefault(metric, []).append(f"{sample} {_number(value)}")
    return "\n".join([prometheus_up(1), *(f"{headers[m]}\n" + "\n".join(lines) for m, lines in families.items())])


def as_json(points: Sequence[Point], host: str, timestamp: float) -> str:
    """One JSON document: the host, the time and every point with its tags, fields and error."""
    import json  # noqa: PLC0415 (only this format needs it)

    def clean(value: float) -> float | None:
        return None if isinstance(value, float) and (math.isnan(value) or math.isinf(value)) else value

    doc = {
        "host": host,
        "timestamp": timestamp,
        "points": [{"measurement": p.measurement, "tags": p.tags,
                    "fields": {k: clean(v) for k, v in p.fields.items()},
                    **({"error": p.error} if p.error else {})} for p in points],
    }
    return json.dumps(doc, sort_keys=False)
