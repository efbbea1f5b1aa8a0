"""Stand-ins for Sensu Core 1.9's client socket and server, which cannot be installed here (no
Debian package; the gems need a Ruby and an EventMachine this machine lacks).

Each follows Sensu's own source, cited per function:

* ``check_result_errors`` -- what the client socket refuses (lib/sensu/client/socket.rb
  ``process_check_result`` with lib/sensu/client/validators/check.rb, whose rules are
  sensu-settings' lib/sensu/settings/validators/check.rb): name ``\\A[\\w\\.-]+\\z``, source
  ``^[\\w\\.-]+$`` (Ruby: ASCII ``\\w``, line anchors), handler(s) strings, ttl an integer above 0,
  output a string, status an integer;
* ``ClientSocket`` -- the TCP socket on which a check sends results: one JSON object, answered
  ``ok`` or ``invalid``; an accepted result is published to the ``results`` direct exchange as
  ``{"client": <client name>, "check": <result + issued>}``;
* ``Server`` -- lib/sensu/server/process.rb: ``process_check_result`` (the client from ``source``,
  a proxy client made just in time; the server's definition merged into a result that is not
  standalone), ``store_check_result`` and ``check_history`` in Redis (``history:<client>:<check>``,
  21 statuses), ``create_event`` (occurrences, watermark, action create/resolve),
  ``update_event_registry`` (``events:<client>``), then per handler lib/sensu/server/filter.rb
  ``filter_event`` (handle, flapping, severities, filters) with the built-in ``occurrences`` filter
  of sensu-extensions-occurrences (lib/sensu/extensions/occurrences.rb).

What the stand-ins leave out is not used by the shipped configuration: subdue, silencing (no
silenced entries exist, so ``silenced`` is false), flap detection (no thresholds set), aggregates,
signatures, extensions other than ``occurrences``, mutators.
"""

from __future__ import annotations

import json
import operator
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis

SEVERITIES = ["ok", "warning", "critical", "unknown"]  # lib/sensu/constants.rb
NAME = re.compile(r"\A[A-Za-z0-9_.-]+\Z")  # Ruby's \w is ASCII unless told otherwise
SOURCE = re.compile(r"^[A-Za-z0-9_.-]+$", re.MULTILINE)  # ^ and $ match at line ends in Ruby


def check_result_errors(check: Any) -> list[str]:
    """Why Sensu 1.9's client socket answers ``invalid`` to this result (empty: it answers ``ok``)."""
    if not isinstance(check, dict):
        return ["not a JSON object"]
    errors = []
    name = check.get("name")
    if not isinstance(name, str):
        errors.append("check name must be a string")
    elif not NAME.search(name):
        errors.append("check name cannot contain spaces or special characters")
    if check.get("source") is not None and check["source"] is not False:
        source = check["source"]
        if not isinstance(source, str):
            errors.append("check source must be a string")
        elif not SOURCE.search(source):
            errors.append("check source cannot contain spaces or special characters")
    if "handler" in check and not isinstance(check["handler"], str):
        errors.append("check handler must be a string")
    if "handlers" in check:
        if not isinstance(check["handlers"], list):
            errors.append("check handlers must be an array")
        elif not all(isinstance(h, str) for h in check["handlers"]):
            errors.append("check handlers must each be a string")
    if check.get("ttl") is not None and check["ttl"] is not False:  # Ruby: 0 is true, so a ttl of 0 is refused
        ttl = check["ttl"]
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            errors.append("check ttl must be an integer")
        elif ttl <= 0:
            errors.append("check ttl must be greater than 0")
    if not isinstance(check.get("output"), str):
        errors.append("check output must be a string")
    if not isinstance(check.get("status", 0), int):
        errors.append("check status must be an integer")
    return errors


class ClientSocket:
    """The client socket of a Sensu 1.9 client named ``client``; accepted results go to ``publish``."""

    def __init__(self, client: str, publish: Callable[[dict[str, Any]], None], port: int = 0) -> None:
        self.client = client
        self.publish = publish
        self.refused: list[tuple[Any, list[str]]] = []
        self.accepted: list[dict[str, Any]] = []
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while chunk := conn.recv(65536):
                        data += chunk
                except OSError:
                    pass
                conn.sendall(self.answer(data))

    def answer(self, data: bytes) -> bytes:
        try:
            check = json.loads(data)
        except ValueError:
            self.refused.append((data, ["not JSON"]))
            return b"invalid"
        if isinstance(check, dict):
            check.setdefault("status", 0)
            check.setdefault("executed", int(time.time()))
        errors = check_result_errors(check)
        if errors:
            self.refused.append((check, errors))
            return b"invalid"
        self.accepted.append(check)
        self.publish({"client": self.client, "check": {**check, "issued": int(time.time())}})
        return b"ok"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()


