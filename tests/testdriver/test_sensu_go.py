"""packaging/sensu-go: the Sensu Go resources, and the runtime asset that build-asset.sh makes.

No Sensu Go binary here: the YAML is checked against Sensu Go 6's core/v2 resource schema as
documented (the fields each type takes, the metric formats, the built-in filters), and what it
references is checked against this tree. The asset is built, unpacked into a temporary directory
and its bin/ wrappers are run with only that directory on PATH, under this venv's Python (it has
libvirt's binding and psutil, which the asset does not bundle), against libvirt's test driver.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sensu_kvm.registry import BY_NAME, Kind
from tests import sensu1
from tests.conftest import BIN
from tests.entrypoints import commands, console_scripts
from tests.perfdata_consumers import sensu_go, text_lines

ROOT = Path(__file__).resolve().parents[2]
SENSU_GO = ROOT / "packaging" / "sensu-go"
BUILD = SENSU_GO / "build-asset.sh"
PYTHON = BIN / "python"  # has libvirt and psutil: stands for the host's python3
ASSET = "sensu-plugins-kvm"
DEFAULT_URI = "test:///default"

# Sensu Go 6, api_version core/v2: the spec fields of each resource type used here.
SPEC_FIELDS = {
    "Asset": {"builds", "url", "sha512", "filters", "headers"},
    "CheckConfig": {
        "command", "handlers", "high_flap_threshold", "interval", "cron", "low_flap_threshold", "publish",
        "runtime_assets", "subscriptions", "proxy_entity_name", "check_hooks", "stdin", "subdue", "ttl",
        "timeout", "round_robin", "output_metric_format", "output_metric_handlers", "output_metric_tags",
        "output_metric_thresholds", "env_vars", "proxy_requests", "secrets", "scheduler", "pipelines",
    },
    "Handler": {"type", "command", "timeout", "env_vars", "filters", "mutator", "runtime_assets", "handlers",
                "socket", "secrets"},
    "EventFilter": {"action", "expressions", "runtime_assets"},
}
METADATA_FIELDS = {"name", "namespace", "labels", "annotations", "created_by"}
BUILD_FIELDS = {"url", "sha512", "filters", "headers"}
METRIC_FORMATS = {"nagios_perfdata", "graphite_plaintext", "influxdb_line", "opentsdb_line", "prometheus_text"}
BUILTIN_FILTERS = {"is_incident", "not_silenced", "has_metrics"}
EXTERNAL_HANDLERS = {"default"}  # the only handler these files may name without defining it
SYSTEM_COMMANDS = {"logger"}  # util-linux (bsdutils, Essential in Debian)
NAME = re.compile(r"[\w.\-]+")  # Sensu Go resource names
# metrics-kvm --format -> the output_metric_format that parses it
FORMAT_OF = {"graphite": "graphite_plaintext", "influxdb": "influxdb_line", "prometheus": "prometheus_text"}


def check_commands() -> list[str]:
    """The installed commands that Sensu runs as checks: every check, metrics and guest check."""
    return commands(Kind.CHECK, Kind.METRICS, Kind.GUEST_CHECK)


def project_version() -> str:
    tree = ast.parse((ROOT / "src" / "sensu_kvm" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError("no __version__ in src/sensu_kvm/__init__.py")


def tarball_name() -> str:
    return f"sensu-plugins-kvm-{project_version()}-linux-amd64.tar.gz"


def documents() -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    for path in sorted(SENSU_GO.glob("*.yaml")):
        with path.open(encoding="utf-8") as stream:
            docs.extend((path.name, doc) for doc in yaml.safe_load_all(stream) if doc is not None)
    return docs


def resources(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc["spec"] for _, doc in documents() if doc.get("type") == kind}


def option_value(argv: list[str], *names: str) -> str | None:
    """The value of the last of these options in argv (``-t 10``, ``--timeout=10``)."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


# ---- the YAML ------------------------------------------------------------------------------------


def test_the_three_files_exist_and_parse():
    assert {p.name for p in SENSU_GO.glob("*.yaml")} >= {"asset.yaml", "checks.yaml", "handlers.yaml"}
    for path in SENSU_GO.glob("*.yaml"):
        with path.open(encoding="utf-8") as stream:
            docs = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
        assert docs, f"{path.name} holds no resource"
        assert all(isinstance(doc, dict) for doc in docs), path.name


