"""kvm-inspect: everything about one domain in one readable report, for debugging by hand.

What the classic recipe collects with a dozen virsh commands (nodeinfo, dominfo, domstate
--reason, vcpuinfo, dommemstat, domblklist, domblkinfo, domblkerror, domblkstat, domiflist,
domifstat, snapshot-list, qemu-agent-command, qemu-monitor-command --hmp 'info status' and
'info block'). Everything is read on the read-only connection except the guest agent and the QEMU
monitor, which libvirt allows only on a read-write one: that one is opened for them alone (not at
all with --read-only), and each section says why it is missing when it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, TypeVar

from sensu_kvm import __version__, domxml, guestinfo, states, virt
from sensu_kvm.argtypes import domain_arg, seconds_arg, uri_arg
from sensu_kvm.errors import AccessDenied, AgentUnavailable, CallTimeout, KvmError, ReadOnlyRefused, Unsupported
from sensu_kvm.snapshots import tree
from sensu_kvm.tools import EXIT_OK, Parser, run_tool

PROG = "kvm-inspect"

T = TypeVar("T")

EXAMPLES = """\
examples:
  kvm-inspect web1                         the whole report
  kvm-inspect web1 --json | jq .sections.disks
  kvm-inspect web1 --read-only             no guest agent or monitor queries (read-only socket only)
  kvm-inspect web1 -u qemu+ssh://root@kvm2/system --call-timeout 10

exit codes: 0 report printed (sections that could not be read say why), 1 libvirt could not be
reached or failed, 2 bad options or unknown domain"""

DESCRIPTION = """\
One domain's host, state, vCPUs, memory, disks, interfaces, snapshots, backing chains, guest agent
and QEMU monitor, in one report. Read-only, except the guest agent (guest-ping, guest-info,
virDomainGetGuestInfo) and the QEMU monitor ('info status', 'info block'): libvirt refuses those
on the read-only socket, so a read-write connection (ACL permission domain:write) is opened for
them alone; --read-only skips them. Every call has its own deadline (--call-timeout)."""


def parser() -> Parser:
    p = Parser(prog=PROG, description=DESCRIPTION, epilog=EXAMPLES, allow_abbrev=False,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("domain", type=domain_arg, help="domain name, UUID or ID")
    p.add_argument("-u", "--uri", type=uri_arg, help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    p.add_argument("--json", action="store_true", help="JSON on stdout, for machines")
    p.add_argument("--read-only", action="store_true",
                   help="never open a read-write connection: no guest agent or monitor sections")
    p.add_argument("--timeout", dest="call_timeout", type=seconds_arg, default=5.0, metavar="SECONDS",
                   help="deadline of each libvirt call, agent and monitor query, up to 86400 (default: 5)")
    p.add_argument("--call-timeout", dest="call_timeout", type=seconds_arg, default=5.0, metavar="SECONDS",
                   help="the older name of --timeout")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return p


# --- sections ----------------------------------------------------------------------------------------


class Missing(Exception):
    """A section or item that cannot be read; the message says why, for people."""


def why(err: Exception) -> str:
    """A failure turned into a reason an admin can act on (by its class: virt.errors classifies
    every libvirtError by its code)."""
    text = str(err)
    if isinstance(err, CallTimeout):
        return f"no answer in time ({text})"
    if isinstance(err, Unsupported):
        return f"not supported by this hypervisor driver ({text})"
    if isinstance(err, ReadOnlyRefused):
        return f"needs a read-write connection ({text})"
    if isinstance(err, AccessDenied):
        return f"no permission ({text})"
    if isinstance(err, AgentUnavailable):
        return f"guest agent not answering: not installed or not running in the guest? ({text})"
    return text


def section(title: str, data: Any = None, reason: str | None = None) -> dict[str, Any]:
    return {"title": title, "available": reason is None, "reason": reason, "data": data}


class Inspector:
    """Reads one domain; every call under the deadline, every failure kept as a reason."""

    def __init__(self, conn: Any, dom: Any, timeout: float) -> None:
        self.conn = conn
        self.dom = dom
        self.timeout = timeout
        self.name = dom.name()
        self.errors: dict[str, str] = {}

    def call(self, what: str, func: Callable[[], T]) -> T:
        """One libvirt call under the deadline; failures raise Missing with the reason."""
        try:
            return virt.call_with_deadline(func, self.timeout, what)
        except KvmError as err:
            raise Missing(why(err)) from err

    def maybe(self, what: str, func: Callable[[], T], errors: dict[str, str]) -> T | None:
        """Like call, but a failure is noted under ``what`` in ``errors`` and gives None."""
        try:
            return self.call(what, func)
        except Missing as err:
            errors[what] = str(err)
            return None


def _xml_devices(xml: str) -> tuple[list[dict[str, str]], list[dict[str, str]], guestinfo.Channel | None, str]:
    """Disks, interfaces, the agent channel and the OS type from a domain's XML (pure)."""
    root = ET.fromstring(xml)
    disks = [{"target": d.target, "bus": d.bus, "device": d.device, "type": d.kind, "source": d.source or d.volume,
              "format": d.format} for d in domxml.disks(root)]
    nics = [{"type": n.kind, "mac": n.mac, "source": n.source, "model": n.model, "target": n.target}
            for n in domxml.interfaces(root)]
    os_type = root.find("os/type")
    return disks, nics, guestinfo.agent_channel(xml), "" if os_type is None else (os_type.text or "")