def publisher(channel: Any) -> Callable[[dict[str, Any]], None]:
    """Publish a result as sensu-transport does: the "results" direct exchange, empty routing key."""
    channel.exchange_declare("results", exchange_type="direct", durable=False, auto_delete=False)

    def publish(result: dict[str, Any]) -> None:
        channel.basic_publish("results", "", json.dumps(result).encode())
    return publish


def occurrences_filtered(event: dict[str, Any]) -> bool:
    """sensu-extensions-occurrences ``event_filtered?``: True when the event is filtered out."""
    check = event["check"]
    occurrences = check.get("occurrences", 1)
    refresh = check.get("refresh", 1800)
    if isinstance(occurrences, int) and isinstance(refresh, int):
        if event["occurrences"] < occurrences:
            return True  # "not enough occurrences"
        if event["occurrences"] > occurrences and event["action"] == "create":
            interval = check.get("interval", 60)
            count = int(refresh / interval)
            if not (count == 0 or (event["occurrences"] - occurrences) % count == 0):
                return True  # "only handling every #{count} occurrences"
    return False


COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


def _eval(expression: str, value: Any) -> bool:
    """The ``eval:`` attribute values the shipped filters use: ``value <op> <integer>`` (other Ruby
    expressions are not supported here, and fail the test that meets them)."""
    match = re.fullmatch(r"eval:\s*value\s*(<=|<|>=|>|==)\s*(-?\d+)\s*", expression)
    if match is None:
        raise NotImplementedError(f"filter expression {expression!r}")
    return COMPARISONS[match[1]](value, int(match[2]))


def attributes_match(wanted: dict[str, Any], actual: dict[str, Any]) -> bool:
    """filter.rb ``filter_attributes_match?``."""
    for key, one in wanted.items():
        two = actual.get(key)
        if one == two:
            continue
        if isinstance(one, dict) and isinstance(two, dict) and attributes_match(one, two):
            continue
        if str(one) == str(two):
            continue
        if isinstance(one, str) and one.startswith("eval:") and _eval(one, two):
            continue
        return False
    return True


def handle_severity(handler: dict[str, Any], event: dict[str, Any]) -> bool:
    """filter.rb ``handle_severity?``: a resolve passes when the history since the last OK holds
    one of the handler's severities."""
    if "severities" not in handler:
        return True
    if event["action"] == "resolve":
        for status in list(reversed(event["check"]["history"]))[1:]:
            if int(status) == 0:
                return False
            if (SEVERITIES[int(status)] if int(status) < 4 else "unknown") in handler["severities"]:
                return True
        return False
    status = event["check"]["status"]
    return (SEVERITIES[status] if 0 <= status < 4 else "unknown") in handler["severities"]


def filter_event(settings: dict[str, Any], handler: dict[str, Any], event: dict[str, Any]) -> bool:
    """filter.rb ``filter_event``: True when the handler runs for the event."""
    if event["check"].get("handle") is False:
        return False
    if event["action"] == "flapping" and not handler.get("handle_flapping"):
        return False
    if not handle_severity(handler, event):
        return False
    names = handler.get("filters", [handler["filter"]] if "filter" in handler else [])
    for name in names:
        if name in settings.get("filters", {}):
            definition = settings["filters"][name]
            matched = attributes_match(definition["attributes"], event)
            if (matched if definition.get("negate") else not matched):
                return False
        elif name == "occurrences":
            if occurrences_filtered(event):
                return False
        else:
            raise NotImplementedError(f"filter {name!r}")  # sensu would log "unknown filter" and filter it
    return True