def test_every_document_is_a_core_v2_resource():
    seen = set()
    for file, doc in documents():
        where = f"{file}: {doc.get('type')}/{doc.get('metadata', {}).get('name')}"
        assert set(doc) == {"type", "api_version", "metadata", "spec"}, where
        assert doc["type"] in SPEC_FIELDS, where
        assert doc["api_version"] == "core/v2", where
        assert set(doc["metadata"]) <= METADATA_FIELDS, where
        assert isinstance(doc["metadata"]["name"], str), where
        assert NAME.fullmatch(doc["metadata"]["name"]), where
        assert doc["metadata"].get("namespace", "default") == "default", where
        assert isinstance(doc["spec"], dict), where
        assert set(doc["spec"]) <= SPEC_FIELDS[doc["type"]], f"{where}: unknown spec fields"
        assert (doc["type"], doc["metadata"]["name"]) not in seen, f"{where} defined twice"
        seen.add((doc["type"], doc["metadata"]["name"]))


def test_a_check_config_for_every_check_and_metrics_command():
    commands = {shlex.split(spec["command"])[0] for spec in resources("CheckConfig").values()}
    checks = set(check_commands())
    assert commands == checks
    assert set(resources("CheckConfig")) == checks  # named after its command
    assert set(resources("Asset")) == {ASSET}
    assert "kvm-remediate" in resources("Handler")
    assert "kvm-first-occurrences" in resources("EventFilter")


@pytest.mark.parametrize("name", check_commands())
def test_check_config(name):
    spec = resources("CheckConfig")[name]
    argv = shlex.split(spec["command"])
    assert argv[0] in console_scripts()
    own_timeout = float(option_value(argv, "-t", "--timeout") or 10)  # 10: the commands' default
    assert isinstance(spec["timeout"], int)
    assert isinstance(spec["interval"], int)
    assert own_timeout < spec["timeout"] < spec["interval"], "the command gives up first, before the next run"
    assert spec["publish"] is True
    assert spec["subscriptions"] == (["kvm-guest"] if BY_NAME[name].kind is Kind.GUEST_CHECK else ["kvm-hypervisor"])
    assert spec["runtime_assets"] == [ASSET]
    assert spec["runtime_assets"][0] in resources("Asset")
    for key in ("handlers", "output_metric_handlers"):
        assert set(spec.get(key) or []) <= set(resources("Handler")) | EXTERNAL_HANDLERS, key
    assert spec["handlers"] == ["default"]
    assert spec["output_metric_format"] in METRIC_FORMATS
    if name == "metrics-kvm":
        fmt = option_value(argv, "-f", "--format") or "graphite"
        assert fmt == "prometheus"
        assert spec["output_metric_format"] == FORMAT_OF[fmt]
    else:
        assert spec["output_metric_format"] == "nagios_perfdata"
    if name == "check-kvm-domstate":  # one result per guest, which kvm-remediate acts on
        assert option_value(argv, "--per-domain", "--per-domain") == "sensu-go"
        handlers = {argv[i + 1] for i, a in enumerate(argv) if a == "--per-domain-handler"}
        assert handlers == {"default", "kvm-remediate"}
        assert handlers <= set(resources("Handler")) | EXTERNAL_HANDLERS
    else:
        assert "--per-domain" not in spec["command"]
    for tag in spec.get("output_metric_tags") or []:
        assert set(tag) == {"name", "value"}


def test_remediation_handler():
    spec = resources("Handler")["kvm-remediate"]
    assert spec["type"] == "pipe"
    assert shlex.split(spec["command"])[0] == "handler-kvm-remediate"
    assert spec["filters"] == ["is_incident", "not_silenced", "kvm-first-occurrences"]
    assert spec["runtime_assets"] == [ASSET]
    assert isinstance(spec["timeout"], int)
    first = resources("EventFilter")["kvm-first-occurrences"]
    assert first == {"action": "allow",
                     "expressions": ["event.check.status == 1 || event.check.status == 2", "event.check.occurrences <= 3"]}


def test_handlers_and_filters_reference_what_exists():
    filters = resources("EventFilter")
    for name, spec in resources("Handler").items():
        assert spec["type"] in {"pipe", "tcp", "udp", "set"}, name
        if spec["type"] == "pipe" and ASSET in (spec.get("runtime_assets") or []):
            assert shlex.split(spec["command"])[0] in console_scripts(), name
        elif spec["type"] == "pipe":  # the example default handler: a command of every Debian system
            assert shlex.split(spec["command"])[0] in SYSTEM_COMMANDS, name
        assert set(spec.get("filters") or []) <= set(filters) | BUILTIN_FILTERS, name
        assert set(spec.get("runtime_assets") or []) <= set(resources("Asset")), name
    for name, spec in filters.items():
        assert spec["action"] in {"allow", "deny"}, name
        assert spec["expressions"], name
        assert all(isinstance(e, str) and e.strip() for e in spec["expressions"]), name