def host_section(ins: Inspector) -> dict[str, Any]:
    conn = ins.conn
    errors: dict[str, str] = {}
    data: dict[str, Any] = {"hostname": ins.maybe("hostname", conn.getHostname, errors),
                            "hypervisor": ins.maybe("hypervisor type", conn.getType, errors)}
    info = ins.maybe("node info", conn.getInfo, errors)
    if info:
        data.update({"cpu_model": info[0], "memory_mib": info[1], "cpus": info[2], "cpu_mhz": info[3],
                     "numa_nodes": info[4], "sockets_per_node": info[5], "cores_per_socket": info[6],
                     "threads_per_core": info[7]})
    mem = ins.maybe("memory statistics", lambda: conn.getMemoryStats(virt.VIR_NODE_MEMORY_STATS_ALL_CELLS), errors)
    if mem:
        data["memory_kib"] = dict(mem)
    cpu = ins.maybe("CPU statistics", lambda: conn.getCPUStats(virt.VIR_NODE_CPU_STATS_ALL_CPUS), errors)
    if cpu:
        cpu = dict(cpu)
        data["cpu_time_ns"] = cpu
        total = sum(cpu.get(k, 0) for k in ("kernel", "user", "idle", "iowait"))
        if total:
            data["cpu_busy_percent_since_boot"] = round(100.0 * (cpu.get("kernel", 0) + cpu.get("user", 0)) / total, 1)
    version = ins.maybe("libvirt version", conn.getLibVersion, errors)
    if version:
        data["libvirt_version"] = f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
    if errors:
        data["unavailable"] = errors
    return section("Host", data)


def state_section(ins: Inspector, os_type: str) -> tuple[dict[str, Any], int]:
    dom = ins.dom
    state, reason = ins.call("state", dom.state)
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "state": states.state_name(state), "reason": states.reason_name(state, reason),
        "id": dom.ID() if dom.ID() >= 0 else None, "uuid": dom.UUIDString(), "os_type": os_type,
        "persistent": ins.maybe("persistent", lambda: bool(dom.isPersistent()), errors),
        "autostart": ins.maybe("autostart", lambda: bool(dom.autostart()), errors),
        "managed_save": ins.maybe("managed save", lambda: bool(dom.hasManagedSaveImage(0)), errors),
    }
    if errors:
        data["unavailable"] = errors
    return section("State", data), state


RUNNING_STATES = (states.RUNNING, states.BLOCKED, states.PAUSED, states.SHUTDOWN, states.PMSUSPENDED)
VCPU_STATES = {0: "offline", 1: "running", 2: "blocked"}


def not_running(state: int) -> str:
    return f"domain is {states.state_name(state)}: no running QEMU to ask"


def vcpu_section(ins: Inspector, state: int) -> dict[str, Any]:
    dom = ins.dom
    errors: dict[str, str] = {}
    info = ins.call("domain info", dom.info)
    data: dict[str, Any] = {"current": info[3], "cpu_time_ns": info[4]}
    data["maximum"] = ins.maybe("maximum vCPUs", lambda: dom.vcpusFlags(virt.VIR_DOMAIN_VCPU_MAXIMUM), errors)
    if state in RUNNING_STATES:
        vcpus = ins.maybe("per-vCPU information", dom.vcpus, errors)
        if vcpus:
            data["vcpus"] = [{"number": n, "state": VCPU_STATES.get(s, str(s)), "cpu_time_ns": t, "host_cpu": c}
                             for n, s, t, c in vcpus[0]]
    else:
        errors["per-vCPU information"] = not_running(state)
    if errors:
        data["unavailable"] = errors
    return section("vCPUs", data)


