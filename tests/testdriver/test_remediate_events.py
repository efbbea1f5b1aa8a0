"""handler-kvm-remediate acts only on the domains selected for it, whatever the event says: real
processes on libvirt's test driver (in memory: what one run changes, the next does not see), fed
the recorded Sensu Core 1.9 event reshaped, and crafted ones (a name that is not a domain, names
with spaces and quotes, forged clients, Sensu entity names of hostile domain names).

Every domain below is paused (unknown), which the handler resumes when it is selected: a run that
selects nothing must say so and open no read-write connection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sensu_kvm.names import Names
from sensu_kvm.remedy import NAMESPACE
from tests.nodes import PAUSED, domain_uuid, write
from tests.testdriver.test_least_privilege import connections
from tests.unit.test_events import fixture, sensu_go_event

DOMAINS = ["web 1", "web.1", "web_1", "it's", 'say "hi"', "café", "cafe", "other-team-db", "marked", "opted-out"]
FORMS = Names({name: domain_uuid(name) for name in DOMAINS})


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A node file of paused domains; 'marked' and 'opted-out' carry the handler's metadata element."""
    path = write(tmp_path_factory.mktemp("remedy") / "remedy.xml", dict.fromkeys(DOMAINS, PAUSED), devices=False)
    text = path.read_text()
    for name, word in (("marked", "on"), ("opted-out", "off")):
        head = f"<name>{name}</name>"
        assert head in text
        text = text.replace(head, f"{head}<metadata><remediate xmlns='{NAMESPACE}'>{word}</remediate></metadata>")
    path.write_text(text)
    return f"test://{path}"


def core_event(source: str | None, client: str = "hv1", client_type: str | None = None) -> str:
    """The recorded Sensu Core 1.9 event, as a result of check-kvm-domstate with this source."""
    event = json.loads(fixture("pipe-handler-event-create.json"))
    event["client"]["name"] = client
    if client_type:
        event["client"]["type"] = client_type
    event["check"].update({"name": "check-kvm-domstate", "status": 1,
                           "output": "CheckKvmDomstate WARNING: x paused (unknown)\n"})
    if source is not None:
        event["check"]["source"] = source
    return json.dumps(event)


def remediate(tmp_path: Path, fault_env: dict[str, str], uri: str, event: str, *args: str,
              code: int = 0) -> tuple[list[str], str]:
    return connections(tmp_path, fault_env, "handler-kvm-remediate", "-u", uri, "--state-dir", str(tmp_path / "state"),
                       *args, stdin=event, code=code)


def acted_on(said: str) -> list[str]:
    """The domains the handler resumed, from its log."""
    return re.findall(r"status \d+: (.*) is paused \(unknown\): trying to resume it", said)


def test_without_a_selection_nothing_is_touched(tmp_path, fault_env, node):
    for name in DOMAINS[:-2]:
        kinds, said = remediate(tmp_path, fault_env, node, core_event(FORMS.entity(name), name, "proxy"))
        assert kinds == ["read-only"], said
        assert f"{name}: not selected: remediation is opt-in" in said, said
        assert acted_on(said) == []


def test_the_entity_name_of_a_hostile_name_finds_that_domain_only(tmp_path, fault_env, node):
    """check-kvm-domstate --per-domain names a proxy client after the domain's Sensu entity name:
    'web 1' and 'web.1' both map to web_1 plus a UUID suffix, beside a real 'web_1'."""
    entities = {name: FORMS.entity(name) for name in DOMAINS}
    assert len(set(entities.values())) == len(DOMAINS)
    for name in ("web 1", "web.1", "web_1", "it's", 'say "hi"', "café", "cafe"):
        kinds, said = remediate(tmp_path, fault_env, node, core_event(entities[name], entities[name], "proxy"),
                                "--match", "^(web|it|say|caf)")
        assert acted_on(said) == [name], said
        assert kinds == ["read-only", "read-write"]


