"""The shipped Sensu Core 1.x configuration: valid, complete, consistent and safe."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from sensu_plugin.utils import deep_merge, get_settings

from tests.conftest import BIN, run

CONFD = Path(__file__).resolve().parents[2] / "conf.d"
COMMON = sorted(p for p in CONFD.glob("*.json") if not p.name.startswith(("check-", "metrics-")))
# hypervisor: the top-level files (subscription checks, on the server and each hypervisor's client);
# standalone: the same host with conf.d/standalone/ in place of the top-level check files
ROLES = {"hypervisor": sorted(CONFD.glob("*.json")), "guest": sorted((CONFD / "guest").glob("*.json")),
         "standalone": COMMON + sorted((CONFD / "standalone").glob("*.json"))}
BUILTIN_MUTATORS = {"only_check_output", "json", "ruby_hash"}
BUILTIN_FILTERS = {"occurrences", "check_dependencies"}  # Sensu 1.x's built-in filter extensions


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", [p for files in ROLES.values() for p in files], ids=lambda p: p.name)
def test_one_top_level_key_per_file(path):
    data = load(path)
    assert isinstance(data, dict) and len(data) == 1, f"{path.name}: {list(data)}"


@pytest.mark.parametrize("role", ROLES)
def test_no_clash_after_sensus_deep_merge(role):
    """A name defined in two files would be merged into one by Sensu: every name appears once."""
    seen: dict[tuple[str, str], str] = {}
    for path in ROLES[role]:
        ((scope, body),) = load(path).items()
        names = body if scope in ("checks", "handlers", "filters", "mutators") else {"": body}
        for name in names:
            assert (scope, name) not in seen, f"{scope}.{name} in {path.name} and {seen[(scope, name)]}"
            seen[(scope, name)] = path.name


@pytest.mark.parametrize("role", ROLES)
def test_sensu_plugins_own_loader_reads_the_directory(role, monkeypatch):
    files = ROLES[role]
    monkeypatch.setenv("SENSU_CONFIG_FILES", ":".join(str(p) for p in files))
    monkeypatch.delenv("SENSU_LOADED_TEMPFILE", raising=False)
    merged: dict = {}
    for path in files:
        merged = deep_merge(merged, load(path))
    settings = get_settings()
    assert settings == merged
    assert settings["transport"]["name"] == "rabbitmq"
    assert settings["rabbitmq"]["vhost"] == "/sensu" and settings["rabbitmq"]["user"] == "sensu"
    assert settings["client"]["safe_mode"] is True
    assert settings["client"]["socket"] == {"bind": "127.0.0.1", "port": 3030}


def settings(role: str) -> dict:
    merged: dict = {}
    for path in ROLES[role]:
        merged = deep_merge(merged, load(path))
    return merged


def check_commands() -> list[tuple[str, str, dict]]:
    return [(role, name, check) for role in ROLES for name, check in settings(role).get("checks", {}).items()]


@pytest.mark.parametrize(("role", "name", "check"), check_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_check_commands_resolve_and_time_out_in_order(role, name, check):
    argv = shlex.split(check["command"])
    assert (BIN / argv[0]).is_file() and os.access(BIN / argv[0], os.X_OK), f"{argv[0]} is not installed"
    assert "-t" in argv, f"{name} sets no -t of its own"
    assert float(argv[argv.index("-t") + 1]) < check["timeout"], f"{name}: -t must be below the Sensu timeout"
    if role == "hypervisor":
        assert check["subscribers"] == ["kvm-hypervisor"] and "standalone" not in check, name
    else:
        assert check["standalone"] is True and "subscribers" not in check, name
    assert isinstance(check["interval"], int) and check["interval"] > 0
    help_text = run(argv[0], "--help").stdout
    for option in (a for a in argv[1:] if a.startswith("--")):
        assert option in help_text, f"{name}: {argv[0]} has no option {option}"


@pytest.mark.parametrize("role", ROLES)
def test_every_handler_filter_and_mutator_referenced_is_defined(role):
    conf = settings(role)
    handlers, filters = conf.get("handlers", {}), conf.get("filters", {})
    referenced = set(conf.get("client", {}).get("keepalive", {}).get("handlers", []))
    for check in conf.get("checks", {}).values():
        referenced |= set(check.get("handlers", []))
        argv = shlex.split(check["command"])
        referenced |= {argv[i + 1] for i, a in enumerate(argv) if a == "--per-domain-handler"}
    for handler in handlers.values():
        referenced |= set(handler.get("handlers", []))
        assert set(handler.get("filters", [])) <= set(filters) | BUILTIN_FILTERS
        assert handler.get("mutator", "only_check_output") in BUILTIN_MUTATORS | set(conf.get("mutators", {}))
    if role == "guest":  # the guest's client sends to the hypervisor's server, which defines them
        referenced -= set(settings("hypervisor")["handlers"])
    assert referenced <= set(handlers), f"undefined handlers: {referenced - set(handlers)}"


def test_handler_commands_are_installed():
    for name, handler in settings("hypervisor")["handlers"].items():
        if handler["type"] == "pipe" and handler["command"].split()[0].startswith("handler-kvm-"):
            assert (BIN / handler["command"].split()[0]).is_file(), name


def test_nothing_secret_is_shipped_and_services_stay_on_loopback():
    for path in [*CONFD.rglob("*.json"), *CONFD.rglob("*.example")]:
        text = path.read_text()
        for key, value in _pairs(json.loads(text)):
            if key in ("password", "pass"):
                assert "CHANGE-ME" in value, f"{path.name}: {key} is not a placeholder"
    conf = settings("hypervisor")
    assert conf["api"]["bind"] == "127.0.0.1"
    uchiwa = load(CONFD / "uchiwa" / "uchiwa.json")
    assert uchiwa["uchiwa"]["host"] == "127.0.0.1"
    assert uchiwa["sensu"][0]["port"] == conf["api"]["port"]
    assert uchiwa["sensu"][0]["user"] == conf["api"]["user"]


def _pairs(node: object) -> list[tuple[str, str]]:
    if isinstance(node, dict):
        out = [(k, v) for k, v in node.items() if isinstance(v, str)]
        for v in node.values():
            out += _pairs(v)
        return out
    if isinstance(node, list):
        return [p for v in node for p in _pairs(v)]
    return []


def test_the_guest_talks_to_the_same_transport():
    guest, hypervisor = settings("guest"), settings("hypervisor")
    for key in ("port", "vhost", "user"):
        assert guest["rabbitmq"][key] == hypervisor["rabbitmq"][key]
    assert guest["transport"] == hypervisor["transport"]
    assert "libvirt" not in json.dumps(guest)


def test_the_hypervisor_client_subscribes_to_what_the_server_publishes():
    conf = settings("hypervisor")
    published = {s for check in conf["checks"].values() for s in check.get("subscribers", [])}
    assert published == {"kvm-hypervisor"}
    assert published <= set(conf["client"]["subscriptions"])
    # safe_mode: the client runs a published check only when it defines it too; the same files do
    assert conf["client"]["safe_mode"] is True
    assert set(settings("standalone")["checks"]) == set(conf["checks"])


@pytest.mark.parametrize("role", ROLES)
def test_alerting_handlers_apply_the_occurrences_filter(role):
    """Sensu 1.x honours a check's occurrences and refresh only in its built-in occurrences filter,
    for the handlers that list it: every handler a status check alerts through does, except the
    remediation handler, which has its own filter (kvm-first-occurrences)."""
    conf = settings("hypervisor") if role == "guest" else settings(role)  # the server's handlers
    checks = {**settings(role).get("checks", {})}
    alerting = {h for check in checks.values() if check.get("type") != "metric" for h in check["handlers"]}
    alerting |= set(conf["client"]["keepalive"]["handlers"])
    assert alerting, role
    for name in alerting - {"kvm-remediate"}:
        assert "occurrences" in conf["handlers"][name].get("filters", []), name
    for check in checks.values():
        if check.get("type") != "metric":
            assert isinstance(check["occurrences"], int) and isinstance(check["refresh"], int)
            assert check["refresh"] >= check["interval"]
    assert conf["handlers"]["kvm-remediate"]["filters"] == ["kvm-first-occurrences"]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("role", ["hypervisor", "standalone"])
def test_per_domain_results_carry_the_checks_schedule(role):
    """A per-domain result is a proxy client's event, which no check definition describes when the
    check is standalone: it carries the check's interval, occurrences and refresh itself, and a
    ttl above the interval (the default, three intervals)."""
    found = 0
    for name, check in settings(role)["checks"].items():
        argv = shlex.split(check["command"])
        if "--per-domain" not in argv:
            continue
        found += 1
        assert option(argv, "--per-domain-interval") == str(check["interval"]), name
        assert option(argv, "--per-domain-occurrences") == str(check["occurrences"]), name
        assert option(argv, "--per-domain-refresh") == str(check["refresh"]), name
        assert option(argv, "--per-domain-ttl") is None  # three intervals
        assert option(argv, "--state-dir") is None  # the default, /var/cache/sensu-plugins-kvm
    assert found == 1
