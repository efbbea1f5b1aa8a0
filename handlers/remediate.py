"""handler-kvm-remediate: start a guest that crashed, resume one paused by a fault, with guardrails."""

from __future__ import annotations

import argparse
import time

from sensu_kvm import STATE_DIR, states, virt
from sensu_kvm.argtypes import domain_arg, number_arg, regex_arg, state_dir_arg, uri_arg, whole_arg
from sensu_kvm.events import Event, domain_of
from sensu_kvm.handler import EXIT_DONE, EXIT_FAILED, HandlerParser, Log, build_parser, run_handler
from sensu_kvm.statefile import StateFile

PROG = "handler-kvm-remediate"

EXAMPLES = """\
  handler-kvm-remediate < event.json                  the domain is the proxy client / source of the event
  handler-kvm-remediate --domain kvm1 --dry-run < event.json
  handler-kvm-remediate --max-attempts 2 --window 3600 -u qemu:///system"""

DESCRIPTION = """\
Acts on a check-kvm-domstate event about one domain: the proxy client's name (results sent with
--per-domain), the check's source, or --domain. A shut off domain whose reason is 'crashed' or
'failed' is started; a domain paused by a watchdog, a crash, an API error or an unknown cause is
resumed. Nothing is done for a resolve event, a domain an operator paused or shut down, a domain
paused by an I/O error (resuming on a full disk only pauses it again: free space first), or one in
the middle of a migration, save, dump or snapshot. At most --max-attempts actions per domain
within --window seconds (kept in --state-dir). --dry-run connects read-only and creates nothing.
Every decision is logged on stderr, one line each."""

RESUMABLE = {0: "unknown", 6: "watchdog", 10: "crashed", 14: "api error"}
STARTABLE = {states.SHUTOFF_CRASHED, states.SHUTOFF_FAILED}


def decide(state: int, reason: int) -> tuple[str | None, str]:
    """What to do with a domain in this state: ('start' | 'resume' | None, why) (pure)."""
    words = f"{states.state_name(state)} ({states.reason_name(state, reason)})"
    if state == states.SHUTOFF and reason in STARTABLE:
        return "start", words
    if state == states.PAUSED and reason in RESUMABLE:
        return "resume", words
    if state == states.PAUSED and reason == states.PAUSED_IOERROR:
        return None, f"{words}: resuming would pause it again until the disk has space"
    if state == states.PAUSED and reason == 1:
        return None, f"{words}: an operator paused it"
    if state == states.PAUSED:
        return None, f"{words}: a job is in progress"
    if state == states.SHUTOFF:
        return None, f"{words}: stopped on purpose"
    if state == states.CRASHED:
        return None, f"{words}: kept for inspection (on_crash=preserve); destroy it to have it started"
    return None, words


def recent(attempts: object, now: float, window: float) -> list[float]:
    """The attempt times still inside the window (a corrupt entry counts as none)."""
    if not isinstance(attempts, list):
        return []
    return [t for t in attempts if isinstance(t, (int, float)) and now - t < window]


def _entry(saved: dict[str, object], uuid: str) -> dict[str, object]:
    entry = saved.get(uuid)
    return entry if isinstance(entry, dict) else {}


def act(options: argparse.Namespace, event: Event, log: Log) -> int:
    head = f"{event.flavour} event {event.entity}/{event.check} status {event.status}"
    if not options.check.search(event.check):
        log(f"{head}: not a domstate check (--check {options.check.pattern!r}), nothing done")
        return EXIT_DONE
    if event.resolved:
        log(f"{head}: resolved, nothing done")
        return EXIT_DONE
    name = domain_of(event, options.domain)
    if name is None:
        log(f"{head}: names no domain (no proxy client, no source, no --domain), nothing done")
        return EXIT_DONE
    conn = virt.connect(options.uri, readonly=options.dry_run, timeout=options.timeout)  # a dry run only reads: read-only
    try:
        try:
            dom = conn.lookupByName(name)
            state, reason = dom.state()
            uuid = dom.UUIDString()
        except virt.libvirtError as err:
            raise virt.translate(err, f"domain {name}") from err
        action, why = decide(state, reason)
        if action is None:
            log(f"{head}: {name} is {why}: nothing done")
            return EXIT_DONE
        store = StateFile(options.state_dir, "remediate", virt.resolve_uri(options.uri))
        if options.dry_run:  # reads the attempts without taking the lock: a dry run creates nothing
            attempts = recent(_entry(store.load(), uuid).get("attempts"), time.time(), options.window)
            if len(attempts) >= options.max_attempts:
                log(f"{head}: {name} is {why}: would NOT {action} it (dry run): {len(attempts)} attempts in the last "
                    f"{options.window:g} s already (--max-attempts {options.max_attempts}); it needs a person")
                return EXIT_FAILED
            log(f"{head}: {name} is {why}: would {action} it (dry run, attempt {len(attempts) + 1} "
                f"of {options.max_attempts})")
            return EXIT_DONE
        with store.locked():
            saved = store.load()
            now = time.time()
            attempts = recent(_entry(saved, uuid).get("attempts"), now, options.window)
            if len(attempts) >= options.max_attempts:
                log(f"{head}: {name} is {why}: NOT trying to {action} it: {len(attempts)} attempts in the last "
                    f"{options.window:g} s already (--max-attempts {options.max_attempts}); it needs a person")
                return EXIT_FAILED
            saved[uuid] = {"t": now, "name": name, "attempts": [*attempts, now]}
            store.save(saved)  # counted before acting: a handler killed mid-way still counts
        log(f"{head}: {name} is {why}: trying to {action} it (attempt {len(attempts) + 1} of {options.max_attempts})")
        try:
            if action == "start":
                dom.create()
            else:
                dom.resume()
        except virt.libvirtError as err:
            log(f"{head}: could not {action} {name}: {virt.reason(err)}")
            return EXIT_FAILED
        state, reason = dom.state()
        log(f"{head}: {name} is now {states.state_name(state)} ({states.reason_name(state, reason)})")
        return EXIT_DONE
    finally:
        conn.close()


def parser() -> HandlerParser:
    p = build_parser(PROG, DESCRIPTION, EXAMPLES)
    p.add_argument("-u", "--uri", type=uri_arg, help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    p.add_argument("-d", "--domain", type=domain_arg, help="the domain to act on (default: from the event)")
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