def test_a_domain_outside_match_is_never_touched(tmp_path, fault_env, node):
    crafted = [
        core_event("other-team-db", "other-team-db", "proxy"),  # as the check sends it
        core_event("other-team-db"),  # a host client naming it as the source
        core_event(None, "other-team-db", "proxy"),  # only the proxy client names it
        core_event("other-team-db", "web_1", "proxy"),  # a forged client: the source wins, and is not selected
        sensu_go_event(status=1, entity="other-team-db"),
        sensu_go_event(status=1, entity="hv1", entity_class="agent", proxy="other-team-db"),
    ]
    for event in crafted:
        kinds, said = remediate(tmp_path, fault_env, node, event, "--match", "^web")
        assert kinds == ["read-only"], said
        assert "other-team-db: does not match --match '^web': nothing done" in said, said
    for event in crafted[:2]:
        kinds, said = remediate(tmp_path, fault_env, node, event, "--match", ".", "--exclude", "^other-team-")
        assert (kinds, "other-team-db: excluded by --exclude '^other-team-'" in said) == (["read-only"], True), said


def test_crafted_names_never_reach_another_domain(tmp_path, fault_env, node):
    """Names that are not domains, or that look like one in another form, fail or do nothing."""
    for source in ("nope", "web", "web_1-", "web*", ".*", "web 1 ", " web 1", "Web 1", "it\\'s", "say hi",
                   "café-" + domain_uuid("café")[:8], "cafe-00000000", "../web_1"):
        kinds, said = remediate(tmp_path, fault_env, node, core_event(source, source, "proxy"), "--match", ".", code=1)
        assert kinds == ["read-only"], said
        assert len(said.splitlines()) == 1 and "and none whose Sensu entity name it is" in said, said
    for event in (core_event(None), core_event(None, "web_1"), sensu_go_event(status=1, entity="web_1",
                                                                              entity_class="agent")):
        kinds, said = remediate(tmp_path, fault_env, node, event, "--match", ".")
        assert kinds == [] and "names no domain" in said, said  # not even a connection


def test_a_name_with_spaces_or_quotes_is_the_domain_of_that_name(tmp_path, fault_env, node):
    """Sensu refuses such a source, but an event may carry it: it names that domain, selection applies."""
    for name in ("web 1", "it's", 'say "hi"'):
        kinds, said = remediate(tmp_path, fault_env, node, core_event(name, name, "proxy"), "--match", "^web")
        if name == "web 1":
            assert acted_on(said) == ["web 1"], said
        else:
            assert kinds == ["read-only"] and "does not match --match" in said, said


def test_metadata_marks_select_without_match(tmp_path, fault_env, node):
    kinds, said = remediate(tmp_path, fault_env, node, core_event("marked", "marked", "proxy"))
    assert acted_on(said) == ["marked"], said
    assert kinds == ["read-only", "read-write"]
    kinds, said = remediate(tmp_path, fault_env, node, core_event("opted-out", "opted-out", "proxy"), "--match", ".")
    assert kinds == ["read-only"] and "opted-out: its metadata says <remediate>off</remediate>" in said, said
    kinds, said = remediate(tmp_path, fault_env, node, core_event("marked", "marked", "proxy"), "--exclude", "^mark")
    assert kinds == ["read-only"] and "excluded by --exclude" in said, said
    _, said = remediate(tmp_path, fault_env, node, core_event("marked", "marked", "proxy"), "--dry-run")
    assert "marked is paused (unknown): would resume it (dry run, attempt 2 of 3)" in said, said  # the first run counted


def test_the_domain_option_selects_the_named_domain_only(tmp_path, fault_env, node):
    kinds, said = remediate(tmp_path, fault_env, node, core_event("other-team-db", "other-team-db", "proxy"),
                            "--domain", "web 1")
    assert acted_on(said) == ["web 1"], said
    kinds, said = remediate(tmp_path, fault_env, node, core_event("web 1"), "--domain", "web 1", "--match", "^x")
    assert kinds == ["read-only"] and "does not match --match" in said, said
