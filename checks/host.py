"""check-kvm-host: the hypervisor host itself: CPU, memory, swap, and the file systems of disk images."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

import psutil

from sensu_kvm import virt
from sensu_kvm.contexts import Context
from sensu_kvm.domains import read
from sensu_kvm.errors import KvmError
from sensu_kvm.output import Finding, Report, Status, summarise
from sensu_kvm.plugin import CheckParser, add_thresholds, build_parser, run_check
from sensu_kvm.statefile import Rate, StateFile, add_min_interval, exchange

NAME = "CheckKvmHost"
CPU_KEYS = ["kernel", "user", "idle", "iowait"]

EXAMPLES = """\
  check-kvm-host                                     CPU, memory, swap and image file systems (defaults below)
  check-kvm-host --cpu-warning 80 --cpu-critical 95 --interval 2
  check-kvm-host --fs-warning 70 --fs-critical 90    file systems that hold domain disk images
  check-kvm-host -v --min-interval 20                CPU busy % between runs over at least 20 s
  check-kvm-host -u qemu+ssh://kvm2/system           CPU and memory of a remote host (swap and file
                                                     systems are only read on the local host)"""

DESCRIPTION = """\
The host's CPU busy % (libvirt's node CPU statistics, a rate between this run and the previous
one, or two samples --interval apart), memory used % (libvirt's node memory statistics: total
minus free, buffers and cache), swap used % (psutil) and the used % of every file system that
holds a domain disk image (psutil): a full one pauses the guests on it. Each resource has its
own thresholds. The CPU rate between runs covers at least --min-interval (5 s): a run that
comes sooner after the last sample reports the previous run's rate, marked so, and keeps the
older sample for the next run. Defaults: CPU WARNING above 90%; memory WARNING above 90%,
CRITICAL above 95%; swap WARNING above 50%, CRITICAL above 80%; file systems WARNING above
85%, CRITICAL above 95%."""


def is_local(uri: str) -> bool:
    """Whether the URI names this host (no host part), so that psutil sees the same machine."""
    return not urlparse(uri).hostname


def host_memory(conn: Any, local: bool) -> dict[str, int] | str:
    """Node memory in KiB from libvirt; from psutil where the driver has none and the host is this one."""
    try:
        return virt.node_memory_stats(conn)
    except KvmError as err:
        if not local:
            return str(err)
    mem = psutil.virtual_memory()
    return {k: getattr(mem, k, 0) // 1024 for k in ("total", "free", "buffers", "cached")}


def cpu_sample(conn: Any) -> dict[str, Any]:
    before = time.time()
    stats = virt.node_cpu_stats(conn)
    return {"host": {"t": (before + time.time()) / 2, **{k: stats[k] for k in CPU_KEYS if k in stats}}}


def cpu_busy(rate: Rate) -> float | None:
    """Busy % from the rates of the node's CPU counters; None without rates."""
    per_second = rate.per_second
    if not per_second:
        return None
    total = sum(per_second.values())
    return (per_second.get("kernel", 0.0) + per_second.get("user", 0.0)) / total * 100 if total else 0.0


def mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def image_file_systems(paths: Iterable[str]) -> dict[str, list[str]]:
    """Mount point -> the images on it, for the paths that are files on this host."""
    found: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        if os.path.exists(path):
            found.setdefault(mount_point(path), []).append(path)
    return found


