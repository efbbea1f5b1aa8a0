"""One result per domain, sent beside the check's own line, so that each guest shows up as a
client of its own: to the Sensu Core 1.x client socket (a proxy client from ``source``) or to
the Sensu Go agent's events API (a proxy entity).

Both refuse a name outside ``[\\w.-]`` (ASCII): the client or entity is the domain's
``names.entity`` form, and the real name travels in the result, as ``kvm_domain``: a check
result attribute for Sensu Core, the check's annotation for Sensu Go (its agent replaces the
event's entity by its own and keeps only the entity's name, as the proxy entity name, so
labels or annotations on the entity would be lost; sensu-go agent/entity.go getEntities).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sensu_kvm.names import entity_name, visible
from sensu_kvm.output import Finding

DEFAULT_ADDRESS = {"sensu": "127.0.0.1:3030", "sensu-go": "http://127.0.0.1:3031/events"}
DOMAIN_KEY = "kvm_domain"
TTL_INTERVALS = 3  # the default ttl of a per-domain result: this many intervals of the check


class Schedule(NamedTuple):
    """How often the check runs and when Sensu should alert, carried by every per-domain result.

    A per-domain result is an event of its own proxy client, which no check definition describes
    when the check is standalone: Sensu Core's ``occurrences`` filter reads ``occurrences``,
    ``refresh`` and ``interval`` from the result itself, and its TTL monitor ``ttl``. In Sensu Go
    the ttl and interval are the event check's; occurrences and refresh go into the annotations
    that the shipped filter (and the community fatigue_check filter) read.
    """

    interval: int = 60
    ttl: int | None = None  # None: TTL_INTERVALS intervals
    occurrences: int | None = None
    refresh: int | None = None

    @property
    def seconds_to_live(self) -> int:
        return self.ttl if self.ttl is not None else TTL_INTERVALS * self.interval


def scheduled(kind: str, result: dict[str, Any], schedule: Schedule) -> dict[str, Any]:
    """``result`` (a payload) with the schedule's ttl, interval, occurrences and refresh (pure)."""
    if kind == "sensu":
        result = {**result, "interval": schedule.interval, "ttl": schedule.seconds_to_live}
        if schedule.occurrences is not None:
            result["occurrences"] = schedule.occurrences
        if schedule.refresh is not None:
            result["refresh"] = schedule.refresh
        return result
    check = {**result["check"], "interval": schedule.interval, "ttl": schedule.seconds_to_live}
    annotations = {key: str(value) for key, value in (("fatigue_check/occurrences", schedule.occurrences),
                                                      ("fatigue_check/interval", schedule.refresh))
                   if value is not None}
    if annotations:  # beside any the payload has
        metadata = check["metadata"]
        check["metadata"] = {**metadata, "annotations": {**metadata.get("annotations", {}), **annotations}}
    return {**result, "check": check}


def entity_of(kind: str, result: dict[str, Any]) -> str:
    """The proxy client (entity) a payload is about."""
    return str(result["source"] if kind == "sensu" else result["entity"]["metadata"]["name"])


def gone_payload(kind: str, check: str, entity: str, output: str, handlers: Sequence[str],
                 interval: int = 60, domain: str | None = None) -> dict[str, Any]:
    """The last result of a proxy client whose domain is gone: OK, so its event resolves, and
    without a ttl, so that neither Sensu Core's TTL monitor nor Sensu Go's keeps watching it; it
    carries the domain's real name as the other results do, when it is known (pure)."""
    real = {DOMAIN_KEY: domain} if domain else {}
    if kind == "sensu":
        result: dict[str, Any] = {"name": check, "source": entity, "status": 0, "output": output,
                                  "interval": interval, **real}
        if handlers:
            result["handlers"] = list(handlers)
        return result
    check_part: dict[str, Any] = {"metadata": {"name": check, **({"annotations": real} if real else {})},
                                  "status": 0, "output": output, "interval": interval}
    if handlers:
        check_part["handlers"] = list(handlers)
    return {"entity": {"entity_class": "proxy", "metadata": {"name": entity}}, "check": check_part}


def payload(kind: str, check: str, finding: Finding, output: str, handlers: Sequence[str]) -> dict[str, Any]:
    """The result for one domain in the format the agent expects (pure)."""
    entity = finding.entity or entity_name(finding.subject)
    if kind == "sensu":
        result: dict[str, Any] = {"name": check, "source": entity, "status": finding.status.value,
                                  "output": output, DOMAIN_KEY: finding.subject}
        if handlers:
            result["handlers"] = list(handlers)
        return result
    check_part: dict[str, Any] = {"metadata": {"name": check, "annotations": {DOMAIN_KEY: finding.subject}},
                                  "status": finding.status.value, "output": output}
    if handlers:
        check_part["handlers"] = list(handlers)
    return {"entity": {"entity_class": "proxy", "metadata": {"name": entity}}, "check": check_part}


def _send_sensu(host: str, port: int, body: bytes, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(body)
        conn.shutdown(socket.SHUT_WR)
        answer = conn.recv(64).strip()
    if answer != b"ok":
        raise OSError(f"the client socket answered {answer.decode(errors='replace')!r}")


def _send_sensu_go(url: str, body: bytes, timeout: float) -> None:
    import urllib.request  # noqa: PLC0415 (only Sensu Go results need it)

    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status >= 300:
            raise OSError(f"the agent answered HTTP {response.status}")


def send(kind: str, address: str, check: str, name: str, findings: Sequence[Finding],
         handlers: Sequence[str], timeout: float, *, schedule: Schedule | None = None,
         sent: Callable[[dict[str, Any]], None] | None = None) -> tuple[int, str | None]:
    """Send one result per finding; the number that could not be sent and the first reason.

    When the agent refuses the first connection, the rest are not tried: it is down. With
    ``schedule`` each result carries it (``scheduled``); ``sent`` is called with each result the
    agent accepted.
    """
    failed, reason = 0, None
    if kind == "sensu":
        host, _, port_text = address.rpartition(":")
        target = (host.strip("[]") or "127.0.0.1", int(port_text))
    for n, finding in enumerate(findings):
        output = f"{name} {finding.status.name}: {visible(finding.text)}\n"
        result = payload(kind, check, finding, output, handlers)
        if schedule is not None:
            result = scheduled(kind, result, schedule)
        body = json.dumps(result).encode()
        try:
            if kind == "sensu":
                _send_sensu(target[0], target[1], body, timeout)
            else:
                _send_sensu_go(address, body, timeout)
            if sent is not None:
                sent(result)
        except (OSError, ValueError) as err:
            failed += 1
            reason = reason or (getattr(err, "strerror", None) or str(err))
            if isinstance(err, ConnectionRefusedError) or "refused" in str(err).lower():
                return failed + len(findings) - n - 1, reason
    return failed, reason


def send_one(kind: str, address: str, result: dict[str, Any], timeout: float) -> None:
    """Send one prepared result; OSError or ValueError when it was not accepted."""
    body = json.dumps(result).encode()
    if kind == "sensu":
        host, _, port_text = address.rpartition(":")
        _send_sensu(host.strip("[]") or "127.0.0.1", int(port_text), body, timeout)
    else:
        _send_sensu_go(address, body, timeout)