def test_asset_definition():
    spec = resources("Asset")[ASSET]
    assert spec["builds"], "a multi-build asset"
    for build in spec["builds"]:
        assert set(build) <= BUILD_FIELDS
        assert build["url"].startswith("https://")
        assert build["url"].rsplit("/", 1)[1] == tarball_name(), "the file name build-asset.sh gives this version"
        sha512 = build["sha512"]
        assert re.fullmatch(r"[0-9a-f]{128}", sha512) or "REPLACE" in sha512
        assert build["filters"] == ["entity.system.os == 'linux'"]
    assert "assets.example.org" in spec["builds"][0]["url"]  # the placeholder, marked to change
    text = (SENSU_GO / "asset.yaml").read_text(encoding="utf-8")
    assert text.count("CHANGE ME") >= 2


# ---- the asset -----------------------------------------------------------------------------------


def build(outdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    return subprocess.run(["bash", str(BUILD), "--python", str(PYTHON), *args, str(outdir)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    outdir = tmp_path_factory.mktemp("asset-out")
    result = build(outdir, "--url-base", "https://assets.example.org/kvm/")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    tarball, sha512 = Path(lines[0]), lines[1]
    assert tarball == outdir / tarball_name()
    return tarball, sha512


@pytest.fixture(scope="module")
def unpacked(built, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asset-root")
    subprocess.run(["tar", "-xzf", str(built[0]), "-C", str(root)], check=True)
    return root


def wrapper(root: Path, command: str, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a bin/ wrapper of the unpacked asset, found on a PATH of only its bin/ (what sensu-agent adds)."""
    full_env = {"PATH": str(root / "bin"), "SENSU_KVM_PYTHON": str(PYTHON)}
    full_env.update(env or {})
    # A bare command name is looked up on full_env's PATH, as the agent's shell would.
    return subprocess.run([command, *args], capture_output=True, text=True, env=full_env, cwd=cwd or root,
                          timeout=60, check=False)


def test_sha512_file_and_printed_sha512_match_the_tarball(built):
    tarball, printed = built
    digest = hashlib.sha512(tarball.read_bytes()).hexdigest()
    assert printed == digest
    assert Path(f"{tarball}.sha512").read_text(encoding="ascii") == f"{digest}  {tarball.name}\n"
    generated = yaml.safe_load(Path(f"{tarball}.asset.yaml").read_text(encoding="utf-8"))
    assert generated["type"] == "Asset"
    assert generated["metadata"]["name"] == ASSET
    assert generated["spec"]["builds"] == [{
        "url": f"https://assets.example.org/kvm/{tarball.name}",
        "sha512": digest,
        "filters": ["entity.system.os == 'linux'"],
    }]


def test_tarball_layout(built):
    with tarfile.open(built[0]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/")), "sorted, directory by directory"
    assert {n.split("/", 1)[0] for n in names} == {"bin", "lib"}
    assert {m.uid for m in members} == {0} and {m.gid for m in members} == {0}
    assert len({m.mtime for m in members}) == 1
    assert all(m.isfile() or m.isdir() for m in members), "no links or devices"
    wrappers = {n.split("/", 1)[1]: m for n, m in zip(names, members, strict=True) if n.startswith("bin/") and m.isfile()}
    assert set(wrappers) == set(console_scripts())
    assert all(m.mode == 0o755 for m in wrappers.values())
    assert all(m.mode == (0o755 if m.isdir() else 0o644) for m in members if m.name.startswith("lib"))
    for needed in ("lib/sensu_kvm/__init__.py", "lib/sensu_kvm/plugin.py", "lib/sensu_kvm/checks/__init__.py",
                   "lib/sensu_kvm/checks/domstate.py", "lib/sensu_kvm/handlers/__init__.py",
                   "lib/sensu_plugin/__init__.py", "lib/sensu_plugin/check.py"):
        assert needed in names
    top = {n.split("/")[1] for n in names if n.startswith("lib/") and n.count("/") >= 1}
    assert {t for t in top if not t.endswith(".dist-info")} == {"sensu_kvm", "sensu_plugin"}, (
        "only these: compiled modules (libvirt, psutil) come from the host, and anything else on "
        "PYTHONPATH (argparse, say) would shadow the host's")
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so"))]


def test_build_is_reproducible(built, tmp_path):
    again = build(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [str(tmp_path / built[0].name), built[1]]


def test_domstate_through_its_wrapper_uses_the_assets_lib(unpacked):
    result = wrapper(unpacked, "check-kvm-domstate", "-u", DEFAULT_URI, env={"SENSU_KVM_DEBUG": "1"})
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0].startswith("CheckKvmDomstate OK: test running (unknown) | ")
    assert "running=1;;;0;1" in result.stdout
    # Not the venv's own sensu_kvm (it is installed there too): the asset's lib/ comes first.
    assert f"python {PYTHON} " in result.stderr
    assert f"sensu_kvm {unpacked / 'lib' / 'sensu_kvm' / '__init__.py'};" in result.stderr
    assert f"sensu_plugin {unpacked / 'lib' / 'sensu_plugin'}\n" in result.stderr


def test_metrics_prometheus_through_its_wrapper(unpacked):
    result = wrapper(unpacked, "metrics-kvm", "-u", DEFAULT_URI, "--format", "prometheus")
    assert result.returncode == 0, result
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "# HELP kvm_host_cpu_kernel_seconds_total host CPU time in the kernel, all CPUs"
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    [up] = families["kvm_domain_up"].samples
    assert (up.labels, up.value) == ({"domain": "test"}, 1)


@pytest.mark.parametrize("name", check_commands())
def test_check_config_command_runs_from_the_asset(unpacked, tmp_path, name):
    """The command as checks.yaml has it, on the test driver: options valid, output in its format."""
    spec = resources("CheckConfig")[name]
    argv = shlex.split(spec["command"])
    for option, value in (("-u", DEFAULT_URI), ("--state-dir", str(tmp_path))):
        if option in argv:
            argv[argv.index(option) + 1] = value
    result = wrapper(unpacked, *argv)
    assert result.returncode in {0, 1, 2}, result  # 3 would be UNKNOWN: a bad option, a failure
    assert "Traceback" not in result.stdout + result.stderr
    if spec["output_metric_format"] == "nagios_perfdata":  # as the agent extracts it (tests/perfdata_consumers.py)
        status = text_lines(result.stdout)[0]
        assert re.search(r" (OK|WARNING|CRITICAL): ", status), status
        points, errors = sensu_go(result.stdout)
        assert points and errors == [], (result.stdout, errors)
        assert all(not label.startswith("'") for label, _value in points), points
    else:
        assert list(text_string_to_metric_families(result.stdout))


def test_handler_options_in_handlers_yaml_exist(unpacked):
    for name, spec in resources("Handler").items():
        if ASSET not in (spec.get("runtime_assets") or []):
            continue
        argv = shlex.split(spec["command"])
        result = wrapper(unpacked, argv[0], "--help")
        assert result.returncode == 0, result
        for arg in argv[1:]:
            if arg.startswith("-"):
                assert re.search(rf"(^|[ ,]){re.escape(arg.split('=')[0])}\b", result.stdout, re.M), (name, arg)


@pytest.mark.parametrize(("command", "module", "package"), [
    ("check-kvm-domstate", "libvirt", "python3-libvirt"),
    ("check-memory-percent", "psutil", "python3-psutil"),
])
def test_a_missing_binding_is_one_unknown_line(unpacked, tmp_path, command, module, package):
    (tmp_path / f"{module}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    result = wrapper(unpacked, command, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 3, result
    assert result.stdout == (f"{command} UNKNOWN: No module named '{module}' under {PYTHON} "
                             f"(Debian/Ubuntu: apt install {package}; the asset does not bundle it)\n")


def test_no_python_is_one_unknown_line(unpacked):
    result = wrapper(unpacked, "check-kvm-domstate", env={"SENSU_KVM_PYTHON": "python3"})  # not on PATH
    assert result.returncode == 3
    assert result.stdout.startswith("check-kvm-domstate UNKNOWN: python3 not found: ")


def test_the_working_directory_shadows_nothing(unpacked, tmp_path):
    (tmp_path / "sensu_kvm").mkdir()
    (tmp_path / "sensu_kvm" / "__init__.py").write_text("raise SystemExit('imported from the working directory')\n")
    (tmp_path / "libvirt.py").write_text("raise SystemExit('imported from the working directory')\n")
    result = wrapper(unpacked, "check-kvm-domstate", "-u", DEFAULT_URI, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result


def test_a_symlink_to_a_wrapper_finds_the_asset(unpacked, tmp_path):
    link = tmp_path / "domstate"
    link.symlink_to(unpacked / "bin" / "check-kvm-domstate")
    result = wrapper(unpacked, str(link), "-u", DEFAULT_URI,
                     env={"PATH": f"{unpacked / 'bin'}:/usr/bin:/bin", "SENSU_KVM_DEBUG": "1"})
    assert result.returncode == 0, result
    assert str(unpacked / "lib" / "sensu_kvm") in result.stderr


@pytest.mark.parametrize("shell", [["dash"], ["busybox", "sh"], ["bash", "--posix"]], ids=lambda s: s[0])
def test_wrappers_are_posix_sh(unpacked, shell):
    assert shutil.which(shell[0]), f"no {shell[0]} (make test installs it)"
    wrapper_path = str(unpacked / "bin" / "check-kvm-domstate")
    result = subprocess.run([shutil.which(shell[0]), *shell[1:], wrapper_path, "-u", DEFAULT_URI],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": str(unpacked / "bin"), "SENSU_KVM_PYTHON": str(PYTHON)})
    assert result.returncode == 0, result
    assert result.stdout.startswith("CheckKvmDomstate OK: test running")


def test_kvm_occurrences_passes_what_sensu_cores_occurrences_filter_passes(tmp_path):
    """The kvm-occurrences expression, run under duktape (an ECMAScript 5 engine, like the otto that
    Sensu Go evaluates filters with), on the events Sensu Go makes for a failing check and for its
    resolution, passes the occurrences that Sensu Core's built-in filter passes (tests/sensu1.py
    follows its source): 2, then every refresh / interval occurrences; the resolution when the
    incident reached the threshold."""
    (expression,) = resources("EventFilter")["kvm-occurrences"]["expressions"]
    checks = resources("CheckConfig")
    cases = []
    for name in ("check-kvm-domstate", "check-kvm-backup-age"):
        annotations = documents_metadata(name)
        interval = checks[name]["interval"]
        for n in range(1, 65):
            cases.append({"check": {"annotations": annotations, "interval": interval, "occurrences": n,
                                    "occurrences_watermark": n, "status": 2}, "is_resolution": False})
        for watermark in (1, 2, 40):
            cases.append({"check": {"annotations": annotations, "interval": interval, "occurrences": 1,
                                    "occurrences_watermark": watermark, "status": 0}, "is_resolution": True})
    cases.append({"check": {"interval": 60, "occurrences": 1, "occurrences_watermark": 1, "status": 2},
                  "is_resolution": False})  # no annotations: Sensu Core's defaults, 1 and 1800
    script = tmp_path / "filter.js"
    script.write_text("var CASES = " + json.dumps(cases) + ";\nvar out = [];\n"
                      "for (var i = 0; i < CASES.length; i++) { var event = CASES[i];\n"
                      f"  out.push(!!({expression})); }}\nprint(JSON.stringify(out));\n")
    result = subprocess.run([shutil.which("duk") or "duk", str(script)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = json.loads(result.stdout)
    expected = []
    for case in cases:
        check = case["check"]
        annotations = check.get("annotations", {})
        core = {"occurrences": check["occurrences_watermark"] if case["is_resolution"] else check["occurrences"],
                "action": "resolve" if case["is_resolution"] else "create",
                "check": {"interval": check["interval"],
                          "occurrences": int(annotations.get("fatigue_check/occurrences", 1)),
                          "refresh": int(annotations.get("fatigue_check/interval", 1800))}}
        expected.append(not sensu1.occurrences_filtered(core))
    assert passed == expected
    domstate = [n for n, ok in zip(range(1, 65), passed[:64], strict=True) if ok]
    assert domstate == [2, 32, 62]
    backup_age = [n for n, ok in zip(range(1, 65), passed[67:131], strict=True) if ok]
    assert backup_age == [1, 25, 49]  # hourly, alerting at once and again every day
    assert passed[64:67] == [False, True, True] and passed[-1] is True


def documents_metadata(name: str) -> dict[str, str]:
    """The annotations of a CheckConfig of checks.yaml."""
    for _path, document in documents():
        if document["type"] == "CheckConfig" and document["metadata"]["name"] == name:
            return dict(document["metadata"].get("annotations") or {})
    raise KeyError(name)
