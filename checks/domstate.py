"""check-kvm-domstate: is every KVM domain in the state it should be in?"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from sensu_kvm import states, virt
from sensu_kvm.contexts import Context
from sensu_kvm.domains import read
from sensu_kvm.names import entity_name, visible
from sensu_kvm.output import Finding, Report, Status, summarise, worst
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "CheckKvmDomstate"

EXAMPLES = """\
  check-kvm-domstate                          every domain on qemu:///system
  check-kvm-domstate -d kvm1                  one domain (CRITICAL when it is not running or missing)
  check-kvm-domstate --match '^web' --exclude test --expect-running
  check-kvm-domstate -c 2: -u qemu:///system  CRITICAL when fewer than 2 domains run
  check-kvm-domstate -u test:///default -v    libvirt's embedded test hypervisor, every domain
  check-kvm-domstate --per-domain sensu --per-domain-occurrences 2 --per-domain-refresh 1800
                                              also one result per guest to the Sensu client socket"""

DESCRIPTION = """\
Judge the state of KVM domains. Running is OK. Paused is CRITICAL when an I/O error paused it
(each failing disk is named), else WARNING with the reason. Crashed is CRITICAL; shutting down and
pmsuspended are WARNING. Shut off is CRITICAL when it crashed or failed, when the domain was named
with -d, is marked autostart, or --expect-running is given; otherwise OK with the reason.
-w/-c judge the number of running domains. Perfdata: the number of domains in each state."""


class Observed(NamedTuple):
    """What was read about one domain."""

    name: str
    state: int | None
    reason: int = 0
    autostart: bool = False
    disk_errors: Mapping[str, int] | None = None
    error: str | None = None
    text: str = ""  # the name in human text (names.text); empty: made from the name alone
    entity: str = ""  # the Sensu entity name, for --per-domain (names.entity)

    @property
    def shown(self) -> str:
        return self.text or visible(self.name)


def judge_domain(seen: Observed, *, named: bool, expect_running: bool) -> Finding:
    """The verdict on one domain (pure)."""
    if seen.state is None:
        return Finding(seen.name, Status.UNKNOWN, f"{seen.shown}: {seen.error or 'state unreadable'}")
    state, reason = seen.state, seen.reason
    text = f"{seen.shown} {states.state_name(state)} ({states.reason_name(state, reason)})"
    if state in (states.RUNNING, states.BLOCKED):
        return Finding(seen.name, Status.OK, text)
    if state == states.PAUSED:
        if reason != states.PAUSED_IOERROR:
            return Finding(seen.name, Status.WARNING, text)
        if seen.disk_errors:
            errors = ", ".join(f"{disk}: {states.disk_error_name(code)}" for disk, code in sorted(seen.disk_errors.items()))
            text += f": {errors}"
        elif seen.error:
            text += f": disk errors unreadable: {seen.error}"
        return Finding(seen.name, Status.CRITICAL, text)
    if state == states.CRASHED:
        return Finding(seen.name, Status.CRITICAL, text)
    if state in (states.SHUTDOWN, states.PMSUSPENDED):
        return Finding(seen.name, Status.WARNING, text)
    if state == states.SHUTOFF:
        if reason in (states.SHUTOFF_CRASHED, states.SHUTOFF_FAILED):
            return Finding(seen.name, Status.CRITICAL, text)
        why = [w for w, on in (("autostart is set", seen.autostart), ("named with -d", named),
                               ("expected to run", expect_running)) if on]
        if why:
            return Finding(seen.name, Status.CRITICAL, f"{text}, {why[0]}")
        return Finding(seen.name, Status.OK, text)
    return Finding(seen.name, Status.UNKNOWN, text)


def evaluate(observed: Sequence[Observed], missing: Sequence[str], options: argparse.Namespace) -> Report:
    """All verdicts, the summary and the perfdata (pure)."""
    findings = [judge_domain(o, named=o.name in options.domain, expect_running=options.expect_running)._replace(
        entity=o.entity) for o in observed]
    findings += [Finding(name, Status.CRITICAL, f"{visible(name)} not found", entity_name(name)) for name in missing]
    counts = Counter(o.state for o in observed if o.state is not None)
    total = len(observed)
    measured = [Context(label, minimum=0, maximum=total)(counts[state]) for state, label in states.STATE_LABELS.items()]
    running = measured[states.RUNNING] = Context(states.STATE_LABELS[states.RUNNING], "", options.warning,
                                                 options.critical, 0, total)(counts[states.RUNNING])
    measured.append(Context("unreadable", minimum=0, maximum=total)(sum(o.state is None for o in observed)))
    measured.append(Context("missing", minimum=0)(len(missing)))

    count_status = running.status
    status, problems, details = summarise(findings, "domain", options.verbose)
    if len(findings) == 1 and not (options.warning or options.critical):
        summary = findings[0].text
    elif problems:
        summary = problems
    else:
        tally = ", ".join(f"{counts[s]} {states.state_name(s)}" for s in states.STATE_NAMES if counts[s])
        summary = f"{total} domain{'s' if total != 1 else ''}: {tally}" if tally else "no domains defined"
    if count_status is not Status.OK:
        limit = options.critical if count_status is Status.CRITICAL else options.warning
        summary = f"{running.value} running, outside {limit}; {summary}"
        status = worst([status, count_status])
    return Report(status, summary, [m.perf() for m in measured], details, findings=findings)


def gather(options: argparse.Namespace) -> tuple[list[Observed], list[str]]:
    """Read the states: one bulk call, then autostart and disk errors only where they matter.

    Returns the observations and the names given with -d that do not exist.
    """
    conn = virt.connect(options.uri)
    try:
        chosen, missing = read(conn, ["state"], options)
        autostart: set[str] = set()
        if any(r.stats.get("state.state") == states.SHUTOFF for r in chosen):
            autostart = virt.autostart_uuids(conn)
        stopped = [r for r in chosen if (r.stats.get("state.state"), r.stats.get("state.reason", 0))
                   == (states.PAUSED, states.PAUSED_IOERROR)]

        def disk_errors(record: virt.DomainRecord) -> dict[str, int] | str:
            try:
                return dict(record.dom.diskErrors())
            except virt.libvirtError as err:
                return f"{record.text}: disk errors: {virt.reason(err)}"

        phase = f"reading disk errors of {len(stopped)} domains paused by an I/O error"
        found = dict(zip((r.name for r in stopped), virt.in_parallel(disk_errors, stopped, virt.concurrency(), phase)))
        observed = []
        for record in chosen:
            errors: dict[str, int] | None = None
            error = record.error
            answer = found.get(record.name)
            if answer is virt.LATE:
                error = f"{record.text}: disk errors: {virt.late_error(phase)}"
            elif isinstance(answer, str):
                error = answer
            elif answer is not None:
                errors = answer
            observed.append(Observed(record.name, record.stats.get("state.state"), record.stats.get("state.reason", 0),
                                     record.uuid in autostart, errors, error, record.text, record.entity))
        return observed, missing
    finally:
        conn.close()


def check(options: argparse.Namespace) -> Report:
    observed, missing = gather(options)
    if not observed and not missing and (options.match or options.exclude):
        return Report(Status.UNKNOWN, "no domain matches --match/--exclude")
    return evaluate(observed, missing, options)


def parser() -> CheckParser:
    p = build_parser("check-kvm-domstate", DESCRIPTION, EXAMPLES, thresholds="the number of running domains")
    p.add_argument("--expect-running", action="store_true",
                   help="every selected domain should run: shut off is CRITICAL")
    return p


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
