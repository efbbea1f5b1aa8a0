"""handler-kvm-remediate: start a guest that crashed or should run, resume one paused by a fault,
only on the domains selected for it (opt-in), with guardrails. The decisions: sensu_kvm.remedy."""

from __future__ import annotations

import argparse
import time

from sensu_kvm import STATE_DIR, remedy, states, virt
from sensu_kvm.argtypes import domain_arg, number_arg, regex_arg, state_dir_arg, uri_arg, whole_arg
from sensu_kvm.errors import NotFound
from sensu_kvm.events import Event, domain_of
from sensu_kvm.handler import EXIT_DONE, EXIT_FAILED, HandlerParser, Log, build_parser, run_handler
from sensu_kvm.names import Names
from sensu_kvm.statefile import StateFile

PROG = "handler-kvm-remediate"

EXAMPLES = f"""\
  handler-kvm-remediate --match '^web' < event.json   act on the domains whose name matches ^web
  handler-kvm-remediate < event.json                  only on domains marked in their metadata (below)
  handler-kvm-remediate --match . --exclude '^other-team-' --grace 3600 < event.json
  handler-kvm-remediate --domain kvm1 --dry-run < event.json
  handler-kvm-remediate --match . --max-attempts 2 --window 3600 -u qemu:///system < event.json
  virsh metadata kvm1 {remedy.NAMESPACE} --key {remedy.KEY} \\
      --set '<{remedy.ELEMENT}>on</{remedy.ELEMENT}>' --config --live     mark kvm1 (off: never touch it)"""

DESCRIPTION = f"""\
Acts on a check-kvm-domstate event about one domain: the proxy client's name (results sent with
--per-domain: the domain's Sensu entity name, or its real name), the check's source, or --domain.
Remediation is opt-in: it touches only a domain that --match/--exclude (regular expressions on the
libvirt name, as the checks take them) or --domain select, or whose libvirt metadata holds
<{remedy.ELEMENT} xmlns="{remedy.NAMESPACE}">on</{remedy.ELEMENT}>
('off' there keeps a domain out even when --match selects it; --exclude wins over everything).
With none of these it does nothing and says so.

A selected domain shut off with reason 'crashed' or 'failed' is started; one marked autostart and
shut off for another reason (unknown, as after a host reboot where autostart failed) is started
too, unless an operator stopped it (shutdown, destroyed, saved, from snapshot) less than --grace
seconds ago: the time of that stop comes from the domain's QEMU log ({remedy.QEMU_LOG_DIR}/NAME.log,
local qemu:///system only); a stop before the host booted does not count, and an operator stop
whose time cannot be read is left alone. A domain paused by a watchdog, a crash, an API error or an
unknown cause is resumed. Nothing is done for a resolve event, a domain an operator paused, one
paused by an I/O error (resuming on a full disk only pauses it again: free space first), one shut
off by a migration, or one in the middle of a migration, save, dump or snapshot. At most
--max-attempts actions per domain within --window seconds (kept in --state-dir). It reads on a
read-only connection and opens a read-write one only to act; --dry-run never does and creates
nothing. Every decision is logged on stderr, one line each."""


def find(conn: virt.virConnect, event: Event, given: str | None) -> virt.virDomain:
    """The domain the event is about: the one given; else the one whose Sensu entity name (as
    check-kvm-domstate --per-domain sends it, names.entity over every domain of the host) or,
    failing that, whose libvirt name the event's source or proxy client names. NotFound when it
    names none that exists."""
    if given:
        return virt.lookup_domain(conn, given)
    wanted = domain_of(event, None)
    assert wanted is not None  # act() has said so and returned
    domains = virt.all_domains(conn)
    forms = Names({d.name(): d.UUIDString() for d in domains})
    for dom in domains:
        if forms.entity(dom.name()) == wanted:
            return dom
    for dom in domains:
        if dom.name() == wanted:
            return dom
    raise NotFound(f"no domain named '{wanted}' and none whose Sensu entity name it is")


