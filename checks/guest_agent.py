"""check-kvm-guest-agent: the QEMU guest agent answers, and the guest's file systems have room."""

from __future__ import annotations

import _thread
import argparse
import contextlib
from typing import Any, NamedTuple

from sensu_kvm import activity, guestinfo, states, virt
from sensu_kvm.argtypes import seconds_arg
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, late, read, report, unreadable, with_entity
from sensu_kvm.errors import KvmError
from sensu_kvm.output import Finding, Report, Status, worst
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "CheckKvmGuestAgent"

EXAMPLES = """\
  check-kvm-guest-agent                              every running domain with an agent channel
  check-kvm-guest-agent -w 80 -c 90                  file systems: WARNING above 80 %, CRITICAL above 90 %
  check-kvm-guest-agent -d web1 --mount / --mount /var
  check-kvm-guest-agent --agent-optional --exclude-fs-type vfat
  check-kvm-guest-agent --agent-timeout 2 -t 10      each agent call gives up after 2 s"""

DESCRIPTION = f"""\
Per running domain that has a guest agent channel ({guestinfo.AGENT_CHANNEL}): the QEMU guest
agent must answer guest-ping within --agent-timeout (else CRITICAL, or WARNING with
--agent-optional); then libvirt's guest information (virDomainGetGuestInfo) gives each mounted
file system, whose used % is judged against -w/-c (default WARNING above 90 %, CRITICAL above
95 %). The agent's version is in the output. Domains without an agent channel are skipped unless
named with -d; paused or shut off domains are not asked.

Privileges: the domains are listed on the read-only connection; the agent calls need a
read-write connection (libvirt refuses them on the read-only socket), which this check opens only
for them: the Sensu user needs the libvirt ACL permission domain:write (polkit action
org.libvirt.api.domain.write, or access to the read-write socket).

Cost: one bulk call for the states; per domain the XML, then guest-ping, guest-info and
virDomainGetGuestInfo, each under its own deadline, for up to 8 domains at a time, so one hung
agent is CRITICAL alone. Perfdata per domain: agent answer time (s); per mount point used bytes
and used %."""


