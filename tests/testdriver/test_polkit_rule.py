"""packaging/polkit/60-sensu-plugins-kvm.rules, run under duktape (the JavaScript engine polkitd 121+
runs rules in; Debian 12 ships polkitd 122) with polkit's rule interface.

polkit calls every function given to ``polkit.addRule`` with the action
(``id``, ``lookup(key)``) and the subject (``user``); libvirt's polkit access driver names each API
permission ``org.libvirt.api.OBJECT.PERMISSION`` and passes ``connect_driver`` and ``domain_name``
for a domain. The matrix below is what the rule must answer; a real polkitd with libvirtd's
access driver does not run on this machine (no D-Bus, no systemd).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULE = Path(__file__).resolve().parents[2] / "packaging" / "polkit" / "60-sensu-plugins-kvm.rules"
DEFAULT_SELECTION = "var SELECTED_DOMAINS = /^/;"

# polkit's rule interface, enough of it for the rule: polkit.Result, polkit.addRule, polkit.log
PRELUDE = """
var polkit = {Result: {YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", AUTH_SELF: "auth_self", NOT_HANDLED: null},
              rules: [], addRule: function (f) { this.rules.push(f); }, log: function () {}};
"""
# ask every rule in order, as polkitd does: the first answer that is not NOT_HANDLED wins
ASK = """
var answers = CASES.map(function (c) {
    var action = {id: c[1], lookup: function (key) { return c[2][key]; }};
    for (var i = 0; i < polkit.rules.length; i++) {
        var answer = polkit.rules[i](action, {user: c[0]});
        if (answer !== null && answer !== undefined) { return answer; }
    }
    return null;
});
print(JSON.stringify({rules: polkit.rules.length, answers: answers}));
"""

DUK = shutil.which("duk") or "duk"  # Debian's duktape: the engine polkitd 121+ runs rules in


def answers(source: str, cases: list[tuple[str, str, dict[str, str]]], tmp_path: Path) -> list[str | None]:
    script = tmp_path / "rule-under-test.js"
    script.write_text(PRELUDE + source + "\nvar CASES = " + json.dumps(cases) + ";\n" + ASK)
    result = subprocess.run([DUK, str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["rules"] == 1
    return out["answers"]


def domain(name: str, driver: str = "QEMU") -> dict[str, str]:
    return {"connect_driver": driver, "domain_name": name, "domain_uuid": "8e1f5c3a-0000-4000-8000-000000000001"}


API = "org.libvirt.api."
QEMU = {"connect_driver": "QEMU"}
WRITES = ["write", "stop", "delete", "save", "snapshot", "migrate", "core-dump", "read-secure", "open-graphics",
          "open-device", "send-input", "set-password", "fs-freeze", "init-control", "reset", "hibernate", "checkpoint",
          "block-write", "mem-read", "pm-control", "inject-nmi", "screenshot"]

# (user, action id, details, answer with the shipped selection, answer with /^(web|db)[0-9]+$/)
MATRIX: list[tuple[str, str, dict[str, str], str | None, str | None]] = [
    ("sensu", "org.libvirt.unix.manage", {}, "yes", "yes"),
    ("sensu", "org.libvirt.unix.monitor", {}, None, None),
    ("sensu", API + "connect.getattr", QEMU, None, None),
    ("sensu", API + "connect.read", QEMU, None, None),
    ("sensu", API + "connect.search-domains", QEMU, None, None),
    ("sensu", API + "domain.getattr", domain("web1"), None, None),
    ("sensu", API + "domain.read", domain("other"), None, None),
    ("sensu", API + "domain.start", domain("web1"), "yes", "yes"),
    ("sensu", API + "domain.suspend", domain("db12"), "yes", "yes"),
    ("sensu", API + "domain.start", domain("test-scratch"), "yes", "no"),
    ("sensu", API + "domain.suspend", domain("web1x"), "yes", "no"),
    ("sensu", API + "domain.start", domain("web1", "LXC"), "no", "no"),
    ("sensu", API + "domain.start", QEMU, "no", "no"),  # no domain name given: refused
    ("sensu", API + "connect.write", QEMU, "no", "no"),
    ("sensu", API + "storage-vol.delete", {"connect_driver": "storage"}, "no", "no"),
    ("sensu", API + "network.stop", {"connect_driver": "network"}, "no", "no"),
    ("sensu", API + "secret.read-secure", {"connect_driver": "secret"}, "no", "no"),
    ("sensu", "org.freedesktop.login1.reboot", {}, None, None),
    ("nagios", API + "domain.start", domain("web1"), None, None),
    ("root", "org.libvirt.unix.manage", {}, None, None),
] + [("sensu", API + f"domain.{perm}", domain("web1"), "no", "no") for perm in WRITES]


def test_the_rule_is_ecmascript_5():
    """polkit 121+ runs rules in duktape (ECMAScript 5.1): no arrow functions, let/const, classes
    or template strings, and the whole rule in one function scope (rules files share a global)."""
    text = re.sub(r"//[^\n]*", "", RULE.read_text())
    assert not re.search(r"=>|\blet\b|\bconst\b|\bclass\b|`", text), text
    assert text.strip().startswith("(function () {") and text.strip().endswith("})();")
    assert text.count(DEFAULT_SELECTION) == 1


@pytest.mark.parametrize("selection", ["shipped", "narrowed"])
def test_the_rule_grants_exactly_start_and_resume_on_selected_domains(selection, tmp_path):
    source = RULE.read_text()
    if selection == "narrowed":  # the edit the file's comment tells an operator to make
        source = source.replace(DEFAULT_SELECTION, "var SELECTED_DOMAINS = /^(web|db)[0-9]+$/;")
    cases = [(user, action, details) for user, action, details, _, _ in MATRIX]
    wanted = [shipped if selection == "shipped" else narrowed for _, _, _, shipped, narrowed in MATRIX]
    got = answers(source, cases, tmp_path)
    assert [(c[1], c[2].get("domain_name"), g) for c, g in zip(cases, got)] == \
        [(c[1], c[2].get("domain_name"), w) for c, w in zip(cases, wanted)]
