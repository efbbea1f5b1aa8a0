"""What handler-kvm-remediate does, as pure functions: which domains it may touch (the selection),
what it does in each state and reason (the decision table), and when an operator stopped a
domain (from the QEMU log libvirt keeps per domain). The handler (handlers/remediate.py) reads the
facts and acts; everything it decides is here, so that the table in the README and the tests are
about one function.

The selection is opt-in: a domain is touched only when ``--match``/``--exclude``/``--domain``
select it or its libvirt metadata holds the element :data:`NAMESPACE` ``remediate`` with ``on``.
"""

from __future__ import annotations

import argparse
import datetime
import re
from typing import NamedTuple

from sensu_kvm import states

# The namespace of the handler's element in a domain's <metadata> (docs/decisions.md, issue 14)
NAMESPACE = "https://github.com/sensu-plugins/sensu-plugins-kvm/xmlns/remediate/1"
ELEMENT = "remediate"
KEY = "kvm"  # the prefix virsh metadata --key writes it with
QEMU_LOG_DIR = "/var/log/libvirt/qemu"  # qemu:///system's per-domain log, <name>.log
LOG_TAIL = 256 * 1024  # read at most the last 256 KiB of a domain's QEMU log

# paused for a fault that resuming cures
RESUMABLE = {0: "unknown", 6: "watchdog", 10: "crashed", 14: "api error"}
STARTABLE = {states.SHUTOFF_CRASHED, states.SHUTOFF_FAILED}
SHUTOFF_MIGRATED = 4
# shut off by someone: virsh shutdown (or the guest's own power-off), destroy, managedsave, a revert
OPERATOR_REASONS = {1: "shutdown", 2: "destroyed", 5: "saved", 7: "from snapshot"}


class Stop(NamedTuple):
    """The last stop of a domain's QEMU that libvirt logged: when (UNIX time) and why (its word)."""

    time: float
    reason: str

    @property
    def by_operator(self) -> bool:
        return self.reason in OPERATOR_REASONS.values()


class Facts(NamedTuple):
    """What the handler read about one domain, and its options (the input of :func:`decide`)."""

    state: int
    reason: int
    autostart: bool = False
    stop: Stop | None = None  # the last stop the QEMU log records after the last start, if any
    log_read: bool = False  # whether the QEMU log could be read at all (a local URI, permission)
    boot_time: float | None = None  # when this host booted (None: not known, a remote URI)
    now: float = 0.0
    grace: float = 1800.0


class Decision(NamedTuple):
    action: str | None  # "start", "resume" or None
    why: str


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\+0000: (starting up\b.*|shutting down, reason=(.+))$",
                   re.MULTILINE)


def last_stop(log: str) -> Stop | None:
    """The last "shutting down, reason=..." line of a QEMU log after its last "starting up" line
    (libvirt writes both, time stamped in UTC, as it starts and stops QEMU); None when the last
    start has no stop after it (QEMU died with the host) or there is neither."""
    found = None
    for match in _LINE.finditer(log):
        stamp, _, reason = match.groups()
        if reason is None:
            found = None
            continue
        when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S" + (".%f" if "." in stamp else ""))
        found = Stop(when.replace(tzinfo=datetime.timezone.utc).timestamp(), reason.strip())
    return found


def mark_of(metadata: str | None) -> str | None:
    """The word of a <remediate> metadata element (``on``, ``off``, anything else as written), or
    None when the domain has none. ``metadata`` is what virDomainGetMetadata returned."""
    if metadata is None:
        return None
    from xml.etree import ElementTree  # noqa: PLC0415 (only a marked domain needs it)

    try:
        element = ElementTree.fromstring(metadata)
    except ElementTree.ParseError:
        return "(unreadable XML)"
    if element.tag.rpartition("}")[2] != ELEMENT:
        return f"(a <{element.tag}> element)"
    return (element.text or "").strip().lower()