def memory_section(ins: Inspector, state: int) -> dict[str, Any]:
    dom = ins.dom
    errors: dict[str, str] = {}
    info = ins.call("domain info", dom.info)
    data: dict[str, Any] = {"max_kib": info[1], "current_kib": info[2]}
    if state in RUNNING_STATES:
        stats = ins.maybe("balloon statistics", dom.memoryStats, errors)
        if stats is not None:
            data["balloon_kib"] = dict(stats)
    else:
        errors["balloon statistics"] = not_running(state)
    if errors:
        data["unavailable"] = errors
    return section("Memory", data)


def disk_section(ins: Inspector, disks: list[dict[str, str]], state: int) -> dict[str, Any]:
    dom = ins.dom
    running = state in RUNNING_STATES
    all_errors: dict[str, int] | None = None
    if running:
        problems: dict[str, str] = {}
        all_errors = ins.maybe("disk errors", lambda: dict(dom.diskErrors()), problems)
    out = []
    for disk in disks:
        entry: dict[str, Any] = dict(disk)
        errors: dict[str, str] = {}
        target = disk["target"]
        if disk["source"]:
            size = ins.maybe("block info", lambda t=target: dom.blockInfo(t), errors)  # type: ignore[misc]
            if size:
                entry.update({"capacity": size[0], "allocation": size[1], "physical": size[2]})
        else:
            errors["block info"] = "no medium or source"
        if running and disk["source"]:
            io = ins.maybe("I/O counters", lambda t=target: dom.blockStats(t), errors)  # type: ignore[misc]
            if io:
                entry["io"] = {"rd_reqs": io[0], "rd_bytes": io[1], "wr_reqs": io[2], "wr_bytes": io[3],
                               "errs": io[4]}
        elif not running:
            errors["I/O counters"] = not_running(state)
        if all_errors is not None:
            entry["error"] = states.disk_error_name(all_errors.get(target, 0))
        elif running:
            errors["errors"] = problems.get("disk errors", "unreadable")
        else:
            errors["errors"] = not_running(state)
        if errors:
            entry["unavailable"] = errors
        out.append(entry)
    return section("Disks", out, None if disks else "the domain has no disks")


def interface_section(ins: Inspector, nics: list[dict[str, str]], state: int) -> dict[str, Any]:
    dom = ins.dom
    out = []
    names = ("rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", "tx_packets", "tx_errs", "tx_drop")
    for nic in nics:
        entry: dict[str, Any] = dict(nic)
        errors: dict[str, str] = {}
        if state not in RUNNING_STATES:
            errors["counters"] = not_running(state)
        elif nic["target"]:
            stats = ins.maybe("counters", lambda t=nic["target"]: dom.interfaceStats(t), errors)  # type: ignore[misc]
            if stats:
                entry["counters"] = dict(zip(names, stats))
        else:
            errors["counters"] = "no host device (target) for this interface"
        if errors:
            entry["unavailable"] = errors
        out.append(entry)
    return section("Interfaces", out, None if nics else "the domain has no network interfaces")


def snapshot_section(ins: Inspector) -> dict[str, Any]:
    try:
        snaps = ins.call("snapshots", lambda: tree.read_snapshots(ins.dom))
    except Missing as err:
        return section("Snapshots", None, str(err))
    current = next((s.name for s in snaps if s.current), None)
    ordered = sorted(snaps, key=lambda s: (s.created, s.name))
    return section("Snapshots", {"count": len(snaps), "current": current,
                                 "snapshots": [{"name": s.name, "created": s.created, "state": s.state,
                                                "location": s.location, "parent": s.parent} for s in ordered]})


def chain_section(xml: str) -> dict[str, Any]:
    chains = domxml.chains(xml)
    data = {target: [{"path": layer.path, "format": layer.format} for layer in layers]
            for target, layers in sorted(chains.items())}
    return section("Backing chains", data, None if chains else "no disk with a file or block source")


