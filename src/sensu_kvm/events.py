"""Sensu events, Core 1.x and Go, normalised into one shape (pure).

sensu-plugin's own mapping of Sensu Go events expects the 2.0 beta's ``entity.id`` and fails on
today's events (``entity.metadata.name``), so the handlers read both formats here.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventError(ValueError):
    """Input that is not a Sensu event we can read; the message says why, in one line."""


class Event(NamedTuple):
    flavour: str  # "sensu-core-1" or "sensu-go"
    entity: str  # the client (1.x) or entity (Go) the event belongs to
    proxy: bool  # whether that client/entity is a proxy (one per guest)
    check: str
    status: int
    output: str
    occurrences: int
    resolved: bool
    source: str | None  # check.source (1.x) or check.proxy_entity_name (Go)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise EventError(f"not a Sensu event: {what} is missing or not a string")
    return value


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError("not a Sensu event: check.status is missing or not a whole number")
    return value


def parse(raw: str | bytes) -> Event:
    """The event in ``raw`` (JSON from stdin), Core 1.x or Go; EventError when it is neither."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"event larger than {MAX_EVENT_BYTES} bytes")
    if not raw.strip():
        raise EventError("no event on standard input")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise EventError(f"event is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("check"), dict):
        raise EventError("not a Sensu event: no 'check' object")
    check = data["check"]
    if isinstance(data.get("client"), dict):  # Sensu Core 1.x
        client = data["client"]
        status = _status(check.get("status"))
        action = data.get("action", "create")
        occurrences = data.get("occurrences", 1)
        return Event(
            "sensu-core-1", _text(client.get("name"), "client.name"), client.get("type") == "proxy",
            _text(check.get("name"), "check.name"), status, str(check.get("output", "")),
            occurrences if isinstance(occurrences, int) else 1,
            action == "resolve" or status == 0, check.get("source") or None)
    if isinstance(data.get("entity"), dict):  # Sensu Go
        entity = data["entity"]
        meta = entity.get("metadata") if isinstance(entity.get("metadata"), dict) else {}
        check_meta = check.get("metadata") if isinstance(check.get("metadata"), dict) else {}
        status = _status(check.get("status"))
        occurrences = check.get("occurrences", 1)
        return Event(
            "sensu-go", _text(meta.get("name"), "entity.metadata.name"), entity.get("entity_class") == "proxy",
            _text(check_meta.get("name"), "check.metadata.name"), status, str(check.get("output", "")),
            occurrences if isinstance(occurrences, int) else 1, status == 0,
            check.get("proxy_entity_name") or None)
    raise EventError("not a Sensu event: neither 'client' (Sensu Core 1.x) nor 'entity' (Sensu Go)")


def domain_of(event: Event, given: str | None) -> str | None:
    """The domain an event is about: the one given, the check's source, or a proxy entity's name."""
    if given:
        return given
    if event.source:
        return event.source
    return event.entity if event.proxy else None