def selected(name: str, mark: str | None, options: argparse.Namespace) -> tuple[bool, str]:
    """Whether the handler may touch the domain ``name`` and why (pure).

    --exclude wins over everything, then the domain's own metadata (``off`` keeps it out even
    when --match selects it, ``on`` lets it in without --match), then --domain and --match; with
    none of them nothing is selected: remediation is opt-in.
    """
    if options.exclude is not None and options.exclude.search(name):
        return False, f"excluded by --exclude {options.exclude.pattern!r}"
    if mark == "off":
        return False, "its metadata says <remediate>off</remediate>"
    if mark == "on":
        return True, "its metadata says <remediate>on</remediate>"
    odd = f"; its <remediate> says {mark!r}, neither on nor off: ignored" if mark is not None else ""
    if options.match is not None:
        if options.match.search(name):
            return True, f"matches --match {options.match.pattern!r}{odd}"
        return False, f"does not match --match {options.match.pattern!r}{odd}"
    if options.domain:
        return True, f"named with --domain{odd}"
    if options.exclude is not None:
        return True, f"not excluded by --exclude {options.exclude.pattern!r}{odd}"
    return False, ("not selected: remediation is opt-in (no --match, --exclude or --domain, and no "
                   f"<remediate>on</remediate> in its metadata){odd}")


def _ago(seconds: float) -> str:
    return f"{max(seconds, 0):.0f} s ago"


def _shutoff(facts: Facts, words: str) -> Decision:
    reason = facts.reason
    if reason in STARTABLE:
        return Decision("start", words)
    if reason == SHUTOFF_MIGRATED:
        return Decision(None, f"{words}: it runs on the host it migrated to; starting it here would run it twice")
    operator = OPERATOR_REASONS.get(reason)
    if not facts.autostart:
        if operator:
            return Decision(None, f"{words}: stopped on purpose")
        return Decision(None, f"{words}: not marked autostart, nothing says it should run")
    stop = facts.stop
    since_boot = stop is not None and (facts.boot_time is None or stop.time >= facts.boot_time)
    if stop is not None and stop.by_operator and since_boot:
        age = facts.now - stop.time
        if age < facts.grace:
            return Decision(None, f"{words}, autostart is set: stopped by an operator ({stop.reason}) {_ago(age)}, "
                                  f"within --grace {facts.grace:g} s")
        return Decision("start", f"{words}, autostart is set: stopped ({stop.reason}) {_ago(age)}, longer than "
                                 f"--grace {facts.grace:g} s")
    if operator:  # libvirt says an operator stopped it, and the log gives no time for that stop
        where = "no stop in its QEMU log" if facts.log_read else "its QEMU log is not readable"
        return Decision(None, f"{words}, autostart is set: stopped on purpose at an unknown time ({where}): "
                              f"left alone as if within --grace")
    if stop is not None and not since_boot:
        return Decision("start", f"{words}, autostart is set: down since before the host booted")
    if stop is not None:
        return Decision("start", f"{words}, autostart is set: its last stop was not an operator's ({stop.reason})")
    if facts.log_read:
        return Decision("start", f"{words}, autostart is set: no stop since the host booted")
    return Decision("start", f"{words}, autostart is set")


def decide(facts: Facts) -> Decision:
    """What to do with a selected domain in this state (pure): the decision table of the README."""
    state, reason = facts.state, facts.reason
    words = f"{states.state_name(state)} ({states.reason_name(state, reason)})"
    if state == states.SHUTOFF:
        return _shutoff(facts, words)
    if state == states.PAUSED and reason in RESUMABLE:
        return Decision("resume", words)
    if state == states.PAUSED and reason == states.PAUSED_IOERROR:
        return Decision(None, f"{words}: resuming would pause it again until the disk has space")
    if state == states.PAUSED and reason == 1:
        return Decision(None, f"{words}: an operator paused it")
    if state == states.PAUSED:
        return Decision(None, f"{words}: a job is in progress")
    if state == states.CRASHED:
        return Decision(None, f"{words}: kept for inspection (on_crash=preserve); destroy it to have it started")
    return Decision(None, words)