def _rw_reason(rw_error: str | None) -> str:
    return (f"needs a read-write libvirt connection ({rw_error})" if rw_error
            else "needs a read-write libvirt connection")


def agent_section(ins: Inspector, rw: Inspector | None, rw_error: str | None, channel: guestinfo.Channel | None,
                  state: int) -> dict[str, Any]:
    title = "Guest agent"
    if channel is None:
        return section(title, {"channel": None},
                       f"not configured: no {guestinfo.AGENT_CHANNEL} channel in the domain XML (see the README)")
    data: dict[str, Any] = {"channel": {"type": channel.kind, "state": channel.state or "unknown"}}
    if state not in (states.RUNNING, states.BLOCKED):
        return section(title, data, f"domain is {states.state_name(state)}: the agent cannot answer")
    if rw is None:
        return section(title, data, _rw_reason(rw_error))
    try:
        data["ping_seconds"] = round(rw.call("guest-ping", lambda: guestinfo.ping(rw.dom, rw.timeout)), 3)
    except Missing as err:
        if channel.connected is False:
            return section(title, data, "agent not connected (the channel is disconnected): qemu-guest-agent not "
                                        "installed or not running in the guest")
        return section(title, data, str(err))
    errors: dict[str, str] = {}
    info = rw.maybe("guest-info", lambda: guestinfo.agent_info(rw.dom, rw.timeout), errors)
    if info is not None:
        data["version"] = info.get("version")
        data["commands"] = sorted(c.get("name", "") for c in info.get("supported_commands", [])
                                  if isinstance(c, dict) and c.get("enabled"))
    guest = rw.maybe("guest information", lambda: guestinfo.guest_info(rw.dom, 0, rw.timeout), errors)
    if guest is not None:
        data["os"] = guestinfo.section(guest, "os.")
        data["hostname"] = guest.get("hostname")
        data["timezone"] = guestinfo.section(guest, "timezone.")
        data["users"] = [guest.get(f"user.{n}.name") for n in range(int(guest.get("user.count", 0) or 0))]
        data["file_systems"] = [fs._asdict() | {"disks": list(fs.disks), "used_percent": _percent(fs.used_percent)}
                                for fs in guestinfo.file_systems(guest)]
        data["disks"] = [guestinfo.section(guest, f"disk.{n}.") for n in range(int(guest.get("disk.count", 0) or 0))]
        data["interfaces"] = [{k: v for k, v in guestinfo.section(guest, f"if.{n}.").items() if not k.startswith("addr.")}
                              | {"addresses": [guest.get(f"if.{n}.addr.{a}.addr")
                                               for a in range(int(guest.get(f"if.{n}.addr.count", 0) or 0))]}
                              for n in range(int(guest.get("if.count", 0) or 0))]
    if errors:
        data["unavailable"] = errors
    return section(title, data)