def human_bytes(value: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


class Answer(NamedTuple):
    """What the agent said for one domain (gathered), before judging."""

    ping_seconds: float
    version: str
    file_systems: list[guestinfo.FileSystem]
    fs_error: str | None = None


def judge_silent(record: virt.DomainRecord, error: str, channel: guestinfo.Channel | None, optional: bool) -> Verdict:
    """A domain whose agent did not answer guest-ping (pure)."""
    name = record.name
    status = Status.WARNING if optional else Status.CRITICAL
    error = error[len(name) + 2:] if error.startswith(f"{name}: ") else error
    hint = ""
    if channel is not None and channel.connected is False:
        hint = " (channel disconnected: is qemu-guest-agent installed and running in the guest?)"
    return Verdict(Finding(name, status, f"{record.text}: guest agent does not answer{hint}: {error}"))


def judge_no_channel(record: virt.DomainRecord, optional: bool) -> Verdict:
    """A domain named with -d that has no agent channel in its XML (pure)."""
    status = Status.WARNING if optional else Status.CRITICAL
    return Verdict(Finding(record.name, status,
                           f"{record.text}: no guest agent channel ({guestinfo.AGENT_CHANNEL}) in the domain XML"))


PING = Context("agent_ping", "s", minimum=0, digits=3)


def contexts(options: argparse.Namespace, total: int) -> tuple[Context, Context]:
    """What the check measures per mount point: bytes used (of ``total``) and used %."""
    return (Context("used", "B", minimum=0, maximum=total),
            Context("used_pct", "%", options.warning, options.critical, 0, 100, digits=2))


def judge_domain(record: virt.DomainRecord, answer: Answer, options: argparse.Namespace) -> Verdict:
    """The verdict on one domain whose agent answered (pure)."""
    label = record.label
    statuses = [Status.OK]
    version = f" {answer.version}" if answer.version else ""
    head = f"{record.text}: agent{version} answered in {answer.ping_seconds * 1000:.0f} ms"
    measured = [PING(answer.ping_seconds, label)]
    parts: list[tuple[int, str]] = []
    if answer.fs_error is not None:
        statuses.append(Status.UNKNOWN)
        parts.append((-Status.UNKNOWN.rank, f"file systems unreadable: {answer.fs_error}"))
    else:
        chosen = guestinfo.pick_file_systems(answer.file_systems, options.mount, options.exclude_fs_type)
        for missing in sorted(set(options.mount) - {fs.mountpoint for fs in chosen}):
            statuses.append(Status.CRITICAL)
            parts.append((-Status.CRITICAL.rank, f"{missing} not mounted (or not reported by the agent)"))
        for fs in chosen:
            pct = fs.used_percent
            if pct is None or fs.used is None or fs.total is None:
                parts.append((0, f"{fs.mountpoint} ({fs.fstype}) size not reported"))
                continue
            used_of, pct_of = contexts(options, fs.total)
            used = pct_of(pct, label, fs.mountpoint)
            status = used.status
            statuses.append(status)
            mark = "" if status is Status.OK else f" ({status.name})"
            parts.append((-status.rank, f"{fs.mountpoint} {pct:.1f}% used of {human_bytes(fs.total)}{mark}"))
            measured += [used_of(fs.used, label, fs.mountpoint), used]
        if not chosen and not options.mount:
            parts.append((0, "no file systems reported"))
    text = head + "".join(f"; {p}" for _rank, p in sorted(parts, key=lambda p: p[0]))
    return Verdict(Finding(record.name, worst(statuses), text), measured)


# --- gathering -------------------------------------------------------------------------------------


def ask_agent(dom: Any, seconds: float) -> Answer:
    """Ping the agent, then its version and the guest's file systems (ping failing raises)."""
    took = guestinfo.ping(dom, seconds)
    try:
        version = str(guestinfo.agent_info(dom, seconds).get("version", ""))
    except KvmError as err:  # the ping answered: a slow guest-info only costs the version
        version = f"(version unknown: {err})"
    try:
        info = guestinfo.guest_info(dom, guestinfo.FS_INFO, seconds)
    except KvmError as err:
        return Answer(took, version, [], str(err))
    return Answer(took, version, guestinfo.file_systems(info))


def check(options: argparse.Namespace) -> Report:
    seconds = options.agent_timeout or options.timeout / 4
    named = set(options.domain)
    conn = virt.connect(options.uri)
    rw: Any = None
    try:
        chosen, missing = read(conn, ["state"], options)
        verdicts: dict[str, Verdict] = {}
        running: list[virt.DomainRecord] = []
        for record in chosen:
            state = record.stats.get("state.state")
            if record.error:
                verdicts[record.name] = unreadable(record)
            elif state in (states.RUNNING, states.BLOCKED):
                running.append(record)
            elif record.name in named:
                word = states.state_name(state) if isinstance(state, int) else "in no known state"
                verdicts[record.name] = Verdict(Finding(record.name, Status.OK, f"{record.text} {word}: agent not asked"))

        opening: list[virt.Pending] = []  # the read-write connection, opened once a channel is found
        guard = _thread.allocate_lock()

        def open_read_write() -> None:
            with guard:
                if not opening:
                    opening.append(virt.start(lambda: virt.connect(options.uri, readonly=False)))

        def channel_of(record: virt.DomainRecord) -> guestinfo.Channel | Verdict | None:
            try:
                channel = guestinfo.agent_channel(str(record.dom.XMLDesc(0)))
                if channel is not None:
                    open_read_write()  # while the other domains' XML is read
                return channel
            except virt.libvirtError as err:
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: domain XML: {virt.reason(err)}"))
            except Exception as err:  # an XML that does not parse: this domain alone is UNKNOWN
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {type(err).__name__}: {err}"))

        asking: list[tuple[virt.DomainRecord, guestinfo.Channel]] = []
        phase = f"reading the domain XML of {len(running)} running domains (for a guest agent channel)"
        for record, channel in zip(running, virt.in_parallel(channel_of, running, virt.concurrency(), phase)):
            if channel is virt.LATE:
                verdicts[record.name] = late(record, phase)
            elif isinstance(channel, Verdict):
                verdicts[record.name] = channel
            elif channel is not None:
                asking.append((record, channel))
            elif record.name in named:
                verdicts[record.name] = judge_no_channel(record, options.agent_optional)

        writable: dict[str, Any] = {}  # name -> the domain on the read-write connection
        if asking:
            activity.doing(f"connecting read-write to {virt.shown_uri(virt.resolve_uri(options.uri))}")
            try:
                if not opening[0].finished(activity.left()):
                    raise KvmError(f"cannot connect: no answer within -t {options.timeout:g}s")
                rw = opening[0].outcome()
                writable = {d.name(): d for d in rw.listAllDomains(0)}  # one call, not one lookup each
            except (KvmError, virt.libvirtError) as err:
                why = virt.reason(err) if isinstance(err, virt.libvirtError) else str(err)
                for record, _channel in asking:
                    verdicts[record.name] = Verdict(Finding(
                        record.name, Status.UNKNOWN, f"{record.text}: {guestinfo.READ_WRITE_NOTE}: {why}"))
                asking = []

        def one(item: tuple[virt.DomainRecord, guestinfo.Channel]) -> Verdict:
            record, channel = item
            dom = writable.get(record.name)
            if dom is None:
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: gone before its agent was asked"))
            try:
                answer = ask_agent(dom, seconds)
            except KvmError as err:
                return judge_silent(record, str(err), channel, options.agent_optional)
            except Exception as err:  # this domain alone is UNKNOWN
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: {type(err).__name__}: {err}"))
            return judge_domain(record, answer, options)

        if asking:
            phase = f"asking the guest agents of {len(asking)} domains"
            for (record, _channel), verdict in zip(asking, virt.in_parallel(one, asking, virt.concurrency(), phase)):
                verdicts[record.name] = late(record, phase) if verdict is virt.LATE else verdict
    finally:
        if rw is not None:
            rw.close()
        elif opening and opening[0].finished(0):  # opened for nothing: no channel was asked after all
            with contextlib.suppress(Exception):
                opening[0].outcome().close()
        conn.close()
    ordered = [with_entity(r, verdicts[r.name]) for r in chosen if r.name in verdicts]
    answered = sum(1 for v in ordered if v.of(PING.metric))
    counts = [Context("agents_asked", minimum=0)(len(asking)).perf(), Context("agents_answered", minimum=0)(answered).perf()]
    if not ordered and not missing and not (options.match or options.exclude):
        return Report(Status.OK, "no running domain has a guest agent channel", counts)
    return report(ordered, missing, options, f"guest agent answers on {answered} domains, file systems within thresholds",
                  extra_perf=counts)


def fs_types(text: str) -> list[str]:
    return [t for t in (part.strip() for part in text.split(",")) if t]


def parser() -> CheckParser:
    p = build_parser("check-kvm-guest-agent", DESCRIPTION, EXAMPLES, thresholds="file system used %",
                     warning="90", critical="95")
    p.add_argument("--agent-optional", action="store_true",
                   help="an agent that does not answer (or a named domain without a channel) is WARNING, not CRITICAL")
    p.add_argument("--mount", action="append", default=[], metavar="PATH",
                   help="only this mount point (repeatable); one that is not mounted is CRITICAL")
    p.add_argument("--exclude-fs-type", type=fs_types, action="append", metavar="TYPE[,TYPE]",
                   help="skip file systems of these types (repeatable; default: "
                        f"{','.join(guestinfo.DEFAULT_EXCLUDED_FS_TYPES)}; giving any replaces the default)")
    p.add_argument("--agent-timeout", type=seconds_arg, metavar="SECONDS",
                   help="deadline of each agent call per domain (default: a quarter of -t)")
    return p


def _normalise(options: argparse.Namespace) -> argparse.Namespace:
    groups = options.exclude_fs_type
    options.exclude_fs_type = ([t for g in groups for t in g] if groups is not None
                               else list(guestinfo.DEFAULT_EXCLUDED_FS_TYPES))
    return options


def main() -> None:
    run_check(NAME, parser(), lambda options: check(_normalise(options)))


if __name__ == "__main__":
    main()
