"""sensu_kvm.names: every consumer's form of a domain name, injective over one host's domains."""

from __future__ import annotations

import re
import uuid

import pytest

from sensu_kvm import names
from sensu_kvm.names import Names
from tests import nodes

HOSTILE = {name: nodes.domain_uuid(name) for name in nodes.HOSTILE}
MANY = {name: nodes.domain_uuid(name) for name in nodes.many(1000)}
FORMS = ("label", "graphite", "influx", "prometheus", "entity", "text")

LABEL = re.compile(r"[^\s=',|;:\"]+\Z")
GRAPHITE = re.compile(r"[\w-]+\Z")
ENTITY = re.compile(r"[A-Za-z0-9_.-]+\Z")  # Sensu Core's and Sensu Go's rule, ASCII \w


def forms(of: Names, kind: str, domains: dict[str, str]) -> dict[str, str]:
    return {name: getattr(of, kind)(name) for name in domains}


@pytest.mark.parametrize("domains", [HOSTILE, MANY], ids=["hostile", "1000"])
@pytest.mark.parametrize("kind", FORMS)
def test_each_form_is_injective_over_the_host(kind: str, domains: dict[str, str]) -> None:
    mapped = forms(Names(domains), kind, domains)
    assert len(set(mapped.values())) == len(domains), kind


@pytest.mark.parametrize("domains", [HOSTILE, MANY], ids=["hostile", "1000"])
def test_each_form_keeps_to_its_consumers_characters(domains: dict[str, str]) -> None:
    of = Names(domains)
    for name in domains:
        label, node, entity, text = of.label(name), of.graphite(name), of.entity(name), of.text(name)
        assert LABEL.match(label) and not any(ord(c) < 0x20 for c in label), (name, label)
        assert GRAPHITE.match(node) and "." not in node, (name, node)
        assert ENTITY.match(entity), (name, entity)
        assert "|" not in text and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text), (name, text)
        assert "\n" not in of.influx(name) and not of.influx(name).endswith("\\"), name
        assert "\n" not in of.prometheus(name), name


def test_names_that_need_no_change_keep_their_plain_form() -> None:
    of = Names(HOSTILE)
    assert of.label("web-01") == "web-01" and of.label("db.example.com") == "db.example.com"
    assert of.graphite("web-01") == "web-01" and of.graphite("web_1") == "web_1"
    assert of.entity("db.example.com") == "db.example.com" and of.entity("cafe") == "cafe"
    assert of.text("web 1") == "web 1" and of.text("café") == "café"
    assert of.influx("plain") == "plain" and of.prometheus('say "hi"') == 'say \\"hi\\"'


def test_a_changed_form_is_suffixed_only_when_it_would_collide() -> None:
    of = Names(HOSTILE)
    web1 = HOSTILE["web 1"].replace("-", "")[:8]
    assert of.graphite("web 1") == f"web_1-{web1}"  # beside web_1 and web.1
    assert of.graphite("web_1") == "web_1"  # unchanged, keeps it
    assert of.graphite("x,y") == "x_y"  # changed, but nothing else is x_y
    assert of.label("a=b").startswith("a_b-") and of.label("a_b") == "a_b"
    assert of.label("semi;colon:") == "semi_colon_"  # Icinga 2 reads '::' in a label as a prefix
    assert of.entity("café").startswith("cafe-")  # accents dropped, then beside cafe
    assert of.entity("日本語").startswith("___-") and of.entity("中文字").startswith("___-")
    assert of.text("tab\tname") == "tab\\tname" and of.text("p|q") == "p¦q"
    assert of.influx("trail\\") == "trail/" and of.influx("a,b=c d") == "a\\,b\\=c\\ d"


def test_forms_do_not_depend_on_order_or_on_the_selection() -> None:
    reordered = dict(reversed(list(HOSTILE.items())))
    for kind in FORMS:
        assert forms(Names(HOSTILE), kind, HOSTILE) == forms(Names(reordered), kind, HOSTILE), kind


def test_a_suffix_grows_when_even_it_is_taken() -> None:
    clash = "web_1-" + HOSTILE["web 1"].replace("-", "")[:8]
    domains = {**HOSTILE, clash: str(uuid.uuid4())}
    mapped = forms(Names(domains), "graphite", domains)
    assert mapped[clash] == clash  # a real name keeps its plain form
    assert len(set(mapped.values())) == len(domains)
    assert mapped["web 1"].startswith(clash) and mapped["web 1"] != clash


def test_names_without_a_uuid_and_unknown_names() -> None:
    of = Names({"web 1": None, "web_1": None})
    assert of.graphite("web 1").startswith("web_1-") and len(of.graphite("web 1")) == len("web_1-") + 8
    assert of.graphite("nosuch domain") == "nosuch_domain"  # not given: no suffix


@pytest.mark.parametrize(("text", "shown"), [
    ("a\x07b", "a\\x07b"), ("r\rn", "r\\rn"), ("rtl\u202eover", "rtl\\u202eover"), ("line\u2028sep", "line\\u2028sep"),
    ("nel\x85", "nel\\x85"), ("ok é 中", "ok é 中"),
])
def test_visible_shows_what_would_break_or_hide(text: str, shown: str) -> None:
    assert names.visible(text) == shown