def _percent(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def monitor_section(rw: Inspector | None, rw_error: str | None, state: int) -> dict[str, Any]:
    title = "QEMU monitor"
    if state not in RUNNING_STATES:
        return section(title, None, not_running(state))
    if rw is None:
        return section(title, None, _rw_reason(rw_error))
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for command in ("info status", "info block"):
        text = rw.maybe(command, lambda c=command: guestinfo.monitor_command(rw.dom, c, rw.timeout), errors)  # type: ignore[misc]
        if text is not None:
            data[command] = text.rstrip().replace("\r\n", "\n")
    if not data:
        reasons = list(dict.fromkeys(errors.values()))
        return section(title, None, reasons[0] if len(reasons) == 1 else "; ".join(f"{k}: {v}" for k, v in errors.items()))
    if errors:
        data["unavailable"] = errors
    return section(title, data)


def lookup(conn: Any, name: str, timeout: float) -> Any:
    return virt.call_with_deadline(lambda: virt.domain_by_any(conn, name), timeout, f"looking up {name}")


def inspect(options: argparse.Namespace) -> dict[str, Any]:
    """The whole report as a dict (sections in order)."""
    uri = virt.resolve_uri(options.uri)
    conn = virt.connect(uri, timeout=options.call_timeout)
    rw_conn: Any = None
    try:
        dom = lookup(conn, options.domain, options.call_timeout)
        ins = Inspector(conn, dom, options.call_timeout)
        xml = ins.call("domain XML", lambda: dom.XMLDesc(0))
        disks, nics, channel, os_type = _xml_devices(xml)
        state_sec, state = state_section(ins, os_type)
        rw: Inspector | None = None
        rw_error: str | None = None
        wants_rw = state in RUNNING_STATES
        if options.read_only:
            rw_error = "--read-only given"
        elif wants_rw:
            try:
                rw_conn = virt.connect(uri, readonly=False, timeout=options.call_timeout)
                rw = Inspector(rw_conn, lookup(rw_conn, dom.name(), options.call_timeout), options.call_timeout)
            except KvmError as err:
                rw_error = f"refused: {why(err)}"
        sections = {
            "host": host_section(ins),
            "state": state_sec,
            "vcpus": vcpu_section(ins, state),
            "memory": memory_section(ins, state),
            "disks": disk_section(ins, disks, state),
            "interfaces": interface_section(ins, nics, state),
            "snapshots": snapshot_section(ins),
            "backing_chains": chain_section(xml),
            "guest_agent": agent_section(ins, rw, rw_error, channel, state),
            "monitor": monitor_section(rw, rw_error, state),
        }
        return {"domain": dom.name(), "uri": virt.shown_uri(uri), "read_write": rw is not None, "sections": sections}
    except Missing as err:
        raise KvmError(f"{options.domain}: {err}") from err
    finally:
        for c in (rw_conn, conn):
            if c is not None:
                with contextlib.suppress(virt.libvirtError):
                    c.close()


# --- text --------------------------------------------------------------------------------------------

_SIZE_KEYS = ("capacity", "allocation", "physical", "rd_bytes", "wr_bytes", "rx_bytes", "tx_bytes", "total", "used")


_COUNT_KEYS = ("last_update", "major_fault", "minor_fault", "hugetlb_pgalloc", "hugetlb_pgfail")


def size_text(value: int, scale: int = 1) -> str:
    """The number as given, and in binary units when large (``scale``: bytes per unit of value)."""
    size = float(value) * scale
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{value}" if unit == "B" else f"{value} ({size:.1f} {unit})"
        size /= 1024
    return str(value)  # pragma: no cover


def _value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key in _SIZE_KEYS:
        return size_text(value)
    if isinstance(value, int) and key.endswith("_kib"):
        return size_text(value, 1024)
    return str(value)


def _lines(data: Any, indent: int, key: str = "") -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            nested = isinstance(v, list) and any(isinstance(i, (dict, list)) for i in v)
            if (isinstance(v, dict) and v) or nested:
                out.append(f"{pad}{k}:")
                out += _lines(v, indent + 1, k)
            elif isinstance(v, list):
                out.append(f"{pad}{k}: {', '.join(_value(k, i) for i in v) if v else '-'}")
            elif isinstance(v, str) and "\n" in v:
                out.append(f"{pad}{k}:")
                out += [f"{pad}  | {line}" for line in v.splitlines()]
            elif key.endswith("_kib") and isinstance(v, int) and k not in _COUNT_KEYS:
                out.append(f"{pad}{k}: {size_text(v, 1024)}")
            else:
                out.append(f"{pad}{k}: {_value(k, v)}")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                first, *rest = list(item.items()) or [("", "")]
                sub = _lines(dict([first]), 0, key)
                out.append(f"{pad}- {sub[0] if sub else ''}")
                out += [f"{pad}  {line}" for line in sub[1:]]
                out += _lines(dict(rest), indent + 1, key)
            else:
                out.append(f"{pad}- {_value(key, item)}")
    else:
        out.append(f"{pad}{_value(key, data)}")
    return out


def render_text(result: dict[str, Any]) -> str:
    mode = "read-write for agent and monitor" if result["read_write"] else "read-only"
    lines = [f"kvm-inspect {result['domain']} on {result['uri']} ({mode})"]
    for sec in result["sections"].values():
        lines.append("")
        if not sec["available"]:
            lines.append(f"== {sec['title']}: not available: {sec['reason']}")
            if sec["data"]:
                lines += _lines(sec["data"], 1)
            continue
        lines.append(f"== {sec['title']}")
        lines += _lines(sec["data"], 1) or ["  (nothing)"]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)

    def report() -> int:
        result = inspect(options)
        if options.json:
            sys.stdout.write(json.dumps(result, indent=2, sort_keys=False) + "\n")
        else:
            sys.stdout.write(render_text(result) + "\n")
        return EXIT_OK

    return run_tool(PROG, report)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
