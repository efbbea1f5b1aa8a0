"""handler-kvm-remediate's decisions (sensu_kvm.remedy), every state x reason x autostart x stop,
the selection, the QEMU log parser, and that the shipped handler definition lets through every
status check-kvm-domstate gives a state the handler acts on."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sensu_kvm import states
from sensu_kvm.argtypes import regex_arg
from sensu_kvm.checks.domstate import Observed, judge_domain
from sensu_kvm.registry import BY_NAME
from sensu_kvm.remedy import OPERATOR_REASONS, Facts, Stop, decide, last_stop, mark_of, selected
from sensu_kvm.wiring import FIRST_OCCURRENCES_YAML

BOOT = 1_000_000.0
NOW = BOOT + 86400
GRACE = 1800.0
EVERY = [(state, reason) for state in states.STATE_NAMES for reason in range(len(states._REASONS.get(state, ()))+ 1)]


def facts(state: int, reason: int, autostart: bool = False, stop: Stop | None = None, log_read: bool = True) -> Facts:
    return Facts(state, reason, autostart, stop, log_read, BOOT, NOW, GRACE)


# (state, reason) -> the action whatever the autostart flag and the log say
ALWAYS = {
    (states.SHUTOFF, 3): "start", (states.SHUTOFF, 6): "start",  # crashed, failed
    (states.PAUSED, 0): "resume", (states.PAUSED, 6): "resume", (states.PAUSED, 10): "resume",
    (states.PAUSED, 14): "resume",
}


def expected(state: int, reason: int, autostart: bool, stop: Stop | None, log_read: bool) -> str | None:
    """The decision table of the README, written out independently of remedy.decide."""
    if (state, reason) in ALWAYS:
        return ALWAYS[(state, reason)]
    if state != states.SHUTOFF or reason == 4 or not autostart:  # 4: migrated
        return None
    if stop is not None and stop.by_operator and stop.time >= BOOT:
        return "start" if NOW - stop.time >= GRACE else None
    if reason in OPERATOR_REASONS:
        return None  # an operator stop whose time is unknown
    return "start"


STOPS = {
    "no log": (None, False),
    "no stop in the log": (None, True),
    "destroyed 60 s ago": (Stop(NOW - 60, "destroyed"), True),
    "shutdown 60 s ago": (Stop(NOW - 60, "shutdown"), True),
    "destroyed 2 h ago": (Stop(NOW - 7200, "destroyed"), True),
    "destroyed before boot": (Stop(BOOT - 60, "destroyed"), True),
    "crashed 60 s ago": (Stop(NOW - 60, "crashed"), True),
}


@pytest.mark.parametrize("autostart", [False, True], ids=["no autostart", "autostart"])
@pytest.mark.parametrize("stop", list(STOPS), ids=list(STOPS))
@pytest.mark.parametrize(("state", "reason"), EVERY,
                         ids=[f"{states.state_name(s)} ({states.reason_name(s, r)})" for s, r in EVERY])
def test_every_state_and_reason(state, reason, autostart, stop):
    record, log_read = STOPS[stop]
    decision = decide(facts(state, reason, autostart, record, log_read))
    assert decision.action == expected(state, reason, autostart, record, log_read)
    assert decision.why.startswith(f"{states.state_name(state)} ({states.reason_name(state, reason)})")
    assert "\n" not in decision.why


@pytest.mark.parametrize(("fact", "words"), [
    (facts(5, 0, True, None, True), "autostart is set: no stop since the host booted"),
    (facts(5, 0, True, None, False), "shut off (unknown), autostart is set"),
    (facts(5, 2, True, Stop(NOW - 60, "destroyed")), "stopped by an operator (destroyed) 60 s ago, within --grace 1800 s"),
    (facts(5, 0, True, Stop(NOW - 60, "destroyed")), "stopped by an operator (destroyed) 60 s ago"),
    (facts(5, 2, True, Stop(NOW - 7200, "destroyed")), "stopped (destroyed) 7200 s ago, longer than --grace 1800 s"),
    (facts(5, 0, True, Stop(BOOT - 5, "shutdown")), "down since before the host booted"),
    (facts(5, 1, True, None, False), "stopped on purpose at an unknown time (its QEMU log is not readable)"),
    (facts(5, 1, True, None, True), "stopped on purpose at an unknown time (no stop in its QEMU log)"),
    (facts(5, 2), "shut off (destroyed): stopped on purpose"),
    (facts(5, 0), "shut off (unknown): not marked autostart, nothing says it should run"),
    (facts(5, 4, True), "it runs on the host it migrated to"),
    (facts(3, 5), "resuming would pause it again until the disk has space"),
    (facts(3, 1), "an operator paused it"),
    (facts(6, 1), "kept for inspection"),
])
def test_what_the_log_says(fact, words):
    assert words in decide(fact).why


def test_an_unknown_boot_time_counts_every_stop():
    stop = Stop(NOW - 60, "destroyed")
    assert decide(Facts(5, 0, True, stop, True, None, NOW, GRACE)).action is None


LOG = """\
2026-12-01 21:57:00.100+0000: starting up libvirt version: 9.0.0, Debian package: 9.0.0-4+deb12u2, qemu version: 7.2.0
LC_ALL=C PATH=/usr/bin /usr/bin/qemu-system-x86_64 -name guest=web1
2026-12-01T21:58:37.300000Z qemu-system-x86_64: terminating on signal 15 from pid 7087 (libvirtd)
2026-12-01 21:58:37.338+0000: shutting down, reason=destroyed
"""


def test_last_stop_of_a_qemu_log():
    stop = last_stop(LOG)
    assert stop == Stop(1796162317.338, "destroyed")
    assert stop.by_operator
    restarted = LOG + "2026-12-01 22:00:00.000+0000: starting up libvirt version: 9.0.0\n"
    assert last_stop(restarted) is None  # started again, and no stop since (QEMU died with the host)
    again = restarted + "2026-12-01 22:01:00.5+0000: shutting down, reason=from snapshot\n"
    assert last_stop(again) == Stop(1796162460.5, "from snapshot")
    assert last_stop(again + "2026-12-01 22:02:00.000+0000: shutting down, reason=crashed\n").reason == "crashed"
    assert last_stop("") is None
    assert last_stop("garbage\n\x00\xff 2026-12-01 shutting down, reason=destroyed\n") is None


@pytest.mark.parametrize(("xml", "mark"), [
    (None, None),
    ("<remediate>on</remediate>", "on"),
    ("<remediate> OFF\n</remediate>", "off"),
    ('<kvm:remediate xmlns:kvm="https://github.com/sensu-plugins/sensu-plugins-kvm/xmlns/remediate/1">on</kvm:remediate>',
     "on"),
    ("<remediate>restart</remediate>", "restart"),
    ("<remediate/>", ""),
    ("<other>on</other>", "(a <other> element)"),
    ("<remediate>on", "(unreadable XML)"),
])
def test_mark_of(xml, mark):
    assert mark_of(xml) == mark


def options(match=None, exclude=None, domain=None):
    return SimpleNamespace(match=match and regex_arg(match), exclude=exclude and regex_arg(exclude), domain=domain)


# (options, the domain's mark) -> selected for "web 1"
SELECTIONS = [
    (options(), None, False, "not selected: remediation is opt-in"),
    (options(), "on", True, "its metadata says <remediate>on</remediate>"),
    (options(), "off", False, "its metadata says <remediate>off</remediate>"),
    (options(), "restart", False, "neither on nor off: ignored"),
    (options(match="^web"), None, True, "matches --match '^web'"),
    (options(match="^db"), None, False, "does not match --match '^db'"),
    (options(match="^db"), "on", True, "its metadata says"),
    (options(match="^web"), "off", False, "its metadata says <remediate>off</remediate>"),
    (options(match="^web"), "bogus", True, "its <remediate> says 'bogus', neither on nor off: ignored"),
    (options(exclude=" 1$"), None, False, "excluded by --exclude"),
    (options(exclude="^db"), None, True, "not excluded by --exclude '^db'"),
    (options(exclude=" 1$"), "on", False, "excluded by --exclude"),
    (options(match=".", exclude="web"), None, False, "excluded by --exclude"),
    (options(domain="web 1"), None, True, "named with --domain"),
    (options(domain="web 1", match="^db"), None, False, "does not match --match"),
    (options(domain="web 1"), "off", False, "its metadata says <remediate>off</remediate>"),
]


@pytest.mark.parametrize(("opts", "mark", "chosen", "why"), SELECTIONS)
def test_selection(opts, mark, chosen, why):
    got, said = selected("web 1", mark, opts)
    assert got is chosen
    assert why in said


def go_filter_passes(status: int, occurrences: int) -> bool:
    """The kvm-first-occurrences EventFilter of handlers.yaml, evaluated on an event the way Sensu Go
    does (action allow: every expression must be true). A stand-in for Sensu Go's JavaScript
    evaluation; these expressions use only ==, <=, || and field access, which mean the same here."""
    expressions = re.findall(r"^    - (.+)$", FIRST_OCCURRENCES_YAML, re.MULTILINE)
    event = SimpleNamespace(check=SimpleNamespace(status=status, occurrences=occurrences))
    return all(eval(e.replace("||", " or ").replace("&&", " and "), {"event": event}) for e in expressions)


SEVERITY = {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}


@pytest.mark.parametrize(("state", "reason"), EVERY)
def test_every_state_the_handler_acts_on_reaches_it(state, reason):
    """check-kvm-domstate's status for each state the handler acts on passes the shipped
    severities (Sensu Core) and filter (Sensu Go) of kvm-remediate; and the check never calls a
    state OK that the handler would act on."""
    handler = BY_NAME["handler-kvm-remediate"].handler
    assert handler is not None
    for autostart in (False, True):
        if decide(facts(state, reason, autostart, None, True)).action is None:
            continue
        status = judge_domain(Observed("web1", state, reason, autostart), named=False, expect_running=False).status
        assert SEVERITY[status.value] in handler.core_severities, (state, reason, autostart, status)
        assert go_filter_passes(status.value, 1), (state, reason, autostart, status)
    assert not go_filter_passes(0, 1) and not go_filter_passes(3, 1) and not go_filter_passes(2, 4)


README = Path(__file__).resolve().parents[2] / "README.md"
P, S = states.PAUSED, states.SHUTOFF
# the first cell of each row of the README's table -> the (state, reason, autostart) it stands for
ROWS: dict[str, list[tuple[int, int, bool]]] = {
    "running (any other reason), blocked": [(s, r, a) for s in (states.RUNNING, states.BLOCKED)
                                            for r in range(len(states._REASONS[s])) if (s, r) not in states.JOB_REASONS
                                            for a in (False, True)],
    "running (post-copy), paused (migrating, saving, dumping, post-copy)": [
        (states.RUNNING, 10, False), (states.RUNNING, 10, True)] + [(P, r, False) for r in (2, 3, 4, 12)],
    "running (post-copy failed), paused (post-copy failed)": [(states.RUNNING, 11, False), (states.RUNNING, 11, True),
                                                              (P, 13, False)],
    "paused (unknown), paused (watchdog), paused (crashed), paused (api error)": [(P, r, False) for r in (0, 6, 10, 14)],
    "paused (I/O error)": [(P, 5, False), (P, 5, True)],
    "paused (user)": [(P, 1, False)],
    "paused (from snapshot, shutting down, creating snapshot, starting up)": [(P, r, False) for r in (7, 8, 9, 11)],
    "shutting down": [(states.SHUTDOWN, r, False) for r in (0, 1)],
    "shut off (crashed), shut off (failed)": [(S, r, a) for r in (3, 6) for a in (False, True)],
    "shut off (unknown), shut off (daemon), marked autostart: after a host reboot where autostart failed, or a "
    "libvirtd restart": [(S, 0, True), (S, 8, True)],
    "shut off (shutdown), (destroyed), (saved), (from snapshot), marked autostart: an operator, or the guest "
    "itself, stopped it": [(S, r, True) for r in (1, 2, 5, 7)],
    "shut off (migrated), marked autostart": [(S, 4, True)],
    "shut off (any other reason), not marked autostart": [(S, r, False) for r in (0, 1, 2, 4, 5, 7, 8)],
    "crashed (unknown), crashed (panicked)": [(states.CRASHED, r, False) for r in (0, 1)],
    "pmsuspended": [(states.PMSUSPENDED, 0, False)],
    "no state, unreadable": [(states.NOSTATE, 0, False)],
    "named with `-d` and not defined": [],
}
SAYS = {"start": "starts it", "resume": "resumes it", None: "nothing"}


def readme_rows() -> dict[str, tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    head = "| state (reason) | check-kvm-domstate | handler-kvm-remediate, for a selected domain |"
    table = text[text.index(head):].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for line in table:
        first, status, handler = (cell.strip() for cell in line.strip("|").split(" | "))
        rows[first] = (status, handler)
    return rows


def test_the_readme_table_is_what_the_check_and_the_handler_do():
    """Every row of the README's table says the status check-kvm-domstate gives (as shipped) and
    what the handler does (no stop in the QEMU log), and the rows cover every state and reason."""
    rows = readme_rows()
    assert list(rows) == list(ROWS)
    covered = set()
    for first, cases in ROWS.items():
        status, handler = rows[first]
        for state, reason, autostart in cases:
            seen = Observed("kvm1", state, reason, autostart)
            assert status.startswith(judge_domain(seen, named=False, expect_running=False).status.name), first
            assert handler.startswith(SAYS[decide(facts(state, reason, autostart)).action]), first
            covered.add((state, reason, autostart))
    every = {(s, r, a) for s, r in EVERY if r < len(states._REASONS.get(s, ("unknown",))) for a in (False, True)}
    by_autostart_alone = {(s, r, not a) for s, r, a in covered if s != S}  # only shut off depends on autostart
    assert every <= covered | by_autostart_alone
