"""Sensu event parsing, on events recorded from Sensu Core 1.9 and on Sensu Go's documented format."""

import json
from pathlib import Path

import pytest

from sensu_kvm.events import MAX_DEPTH, MAX_EVENT_BYTES, EventError, depth, domain_of, parse
from sensu_kvm.handlers.remediate import recent
from sensu_kvm.remedy import Facts, decide

# Recorded from a real Sensu Core 1.9 stack (copied from the project's shared fixtures; see README there).
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "sensu-core-1.9"


def fixture(name):
    return (FIXTURES / name).read_text()


def sensu_go_event(status=2, entity="kvm1", entity_class="proxy", check="check-kvm-domstate", proxy=None):
    """An event in Sensu Go's documented format (core/v2 Event: entity, check, metadata)."""
    return json.dumps({
        "timestamp": 1795670727,
        "entity": {"entity_class": entity_class, "metadata": {"name": entity, "namespace": "default"},
                   "system": {}, "subscriptions": [f"entity:{entity}"]},
        "check": {"metadata": {"name": check, "namespace": "default"}, "command": "check-kvm-domstate --per-domain",
                  "status": status, "output": "CheckKvmDomstate CRITICAL: kvm1 shut off (crashed)\n",
                  "occurrences": 1, "history": [{"status": status, "executed": 1795670727}],
                  "proxy_entity_name": proxy or "", "state": "failing" if status else "passing"},
        "metadata": {"namespace": "default"},
    })


def test_sensu_core_create_event():
    event = parse(fixture("pipe-handler-event-create.json"))
    assert (event.flavour, event.entity, event.proxy, event.check) == ("sensu-core-1", "hv1", False, "sub_crit")
    assert (event.status, event.occurrences, event.resolved, event.source) == (2, 1, False, None)
    assert domain_of(event, None) is None
    assert domain_of(event, "kvm9") == "kvm9"


def test_sensu_core_resolve_event_of_a_proxy_client():
    event = parse(fixture("pipe-handler-event-resolve-proxy-client.json"))
    assert (event.entity, event.proxy, event.source, event.resolved) == ("kvm1", True, "kvm1", True)
    assert domain_of(event, None) == "kvm1"


def test_sensu_go_event():
    event = parse(sensu_go_event())
    assert (event.flavour, event.entity, event.proxy, event.check, event.status) == (
        "sensu-go", "kvm1", True, "check-kvm-domstate", 2)
    assert domain_of(event, None) == "kvm1"
    agent = parse(sensu_go_event(entity="hv1", entity_class="agent", proxy="kvm2"))
    assert domain_of(agent, None) == "kvm2"
    assert parse(sensu_go_event(status=0)).resolved


def test_the_real_name_sent_with_a_per_domain_result_wins_over_the_entity_form():
    """--per-domain names the client or entity in Sensu's form ('db server 1' -> 'db_server_1')
    and sends the real name as kvm_domain: the handler must act on the real one."""
    core = json.loads(fixture("pipe-handler-event-resolve-proxy-client.json"))
    core["client"]["name"] = core["check"]["source"] = "db_server_1"
    core["check"]["kvm_domain"] = "db server 1"
    assert domain_of(parse(json.dumps(core)), None) == "db server 1"
    go = json.loads(sensu_go_event(entity="db_server_1"))
    go["check"]["metadata"]["annotations"] = {"kvm_domain": "db server 1"}
    assert domain_of(parse(json.dumps(go)), None) == "db server 1"
    assert domain_of(parse(json.dumps(go)), "other") == "other"  # --domain still wins


@pytest.mark.parametrize(("raw", "message"), [
    ("", "no event on standard input"),
    ("{not json", "event is not JSON"),
    ("[1, 2]", "no 'check' object"),
    ('{"check": {}}', "neither 'client'"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": "2"}}', "check.status is missing"),
    ('{"client": {}, "check": {"name": "c", "status": 2}}', "client.name is missing"),
    ('{"entity": {"metadata": {"name": "a"}}, "check": {"status": 1}}', "check.metadata.name is missing"),
    ("x" * (MAX_EVENT_BYTES + 1), "event larger than"),
    ("[" * 100000, "nests deeper than 32 levels"),
    ('{"a":' * 100000, "nests deeper than 32 levels"),
    ('{"check": ' * 33 + "{}" + "}" * 33, "nests deeper than 32 levels"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 2, "source": 42}}', "check.source is missing or not"),
    ('{"client": {"name": 7}, "check": {"name": "c", "status": 2}}', "client.name is missing or not a string"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 2.0}}', "check.status is missing"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 1e400}}', "check.status is missing"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": -1}}', "not between 0 and 4294967295"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 2, "output": []}}', "check.output is not a string"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 2}, "occurrences": "3"}', "occurrences is not"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 2}, "action": 1}', "action is not a string"),
    ('{"client": {"name": "a\\nb"}, "check": {"name": "c", "status": 2}}', "contains control characters"),
    ('{"client": {"name": "a"}, "check": {"name": "c", "status": 2, "source": "\\udc80"}}', "is not valid UTF-8"),
    ('{"client": ["a"], "check": {"name": "c", "status": 2}}', "'client' or 'entity' is not an object"),
    ('{"entity": {"metadata": "a"}, "check": {"status": 1}}', "entity.metadata is not an object"),
    ('{"entity": {"metadata": {"name": "a"}}, "check": {"metadata": {"name": "c"}, "status": 1, '
     '"proxy_entity_name": 5}}', "check.proxy_entity_name is missing or not"),
])
def test_bad_events(raw, message):
    with pytest.raises(EventError, match=message):
        parse(raw)


@pytest.mark.parametrize(("state", "reason", "action", "why"), [
    (5, 3, "start", "shut off (crashed)"),
    (5, 6, "start", "shut off (failed)"),
    (5, 2, None, "stopped on purpose"),
    (5, 1, None, "stopped on purpose"),
    (3, 6, "resume", "paused (watchdog)"),
    (3, 0, "resume", "paused (unknown)"),
    (3, 5, None, "resuming would pause it again"),
    (3, 1, None, "an operator paused it"),
    (3, 2, None, "a job is in progress"),
    (3, 9, None, "a job is in progress"),
    (6, 1, None, "kept for inspection"),
    (1, 1, None, "running (booted)"),
])
def test_decisions(state, reason, action, why):
    got_action, got_why = decide(Facts(state, reason))  # not marked autostart
    assert got_action == action
    assert why in got_why


def test_recent_attempts():
    assert recent([100.0, 3000.0, 3500.0], 3700.0, 3600) == [3000.0, 3500.0]
    assert recent("junk", 1.0, 10) == []
    assert recent([1, "x", None], 5.0, 10) == [1]


def test_depth_skips_strings_and_allows_real_events():
    assert depth(b'{"a": "[[[[{{{{\\"[[["}') == 1
    assert depth(fixture("pipe-handler-event-create.json").encode()) < MAX_DEPTH
    deep = '{"client": {"name": "a"}, "check": {"name": "c", "status": 2}, "extra": ' + '{"x": ' * 30 + "1" + "}" * 31
    assert depth(deep.encode()) == 31 and parse(deep).entity == "a"  # deep, but within the bound


def test_optional_fields_may_be_null():
    event = parse('{"client": {"name": "a", "type": null}, "check": {"name": "c", "status": 2, "source": null, '
                  '"output": null}, "occurrences": null}')
    assert (event.source, event.output, event.occurrences, event.proxy) == (None, "", 1, False)
