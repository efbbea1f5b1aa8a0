"""The wiring generated from the registry (sensu_kvm.registry, `make wiring`): the committed files are
what the registry gives, the registry and the installed entry points agree, and what the generator
writes reads back as the registry says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sensu_kvm import registry, wiring
from sensu_kvm.registry import BY_NAME, COMMANDS, Kind
from tests.conftest import BIN, run
from tests.entrypoints import commands, console_scripts

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (Kind.CHECK, Kind.METRICS, Kind.GUEST_CHECK)  # the kinds Sensu runs as checks


def generator(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The generator as `make wiring` runs it: the checkout's src/ first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "sensu_kvm.wiring", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60, check=False)


def test_the_committed_files_are_what_the_registry_gives():
    result = generator("--check")
    assert result.returncode == 0, f"run `make wiring`:\n{result.stderr}"
    assert result.stdout == result.stderr == ""


def copy_tree(target: Path) -> None:
    """What the generator reads and writes, copied from the checkout."""
    for name in wiring.outputs(ROOT):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, target / name)
    for folder in ("checks", "handlers", "src/sensu_kvm"):
        shutil.copytree(ROOT / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__"))


def test_check_names_a_stale_file_and_make_wiring_rewrites_it(tmp_path):
    copy_tree(tmp_path)
    (tmp_path / "conf.d" / "check-kvm-vcpu.json").write_text("{}\n")
    (tmp_path / "packaging" / "sensu-go" / "checks.yaml").unlink()
    result = generator("--check", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "conf.d/check-kvm-vcpu.json differs from src/sensu_kvm/registry.py: run `make wiring`",
        "packaging/sensu-go/checks.yaml differs from src/sensu_kvm/registry.py: run `make wiring`",
    ]
    result = generator(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["wrote conf.d/check-kvm-vcpu.json", "wrote packaging/sensu-go/checks.yaml"]
    assert generator("--check", str(tmp_path)).returncode == 0
    for name in ("conf.d/check-kvm-vcpu.json", "packaging/sensu-go/checks.yaml"):
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes()


def test_a_readme_without_the_markers_is_refused_and_nothing_is_written(tmp_path):
    copy_tree(tmp_path)
    (tmp_path / "README.md").write_text("# no table here\n")
    (tmp_path / "conf.d" / "check-kvm-vcpu.json").unlink()
    result = generator(str(tmp_path))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("make wiring: README.md: no <!-- commands")
    assert not (tmp_path / "conf.d" / "check-kvm-vcpu.json").exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda tree: (tree / "checks" / "vcpu.py").unlink(),
     "make wiring: registry: check-kvm-vcpu: no checks/vcpu.py for sensu_kvm.checks.vcpu\n"),
    (lambda tree: (tree / "src/sensu_kvm/tools/backup.py").write_text("def run():\n    pass\n"),
     "make wiring: registry: kvm-backup: src/sensu_kvm/tools/backup.py defines no main()\n"),
])
def test_a_command_whose_module_is_missing_is_refused(tmp_path, change, message):
    copy_tree(tmp_path)
    change(tmp_path)
    result = generator("--check", str(tmp_path))
    assert (result.returncode, result.stderr) == (2, message)


def test_the_registry_and_the_installed_entry_points_agree():
    assert console_scripts() == {c.name: c.target for c in COMMANDS}, "run `make wiring` and `make setup`"
    for command in COMMANDS:
        assert (BIN / command.name).is_file() and os.access(BIN / command.name, os.X_OK), command.name


def test_names_say_the_kind():
    prefix = {Kind.CHECK: "check-kvm-", Kind.GUEST_CHECK: "check-", Kind.METRICS: "metrics-",
              Kind.HANDLER: "handler-", Kind.TOOL: "kvm-"}
    assert len(registry.BY_NAME) == len(COMMANDS), "a name twice in the registry"
    for command in COMMANDS:
        assert command.name.startswith(prefix[command.kind]), command.name
        assert re.fullmatch(r"sensu_kvm\.(checks|handlers|tools)\.\w+:main", command.target), command.target
        assert (command.check is not None) == (command.kind in (Kind.CHECK, Kind.METRICS, Kind.GUEST_CHECK))
        assert (command.handler is not None) == (command.kind is Kind.HANDLER)


@pytest.mark.parametrize("command", commands())
def test_every_command_has_its_readme_section(command):
    headings = re.findall(r"^#{2,3} (\S+)$", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert command in headings, f"README.md has no '## {command}' section"


@pytest.mark.parametrize("name", commands(*CHECKS))
def test_a_check_reads_back_as_the_registry_says(name):
    command = BY_NAME[name]
    check = command.check
    assert check is not None and command.core_file is not None
    ((defined, core),) = json.loads((ROOT / command.core_file).read_text())["checks"].items()
    assert defined == name
    assert (core["command"], core["interval"], core["timeout"]) == (
        command.command_line(check.core_options), check.interval, check.timeout)
    assert core.get("occurrences") == check.occurrences and core.get("refresh") == check.refresh
    with (ROOT / "packaging" / "sensu-go" / "checks.yaml").open(encoding="utf-8") as stream:
        [go] = [doc for doc in yaml.safe_load_all(stream) if doc["metadata"]["name"] == command.name]
    assert go["spec"]["command"] == command.command_line(check.go_options)
    assert (go["spec"]["interval"], go["spec"]["timeout"]) == (check.interval, check.timeout)
    assert go["spec"]["subscriptions"] == [command.subscription]
    assert [(t["name"], t["value"]) for t in go["spec"].get("output_metric_tags", [])] == list(check.go_metric_tags)
    assert check.timeout > command.command_timeout, "Sensu's timeout is only a backstop above the command's -t"


@pytest.mark.parametrize("name", commands(*CHECKS))
def test_the_shipped_options_exist(name):
    """Every option the shipped definitions give is one the installed command has."""
    command = BY_NAME[name]
    check = command.check
    assert check is not None
    help_text = run(command.name, "--help").stdout
    for option in re.findall(r"(?<!\S)--?[a-z][\w-]*", f"{check.core_options} {check.go_options}"):
        assert re.search(rf"(^|[ ,]){re.escape(option)}\b", help_text, re.MULTILINE), (command.name, option)


def test_a_scalar_that_yaml_would_misread_is_quoted():
    for text in ("{{ .name }}", "a: b", "x #y", "-1", "*ref", "yes: no", "it's", "yes", "No", "null",
                 "1.5", "010", "1e3", "12:30", ".inf", "60"):
        assert yaml.safe_load(f"k: {wiring.scalar(text)}") == {"k": text}, text
    assert wiring.scalar("check-kvm-vcpu -u qemu:///system -t 10") == "check-kvm-vcpu -u qemu:///system -t 10"


def test_the_readmes_sensu_core_examples_are_the_shipped_files():
    """A JSON example in the README that defines one of our checks is exactly its conf.d file."""
    blocks = re.findall(r"^```json\n(.*?)^```$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)
    shown = [data for data in map(json.loads, blocks) if set(data) == {"checks"}]
    assert len(shown) >= 4
    for data in shown:
        ((name, body),) = data["checks"].items()
        command = BY_NAME[name]
        core_file = command.core_file if not body.get("standalone") or command.kind is Kind.GUEST_CHECK \
            else command.standalone_file
        assert core_file is not None
        assert data == json.loads((ROOT / core_file).read_text(encoding="utf-8")), f"README's {name} example"
    standalone = [data for data in shown if next(iter(data["checks"].values())).get("standalone")]
    assert standalone and len(standalone) < len(shown), "the README shows both the subscription and the standalone form"


def test_hypervisor_checks_are_subscription_checks_with_a_standalone_variant():
    """Uchiwa lists only subscription checks (/checks of Sensu 1.9 omits standalone ones): every
    hypervisor check is one, published to kvm-hypervisor, and its standalone variant in
    conf.d/standalone/ differs only in how it is scheduled."""
    for command in COMMANDS:
        if command.check is None:
            continue
        ((name, body),) = json.loads((ROOT / str(command.core_file)).read_text())["checks"].items()
        assert name == command.name
        if command.kind is Kind.GUEST_CHECK:
            assert body["standalone"] is True and "subscribers" not in body
            assert command.standalone_file is None
            continue
        assert body["subscribers"] == ["kvm-hypervisor"] and "standalone" not in body, name
        ((_, alone),) = json.loads((ROOT / str(command.standalone_file)).read_text())["checks"].items()
        assert alone.pop("standalone") is True
        assert alone == {k: v for k, v in body.items() if k != "subscribers"}, name


HELP_OPTION = re.compile(r"^  (?:(-\w)(?: \S+)?, )?(--[a-z][\w-]*)", re.MULTILINE)


@pytest.mark.parametrize("name", commands(Kind.CHECK, Kind.GUEST_CHECK))
def test_the_icinga2_arguments_are_the_options_of_its_help(name):
    """The registry declares every option of --help for the Icinga 2 CheckCommand (its short form
    too), but -h, -V and Sensu's own --per-domain*; each variable names one option."""
    command = BY_NAME[name]
    in_help = {(short, flag) for short, flag in HELP_OPTION.findall(run(name, "--help").stdout)}
    declared = {(option.short or None, option.flag) for option in command.options}
    in_help = {(short or None, flag) for short, flag in in_help if not flag.startswith(wiring.SENSU_ONLY)}
    assert in_help - {("-h", "--help"), ("-V", "--version")} == declared
    variables = [command.variable(option) for option in command.options]
    assert len(set(variables)) == len(variables)
    assert all(re.fullmatch(r"kvm_[a-z0-9_]+", v) for v in variables), variables