class Server:
    """sensu-server's result processing, on a real Redis, with the settings of a conf.d.

    ``handled`` lists, per handler name, each event that reached it (as the pipe handler reads it).
    """

    def __init__(self, settings: dict[str, Any], store: redis.Redis) -> None:
        self.settings = settings
        self.redis = store
        self.handled: dict[str, list[dict[str, Any]]] = {}

    def retrieve_client(self, result: dict[str, Any]) -> dict[str, Any]:
        key = result["check"].get("source") or result["client"]
        stored = self.redis.get(f"client:{key}")
        if stored is not None:
            return dict(json.loads(stored))
        client = {"name": key, "address": "unknown", "subscriptions": [f"client:{key}"], "keepalives": False,
                  "version": "1.9.0", "timestamp": int(time.time())}
        if result["check"].get("source"):
            client["type"] = "proxy"
        self.redis.set(f"client:{key}", json.dumps(client))
        self.redis.sadd("clients", key)
        return client

    def process_check_result(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """One result off the transport; the event it made, if any."""
        client = self.retrieve_client(result)
        checks = self.settings.get("checks", {})
        name = result["check"]["name"]
        if name in checks and not result["check"].get("standalone"):
            check = {**checks[name], **result["check"]}
        else:
            check = dict(result["check"])
        check.setdefault("type", "standard")
        if check.get("source"):
            check["origin"] = result["client"]
        if name in checks and client.get("type") == "proxy":
            check["command"] = checks[name]["command"]
        self.store_check_result(client, check)
        event = self.create_event(client, check)
        if self.update_event_registry(event):
            self.process_event(event)
        return event

    def store_check_result(self, client: dict[str, Any], check: dict[str, Any]) -> None:
        key = f"{client['name']}:{check['name']}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(f"result:{client['name']}", check["name"])
        pipe.set(f"result:{key}", json.dumps(check))
        if check.get("ttl"):
            pipe.sadd("ttl", key)
        pipe.rpush(f"history:{key}", check["status"])
        pipe.ltrim(f"history:{key}", -21, -1)
        if check["status"] == 0:
            pipe.set(f"history:{key}:last_ok", check.get("executed", int(time.time())))
        pipe.execute()

    def create_event(self, client: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
        key = f"history:{client['name']}:{check['name']}"
        history = [h.decode() if isinstance(h, bytes) else str(h) for h in self.redis.lrange(key, -21, -1)]
        last_ok = self.redis.get(f"{key}:last_ok")
        check = {**check, "history": history, "total_state_change": 0}
        stored_json = self.redis.hget(f"events:{client['name']}", check["name"])
        stored = json.loads(stored_json) if stored_json else None
        now = int(time.time())
        event: dict[str, Any] = {"id": str(uuid.uuid4()), "client": client, "check": check, "occurrences": 1,
                                 "occurrences_watermark": 1, "last_ok": int(last_ok) if last_ok else None,
                                 "action": "create", "timestamp": now}
        if stored:
            event["id"] = stored["id"]
            event["last_state_change"] = stored.get("last_state_change")
            event["occurrences"] = stored["occurrences"]
            event["occurrences_watermark"] = stored.get("occurrences_watermark") or event["occurrences"]
        if check["status"] != 0:
            if len(history) >= 2 and history[-1] == history[-2]:
                event["occurrences"] += 1
                event["occurrences_watermark"] = max(event["occurrences_watermark"], event["occurrences"])
            else:
                event["occurrences"] = 1
                event["last_state_change"] = now
        elif stored:
            event["last_state_change"] = now
            event["action"] = "resolve"
        event["silenced"], event["silenced_by"] = False, []
        return event

    def update_event_registry(self, event: dict[str, Any]) -> bool:
        key = f"events:{event['client']['name']}"
        if event["check"]["status"] != 0:
            self.redis.hset(key, event["check"]["name"], json.dumps(event))
            return True
        if event["action"] == "resolve" and event["check"].get("auto_resolve") is not False:
            self.redis.hdel(key, event["check"]["name"])
            return True
        return event["check"].get("type") == "metric"

    def process_event(self, event: dict[str, Any]) -> None:
        check = event["check"]
        names = check.get("handlers") or ([check["handler"]] if "handler" in check else ["default"])
        for name in names:
            handler = self.settings["handlers"][name]
            if filter_event(self.settings, handler, event):
                self.handled.setdefault(name, []).append(event)

    def stale(self, now: float) -> list[str]:
        """process.rb ``create_check_ttl_results``: the results (``client:check``) whose ttl has run out
        at ``now``, for which the server would publish "Last check execution was ... ago" (status 1)."""
        out = []
        for key in sorted(k.decode() if isinstance(k, bytes) else str(k) for k in self.redis.smembers("ttl")):
            stored = self.redis.get(f"result:{key}")
            if stored is None:
                continue
            check = json.loads(stored)
            live = check.get("ttl") and check.get("executed") and not check.get("force_resolve")
            if live and now - check["executed"] >= check["ttl"]:
                out.append(key)
        return out

    def consume(self, channel: Any, queue: str, count: int, timeout: float = 10) -> Iterator[dict[str, Any] | None]:
        """Process ``count`` results from ``queue``, acknowledging each as sensu-server does."""
        for method, _properties, body in channel.consume(queue, inactivity_timeout=timeout):
            assert method is not None, f"no result arrived on {queue!r} in {timeout} s"
            channel.basic_ack(method.delivery_tag)
            yield self.process_check_result(json.loads(body))
            count -= 1
            if count == 0:
                break
        channel.cancel()


def results_queue(channel: Any) -> str:
    """A queue bound to the results exchange, as sensu-server's ``setup_results`` subscribes."""
    channel.exchange_declare("results", exchange_type="direct", durable=False, auto_delete=False)
    queue = str(channel.queue_declare("", exclusive=True).method.queue)  # kept between consumers
    channel.queue_bind(queue, "results", routing_key="")
    return queue