def boot_time() -> float | None:
    """When this host booted: the btime of /proc/stat (the handler may run where psutil is not
    installed: a Sensu Go backend); None when it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def facts(options: argparse.Namespace, dom: virt.virDomain, state: int, reason: int) -> remedy.Facts:
    """What decide() needs; the autostart flag and the QEMU log only for a shut off domain."""
    now = time.time()
    if state != states.SHUTOFF:
        return remedy.Facts(state, reason, now=now, grace=options.grace)
    autostart = virt.is_autostart(dom)
    stop, log_read, boot = None, False, None
    if autostart and reason not in remedy.STARTABLE:
        log_read, text = virt.qemu_log(virt.resolve_uri(options.uri), dom.name(), remedy.QEMU_LOG_DIR,
                                       remedy.LOG_TAIL)
        if log_read:
            boot = boot_time()
            stop = remedy.last_stop(text) if text else None
    return remedy.Facts(state, reason, autostart, stop, log_read, boot, now, options.grace)


def recent(attempts: object, now: float, window: float) -> list[float]:
    """The attempt times still inside the window (a corrupt entry counts as none)."""
    if not isinstance(attempts, list):
        return []
    return [t for t in attempts if isinstance(t, (int, float)) and now - t < window]


def _entry(saved: dict[str, object], uuid: str) -> dict[str, object]:
    entry = saved.get(uuid)
    return entry if isinstance(entry, dict) else {}


def _state(dom: virt.virDomain, name: str) -> tuple[int, int]:
    try:
        state, reason = dom.state()
    except virt.libvirtError as err:
        raise virt.translate(err, f"domain {name}") from err
    return state, reason


def act(options: argparse.Namespace, event: Event, log: Log) -> int:
    head = f"{event.flavour} event {event.entity}/{event.check} status {event.status}"
    if not options.check.search(event.check):
        log(f"{head}: not a domstate check (--check {options.check.pattern!r}), nothing done")
        return EXIT_DONE
    if event.resolved:
        log(f"{head}: resolved, nothing done")
        return EXIT_DONE
    if not options.domain and domain_of(event, None) is None:
        log(f"{head}: names no domain (no proxy client, no source, no --domain), nothing done")
        return EXIT_DONE
    conn = virt.connect(options.uri, readonly=True, timeout=options.timeout)  # deciding only reads
    try:
        dom = find(conn, event, options.domain)
        name = dom.name()
        ok, why = remedy.selected(name, remedy.mark_of(virt.metadata_element(dom, remedy.NAMESPACE)), options)
        if not ok:
            log(f"{head}: {name}: {why}: nothing done")
            return EXIT_DONE
        state, reason = _state(dom, name)
        decision = remedy.decide(facts(options, dom, state, reason))
        uuid = dom.UUIDString()
    finally:
        conn.close()
    if decision.action is None:
        log(f"{head}: {name} is {decision.why}: nothing done")
        return EXIT_DONE
    store = StateFile(options.state_dir, "remediate", virt.resolve_uri(options.uri))
    action, said = decision.action, decision.why
    if options.dry_run:  # reads the attempts without taking the lock: a dry run creates nothing
        attempts = recent(_entry(store.load(), uuid).get("attempts"), time.time(), options.window)
        if len(attempts) >= options.max_attempts:
            log(f"{head}: {name} is {said}: would NOT {action} it (dry run): {len(attempts)} attempts in the last "
                f"{options.window:g} s already (--max-attempts {options.max_attempts}); it needs a person")
            return EXIT_FAILED
        log(f"{head}: {name} is {said}: would {action} it (dry run, attempt {len(attempts) + 1} "
            f"of {options.max_attempts})")
        return EXIT_DONE
    conn = virt.connect(options.uri, readonly=False, timeout=options.timeout)  # only to act
    try:
        dom = virt.lookup_domain(conn, name)
        state, reason = _state(dom, name)
        decision = remedy.decide(facts(options, dom, state, reason))  # again: it may have changed meanwhile
        if decision.action is None:
            log(f"{head}: {name} is {decision.why} now: nothing done")
            return EXIT_DONE
        action, said, uuid = decision.action, decision.why, dom.UUIDString()
        with store.locked():
            saved = store.load()
            now = time.time()
            attempts = recent(_entry(saved, uuid).get("attempts"), now, options.window)
            if len(attempts) >= options.max_attempts:
                log(f"{head}: {name} is {said}: NOT trying to {action} it: {len(attempts)} attempts in the last "
                    f"{options.window:g} s already (--max-attempts {options.max_attempts}); it needs a person")
                return EXIT_FAILED
            saved[uuid] = {"t": now, "name": name, "attempts": [*attempts, now]}
            store.save(saved)  # counted before acting: a handler killed mid-way still counts
        log(f"{head}: {name} is {said}: trying to {action} it (attempt {len(attempts) + 1} of {options.max_attempts})")
        try:
            if action == "start":
                dom.create()
            else:
                dom.resume()
        except virt.libvirtError as err:
            log(f"{head}: could not {action} {name}: {virt.reason(err)}")
            return EXIT_FAILED
        state, reason = _state(dom, name)
        log(f"{head}: {name} is now {states.state_name(state)} ({states.reason_name(state, reason)})")
        return EXIT_DONE
    finally:
        conn.close()


def parser() -> HandlerParser:
    p = build_parser(PROG, DESCRIPTION, EXAMPLES)
    p.add_argument("-u", "--uri", type=uri_arg, help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    p.add_argument("-d", "--domain", type=domain_arg,
                   help="the domain to act on, by its libvirt name (default: from the event); naming it selects it")
    p.add_argument("--match", type=regex_arg, metavar="REGEX",
                   help="act only on domains whose libvirt name matches REGEX (as the checks' --match)")
    p.add_argument("--exclude", type=regex_arg, metavar="REGEX",
                   help="never act on domains whose name matches REGEX; alone, every other domain is selected")
    p.add_argument("--grace", type=number_arg(366 * 86400, "seconds"), default=1800.0, metavar="SECONDS",
                   help="never start an autostart domain an operator stopped less than this long ago, up to a "
                        "year (default: 1800)")
    p.add_argument("--check", type=regex_arg, default=regex_arg("domstate"), metavar="REGEX",
                   help="act only on checks whose name matches (default: domstate)")
    p.add_argument("--max-attempts", type=whole_arg, default=3, metavar="N",
                   help="at most N actions per domain within the window, a whole number >= 1 (default: 3)")
    p.add_argument("--window", type=number_arg(366 * 86400, "seconds"), default=3600.0, metavar="SECONDS",
                   help="the window for --max-attempts, up to a year (default: 3600)")
    p.add_argument("--state-dir", type=state_dir_arg, default=STATE_DIR, metavar="DIR",
                   help=f"where the attempts are kept (default: {STATE_DIR})")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be done, do nothing (a read-only connection)")
    return p


def main() -> None:
    run_handler(parser(), act)


if __name__ == "__main__":
    main()