def test_a_shared_icinga2_variable_means_one_option_everywhere():
    """kvm_uri, kvm_state_dir...: an option with a shared variable has the same flag and takes the same
    in every command, so that a Host can set it once for all its checks."""
    seen: dict[str, tuple[str, str]] = {}
    for command in wiring.scheduled():
        for option in command.options:
            if option.shared:
                meaning = (option.flag, option.takes.value)
                assert seen.setdefault(command.variable(option), meaning) == meaning, (command.name, option)
    assert {"kvm_uri", "kvm_domain", "kvm_timeout", "kvm_verbose", "kvm_state_dir"} <= set(seen)


def test_every_check_has_its_icinga2_and_nagios_definition():
    icinga = (ROOT / wiring.ICINGA2_COMMANDS).read_text(encoding="utf-8")
    nagios = (ROOT / wiring.NAGIOS_COMMANDS).read_text(encoding="utf-8")
    for name in commands(Kind.CHECK, Kind.GUEST_CHECK):
        assert f'object CheckCommand "{name}" {{' in icinga, name
        assert re.search(rf"^    command_name +{re.escape(name)}$", nagios, re.MULTILINE), name
    for name in commands(Kind.METRICS, Kind.HANDLER, Kind.TOOL):
        assert f'"{name}"' not in icinga and f" {name}\n" not in nagios, name
