"""The proxy clients a check has sent per-domain results for, so that a guest that is gone resolves.

A --per-domain result makes a proxy client (Sensu Core) or proxy entity (Sensu Go) of its own for
each domain. When the domain is undefined, nothing would ever be sent for it again: its last
WARNING or CRITICAL event would stay open for good, or, with a ttl, turn into a "Last check
execution was ... ago" WARNING. So the check remembers, in a small state file under its
--state-dir (``<check>-per-domain-<crc of the URI>.json``, written by sensu_kvm.statefile), which
proxy clients it sent results to, and when one of them is no longer among the domains it judges
(undefined, or no longer selected by -d/--match/--exclude) it sends that client one last OK result
without a ttl: Sensu resolves the event and its TTL monitor stops watching the client. A last
result that could not be delivered (the agent is down) is tried again on the next run; one the
agent refused (``invalid``, HTTP 4xx) is not.

The state is read, the results are sent and the state is written under the state file's lock, so
two overlapping runs take turns; a run that cannot get the lock within a quarter of its timeout
(at most 2 s) sends its results as usual, leaves the state alone and says so. A corrupt state file
is rebuilt from this run's results (statefile's rules): what it named is lost, and a domain that
went while it was corrupt shows up as the ttl's WARNING, the fallback the ttl exists for.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sensu_kvm import names, results
from sensu_kvm.errors import KvmError
from sensu_kvm.output import Finding
from sensu_kvm.statefile import StateFile

MAX_ENTITY = 1024  # characters: longer is no name a check sent


def _known(stored: Mapping[str, Any], target: str) -> dict[str, str]:
    """The proxy clients (name -> domain name) the state file lists for this agent and address.

    What is in the file is input: an entry that is not a string name with a string domain name is
    dropped, as a corrupt file is."""
    entries = stored.get(target)
    if not isinstance(entries, dict):
        return {}
    known = {}
    for entity, entry in entries.items():
        if (isinstance(entity, str) and 0 < len(entity) <= MAX_ENTITY and entity.isprintable()
                and isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            known[entity] = entry["name"]
    return known


def refused(err: Exception) -> bool:
    """Whether the agent answered and refused the result (invalid, HTTP 4xx): sending it again
    would only be refused again, so it is not kept for the next run."""
    text = str(err)
    return "answered" in text or text.startswith("HTTP Error")


def gone_output(check_name: str, domain: str) -> str:
    return (f"{check_name} OK: {names.visible(domain)} is no longer defined or no longer selected: "
            "no more results for this proxy client\n")


class Outcome:
    """What one run sent: the number of results not sent and the first reason, and a note."""

    def __init__(self) -> None:
        self.failed = 0
        self.reason: str | None = None
        self.note = ""
        self.resolved: list[str] = []  # proxy clients that got their last result
        self.tried = 0  # results this run tried to send: one per finding, one per guest that is gone

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.reason = self.reason or reason


def deliver(options: argparse.Namespace, prog: str, check_name: str, findings: Sequence[Finding],
            directory: str, uri: str, timeout: float) -> Outcome:
    """Send the per-domain results, and a last OK result to every proxy client whose domain is gone."""
    kind = options.per_domain
    address = options.per_domain_address or results.DEFAULT_ADDRESS[kind]
    handlers = options.per_domain_handler
    schedule = results.Schedule(options.per_domain_interval, options.per_domain_ttl,
                                options.per_domain_occurrences, options.per_domain_refresh)
    current = {results.entity_of(kind, results.payload(kind, prog, f, "", handlers)): f.subject for f in findings}
    target = f"{kind} {address}"
    outcome = Outcome()
    outcome.tried = len(findings)
    accepted: dict[str, str] = {}
    done = False

    def send_current() -> None:
        nonlocal done
        done = True

        def sent(result: dict[str, Any]) -> None:
            entity = results.entity_of(kind, result)
            accepted[entity] = current.get(entity, entity)

        failed, reason = results.send(kind, address, prog, check_name, findings, handlers, timeout,
                                      schedule=schedule, sent=sent)
        outcome.failed, outcome.reason = failed, reason

    state = StateFile(directory, f"{prog}-per-domain", uri)
    try:
        with state.locked(wait=timeout):
            stored = state.load()
            known = _known(stored, target)
            send_current()
            if known or accepted:
                keep = {e: n for e, n in known.items() if e in current}  # not sent now, but still there
                keep.update(accepted)
                for entity, domain in sorted(known.items()):
                    if entity in current:
                        continue
                    outcome.tried += 1
                    last = results.gone_payload(kind, prog, entity, gone_output(check_name, domain), handlers,
                                                schedule.interval, domain)
                    try:
                        results.send_one(kind, address, last, timeout)
                        outcome.resolved.append(entity)
                    except (OSError, ValueError) as err:
                        outcome.fail(getattr(err, "strerror", None) or str(err))
                        if not refused(err):
                            keep[entity] = domain  # the agent is down or slow: tried again next run
                now = time.time()
                stored = {t: v for t, v in stored.items() if t != target and isinstance(v, dict)}
                if keep:
                    stored[target] = {e: {"name": n, "t": now} for e, n in sorted(keep.items())}
                state.save(stored)
    except KvmError as err:  # locked by another run, or a state directory that cannot be written
        if not done:
            send_current()
        outcome.note = f"; gone domains not resolved this run: {err}"
    return outcome