def evaluate(busy: float | None, memory: dict[str, int] | str, swap: Any, file_systems: dict[str, Any],
             options: argparse.Namespace, rate: Rate | None = None, missing: Iterable[str] = (),
             none_matched: bool = False) -> Report:
    """Findings and perfdata for every resource (pure); ``rate`` says how ``busy`` was measured.

    A domain named with -d that does not exist is CRITICAL, as in every check; --match/--exclude
    that select no domain are UNKNOWN (a pattern that finds nothing is a mistake, not a host
    without images)."""
    findings = [Finding(name, Status.CRITICAL, f"domain {name} not found") for name in missing]
    if none_matched and not findings:
        findings.append(Finding("domains", Status.UNKNOWN, "no domain matches --match/--exclude"))
    measured = []
    if busy is None:
        why = rate.reason if rate else "first sample"
        findings.append(Finding("cpu", Status.OK, f"CPU: {why}, busy % on the next run"))
    else:
        over = f" ({rate.over()})" if rate else ""
        cpu = Context("cpu_busy", "%", options.cpu_warning, options.cpu_critical, 0, 100, digits=3)(busy)
        findings.append(Finding("cpu", cpu.status, f"CPU {busy:.1f}% busy{over}"))
        measured.append(cpu)
    if isinstance(memory, str):
        findings.append(Finding("memory", Status.UNKNOWN, f"memory: {memory}"))
    elif memory.get("total"):
        total = memory["total"]
        used = total - memory.get("free", 0) - memory.get("buffers", 0) - memory.get("cached", 0)
        percent = Context("memory_used", "%", options.memory_warning, options.memory_critical, 0, 100,
                          digits=3)(used / total * 100)
        findings.append(Finding("memory", percent.status,
                                f"memory {percent.value:.1f}% used ({used // 1024} of {total // 1024} MiB)"))
        measured += [percent, Context("memory_used_bytes", "B", minimum=0, maximum=total * 1024)(used * 1024)]
    if swap is not None:
        if swap.total:
            swapped = Context("swap_used", "%", options.swap_warning, options.swap_critical, 0, 100)(swap.percent)
            findings.append(Finding("swap", swapped.status, f"swap {swap.percent:.1f}% used"))
            measured.append(swapped)
        else:
            findings.append(Finding("swap", Status.OK, "no swap"))
    fs_used = Context("used", "%", options.fs_warning, options.fs_critical, 0, 100, label="fs_{device}_used")
    for mount, usage in sorted(file_systems.items()):
        if isinstance(usage, str):
            findings.append(Finding(mount, Status.UNKNOWN, f"file system {mount}: {usage}"))
            continue
        full = fs_used(usage.percent, device=mount)
        findings.append(Finding(mount, full.status,
                                f"file system {mount} {usage.percent:.1f}% used ({usage.free // 2**20} MiB free)"))
        measured += [full, Context("free", "B", minimum=0, maximum=usage.total, label="fs_{device}_free")(usage.free,
                                                                                                          device=mount)]
    status, problems, details = summarise(findings, "resource", options.verbose)
    summary = problems or ", ".join(f.text for f in findings)
    return Report(status, summary, [m.perf() for m in measured], details)


def check(options: argparse.Namespace) -> Report:
    uri = virt.resolve_uri(options.uri)
    conn = virt.connect(options.uri)
    try:
        _current, found = exchange(StateFile(options.state_dir, "host", uri), lambda: cpu_sample(conn),
                                   options.interval, CPU_KEYS, options.min_interval)
        memory = host_memory(conn, is_local(uri))
        paths: list[str] = []
        selected: list[virt.DomainRecord] = []
        missing: list[str] = []
        if is_local(uri) or options.domain or options.match or options.exclude:
            # the domains' images on a remote host are not read, but -d/--match still say what they find
            selected, missing = read(conn, ["state", "block"] if is_local(uri) else ["state"], options)
            paths = [v for r in selected for k, v in r.stats.items() if k.startswith("block.") and k.endswith(".path")]
    finally:
        conn.close()
    swap = psutil.swap_memory() if is_local(uri) else None
    file_systems: dict[str, Any] = {}
    for mount in image_file_systems(paths):
        try:
            file_systems[mount] = psutil.disk_usage(mount)
        except OSError as err:
            file_systems[mount] = err.strerror or str(err)
    rate = found["host"]
    return evaluate(cpu_busy(rate), memory, swap, file_systems, options, rate, missing,
                    none_matched=not selected and bool(options.match or options.exclude))


def parser() -> CheckParser:
    p = build_parser("check-kvm-host", DESCRIPTION, EXAMPLES, rates=True)
    add_thresholds(p, None, "cpu", "CPU busy in %", "90", None)
    add_thresholds(p, None, "memory", "memory used in %", "90", "95")
    add_thresholds(p, None, "swap", "swap used in %", "50", "80")
    add_thresholds(p, None, "fs", "used % of file systems holding disk images", "85", "95")
    add_min_interval(p)
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
