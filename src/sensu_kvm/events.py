"""Sensu events, Core 1.x and Go, normalised into one shape (pure).

sensu-plugin's own mapping of Sensu Go events expects the 2.0 beta's ``entity.id`` and fails on
today's events (``entity.metadata.name``), so the handlers read both formats here.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, NamedTuple

from sensu_kvm.argtypes import name_check

MAX_EVENT_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32  # a Sensu event nests about 6 deep (Go: entity.system.network.interfaces...)


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
    domain: str | None = None  # the domain's real name that --per-domain sends (results.DOMAIN_KEY)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def depth(raw: bytes) -> int:
    """How deep the JSON in ``raw`` nests, counted without parsing it (strings skipped), so that a
    hostile event ('[' x 100000) is refused before the parser recurses."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _name(value: Any, what: str) -> str:
    """A name that the handler logs and may look a domain up by: a non-empty string, valid UTF-8,
    no control characters (JSON's \\u escapes can carry lone surrogates and line breaks)."""
    if not isinstance(value, str) or not value:
        raise EventError(f"not a Sensu event: {what} is missing or not a string")
    problem = name_check(value, what)
    if problem:
        raise EventError(f"not a Sensu event: {problem}")
    return value


def _optional_name(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    return _name(value, what)


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError("not a Sensu event: check.status is missing or not a whole number")
    if not 0 <= value < 2**32:  # an exit code (Sensu Core) or a uint32 (Sensu Go)
        raise EventError(f"not a Sensu event: check.status {value} is not between 0 and 4294967295")
    return value


def _count(value: Any, what: str) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EventError(f"not a Sensu event: {what} is not a whole number >= 0")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError(f"not a Sensu event: {what} is not an object")
    return value


def _word(value: Any, what: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise EventError(f"not a Sensu event: {what} is not a string")
    return value


def _output(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EventError("not a Sensu event: check.output is not a string")
    return value


def parse(raw: str | bytes, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """The event in ``raw`` (JSON from stdin), Core 1.x or Go; EventError when it is neither."""
    if len(raw) > max_bytes:
        raise EventError(f"event larger than {max_bytes} bytes")
    if not raw.strip():
        raise EventError("no event on standard input")
    data_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if depth(data_bytes) > MAX_DEPTH:
        raise EventError(f"event nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise EventError(f"event nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:
        raise EventError(f"event is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("check"), dict):
        raise EventError("not a Sensu event: no 'check' object")
    check = data["check"]
    if isinstance(data.get("client"), dict):  # Sensu Core 1.x
        client = data["client"]
        status = _status(check.get("status"))
        action = _word(data.get("action"), "action", "create")
        return Event(
            "sensu-core-1", _name(client.get("name"), "client.name"), _word(client.get("type"), "client.type") == "proxy",
            _name(check.get("name"), "check.name"), status, _output(check.get("output")),
            _count(data.get("occurrences"), "occurrences"),
            action == "resolve" or status == 0, _optional_name(check.get("source"), "check.source"),
            _optional_name(check.get("kvm_domain"), "check.kvm_domain"))
    if isinstance(data.get("entity"), dict):  # Sensu Go
        entity = data["entity"]
        meta = _object(entity.get("metadata"), "entity.metadata")
        check_meta = _object(check.get("metadata"), "check.metadata")
        status = _status(check.get("status"))
        return Event(
            "sensu-go", _name(meta.get("name"), "entity.metadata.name"),
            _word(entity.get("entity_class"), "entity.entity_class") == "proxy",
            _name(check_meta.get("name"), "check.metadata.name"), status, _output(check.get("output")),
            _count(check.get("occurrences"), "check.occurrences"), status == 0,
            _optional_name(check.get("proxy_entity_name"), "check.proxy_entity_name"),
            _optional_name(_object(check_meta.get("annotations"), "check.metadata.annotations").get("kvm_domain"),
                           "check.metadata.annotations.kvm_domain"))
    if "client" in data or "entity" in data:
        raise EventError("not a Sensu event: 'client' or 'entity' is not an object")
    raise EventError("not a Sensu event: neither 'client' (Sensu Core 1.x) nor 'entity' (Sensu Go)")


def domain_of(event: Event, given: str | None) -> str | None:
    """The domain an event is about: the one given, the real name --per-domain sent with the
    result (the client or entity name is only its Sensu form), the check's source, or a proxy
    entity's name."""
    if given:
        return given
    if event.domain:
        return event.domain
    if event.source:
        return event.source
    return event.entity if event.proxy else None
