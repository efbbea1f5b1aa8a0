"""Bad input and broken hypervisors: one clear line, the right exit code (3 checks, 2 tools and the
handler), never a traceback, never a password (real processes)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensu_kvm.registry import BY_NAME, Kind
from tests.conftest import BIN, hung_socket, node_uri, run
from tests.entrypoints import commands
from tests.perfdata_consumers import perfdata


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domian", "kvm1"], "unrecognized arguments: --domian kvm1"),
        (["--verbos"], "unrecognized arguments: --verbos"),
        (["extra"], "unrecognized arguments: extra"),
        (["-w", "20:10"], "argument -w/--warning: invalid range '20:10': start 20 is above end 10"),
        (["-c", "x"], "argument -c/--critical: invalid range 'x': 'x' is not a number"),
        (["--match", "("], "argument --match: invalid regular expression '('"),
        (["-t", "0"], "argument -t/--timeout: '0' is not between 0 and 86400 seconds"),
        (["-t", "soon"], "argument -t/--timeout: 'soon' is not a number of seconds"),
        (["-d"], "argument -d/--domain: expected one argument"),
    ],
)
def test_bad_options_exit_3_with_one_line(args, message):
    result = run("check-kvm-domstate", "-u", "test:///default", *args)
    assert result.returncode == 3
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("check-kvm-domstate: ")
    assert message in line


def test_help_has_examples_and_exits_0():
    result = run("check-kvm-domstate", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "check-kvm-domstate -d kvm1" in result.stdout


def test_version():
    result = run("check-kvm-domstate", "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("check-kvm-domstate 0.")


def test_internal_error_is_unknown_with_its_message(fault_env):
    """sensu-plugin alone would exit 2 and print traceback lines; the adapter exits 3."""
    result = run("check-kvm-domstate", "-u", "test:///default", env={**fault_env, "SPK_FAULT": "crash-in-gather"})
    assert result.returncode == 3
    assert one_line(result.stdout) == (
        "CheckKvmDomstate UNKNOWN: internal error: RuntimeError: injected fault: stats dict had no entries"
    )


def test_missing_socket_is_unknown_naming_uri_and_reason(tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/nothing-here"
    result = run("check-kvm-domstate", "-u", uri)
    assert result.returncode == 3
    line = one_line(result.stdout)
    assert line.startswith(f"CheckKvmDomstate UNKNOWN: cannot connect to {uri}: ")
    assert "No such file or directory" in line


def test_uri_from_environment_and_unknown_driver():
    result = run("check-kvm-domstate", env={"LIBVIRT_DEFAULT_URI": "bogus:///nowhere"})
    assert result.returncode == 3
    assert one_line(result.stdout).startswith("CheckKvmDomstate UNKNOWN: cannot connect to bogus:///nowhere: ")


@pytest.fixture
def silent_socket() -> Iterator[Path]:
    """A Unix socket that accepts connections and never answers: a hung libvirtd."""
    with hung_socket() as path:
        yield path


def test_hanging_hypervisor_times_out_with_unknown(silent_socket):
    """A Python signal handler never runs while libvirt blocks; the watchdog thread does."""
    uri = f"qemu+unix:///system?socket={silent_socket}"
    result = run("check-kvm-domstate", "-u", uri, "-t", "1.5", timeout=30)
    assert result.returncode == 3
    assert one_line(result.stdout) == f"CheckKvmDomstate UNKNOWN: timed out after 1.5s while connecting to {uri}"


@pytest.fixture
def traversable_checkout() -> Iterator[None]:
    """Let the unprivileged user reach the installed command and its interpreter; restore the modes."""
    changed: list[tuple[Path, int]] = []
    interpreter = Path(os.path.realpath(sys.executable))
    folders = {BIN, *BIN.parents, *interpreter.parents, *Path(sys.base_prefix).parents}
    for folder in sorted(folders):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            changed.append((folder, mode))
            folder.chmod(mode | stat.S_IXOTH)
    yield
    for folder, mode in changed:
        folder.chmod(stat.S_IMODE(mode))


def test_permission_denied_is_unknown(traversable_checkout, tmp_path):
    """The check run as user nobody against a socket only root may open."""
    folder = Path(tempfile.mkdtemp(prefix="spk-deny-"))
    folder.chmod(0o755)
    path = folder / "root-only.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(1)
        path.chmod(0o600)
        uri = f"qemu+unix:///system?socket={path}"
        result = run("check-kvm-domstate", "-u", uri, user="nobody")
    finally:
        server.close()
        path.unlink()
        folder.rmdir()
    assert result.returncode == 3, result
    line = one_line(result.stdout)
    assert line.startswith(f"CheckKvmDomstate UNKNOWN: cannot connect to {uri}: ")
    assert "Permission denied" in line


def test_bulk_call_failing_falls_back_per_domain_and_isolates_a_broken_domain(fault_env):
    """Injected faults: the bulk call fails, then one domain's own state call fails too."""
    env = {**fault_env, "SPK_FAULT": "bulk-stats-fail;state-fails:web1"}
    result = run("check-kvm-domstate", "-u", node_uri("mixed.xml"), "-v", env=env)
    assert result.returncode == 2, result
    lines = result.stdout.splitlines()
    assert "UNKNOWN: web1: state statistics unreadable: injected fault: cannot read state" in lines
    assert "CRITICAL: oops crashed (unknown)" in lines
    assert "OK: db 1 running (unknown)" in lines
    assert perfdata(result.stdout)["unreadable"] == "1;;;0;6"


@pytest.mark.parametrize("command", commands())
def test_every_command_has_help_with_examples_and_refuses_typos(command):
    """Every installed command (from the entry points): --help with examples, a typo refused in one line."""
    result = run(command, "--help")
    assert result.returncode == 0, result
    assert "examples:" in result.stdout
    assert f"  {command}" in result.stdout.split("examples:")[1]
    code = 3 if BY_NAME[command].kind in (Kind.CHECK, Kind.METRICS, Kind.GUEST_CHECK) else 2
    result = run(command, "--bogus-option")
    assert (result.returncode, result.stdout) == (code, ""), result
    line = one_line(result.stderr)
    if BY_NAME[command].kind is Kind.TOOL:  # a subcommand or a domain is required before any typo is noticed
        assert line.startswith(f"{command}: the following arguments are required: ") and line.endswith(" (see --help)")
    else:
        assert line == f"{command}: unrecognized arguments: --bogus-option (see --help)"


def test_guest_memory_check_runs_without_libvirt():
    """check-memory-percent reads this machine's memory through psutil; it never loads libvirt."""
    result = run("check-memory-percent", "-w", "0:0", "-c", "100")
    assert result.returncode == 1, result
    assert result.stdout.startswith("MEM WARNING: system memory usage: ")
    probe = run("python", "-c", "import sys; import sensu_kvm.checks.memory_percent; print('libvirt' in sys.modules)")
    assert probe.stdout.strip() == "False"


# --- issue 11: every bad input of the audit is one line, the right exit code, and changes nothing ----

SECRET_URI = "qemu+tcp://admin:s3cret@127.0.0.1:1/system?password=p4ssw0rd&no_verify=1"
SHOWN_URI = "qemu+tcp://admin@127.0.0.1:1/system?password=***&no_verify=1"


@pytest.mark.parametrize(("command", "args", "code"), [
    ("check-kvm-domstate", [], 3),
    ("metrics-kvm", [], 3),
    ("kvm-inspect", ["web1"], 1),
    ("kvm-snapshot", ["list", "web1"], 1),
    ("kvm-backup", ["recover", "web1"], 1),
])
def test_a_password_in_the_uri_is_never_shown(command, args, code):
    result = run(command, *args, "-u", SECRET_URI)
    assert result.returncode == code, result
    said = result.stdout + result.stderr
    assert f"cannot connect to {SHOWN_URI}: " in said
    assert "s3cret" not in said and "p4ssw0rd" not in said


def test_the_handler_never_logs_a_password(tmp_path):
    event = '{"client": {"name": "web1"}, "check": {"name": "check-kvm-domstate", "status": 2, "source": "web1"}}'
    result = run("handler-kvm-remediate", "-u", SECRET_URI, "--state-dir", str(tmp_path), stdin=event)
    assert result.returncode == 1, result
    assert f"cannot connect to {SHOWN_URI}" in result.stderr and "s3cret" not in result.stderr


def test_a_hung_connection_times_out_without_showing_the_password(silent_socket):
    uri = f"qemu+unix:///system?socket={silent_socket}&password=s3cret"
    result = run("check-kvm-domstate", "-u", uri, "-t", "1", timeout=30)
    assert result.returncode == 3
    assert one_line(result.stdout) == (f"CheckKvmDomstate UNKNOWN: timed out after 1s while connecting to "
                                       f"qemu+unix:///system?socket={silent_socket}&password=***")


# (command, arguments, exit code, words of the one line on stderr)
REFUSED = [
    ("check-kvm-domstate", ["-u", ""], 3, "argument -u/--uri: empty URI"),
    ("kvm-snapshot", ["list", "web1", "-u", ""], 2, "argument -u/--uri: empty URI"),
    ("kvm-inspect", ["web1", "-u", " "], 2, "argument -u/--uri: empty URI"),
    ("kvm-backup", ["recover", "web1", "-u", ""], 2, "argument -u/--uri: empty URI"),
    ("handler-kvm-remediate", ["-u", ""], 2, "argument -u/--uri: empty URI"),
    ("handler-kvm-remediate", ["--max-attempts", "inf"], 2, "argument --max-attempts: 'inf' is not a whole number"),
    ("handler-kvm-remediate", ["--max-attempts", "0.5"], 2, "argument --max-attempts: '0.5' is not a whole number"),
    ("handler-kvm-remediate", ["--max-attempts", "0"], 2, "argument --max-attempts: '0' is below 1"),
    ("handler-kvm-remediate", ["--window", "nan"], 2, "argument --window: 'nan' is not a finite number"),
    ("handler-kvm-remediate", ["--state-dir", ""], 2, "argument --state-dir: empty path"),
    ("check-kvm-vcpu", ["--state-dir", ""], 3, "argument --state-dir: empty path"),
    ("kvm-backup", ["recover", "web1", "--state-dir", ""], 2, "argument --state-dir: empty path"),
    ("kvm-inspect", ["web1", "--call-timeout", "inf"], 2, "argument --call-timeout: 'inf' is not a finite number"),
    ("kvm-backup", ["create", "web1", "--dest", "/tmp", "--commit-bwlimit", "1e300"], 2,
     "argument --commit-bwlimit: '1e300' is not above 0 and at most 1048576 MiB/s"),
    ("kvm-backup", ["create", "web1", "--dest", "/tmp", "--shutdown-timeout", "inf"], 2,
     "argument --shutdown-timeout: 'inf' is not a finite number"),
    ("kvm-backup", ["create", "web1", "--dest", "/tmp", "--ionice", "realtime"], 2,
     "argument --ionice: 'realtime' is not idle, best-effort[:0-7] or none"),
    ("kvm-backup", ["create", "web1", "--dest", "/tmp", "--ionice", "best-effort:8"], 2,
     "argument --ionice: 'best-effort:8' is not idle, best-effort[:0-7] or none"),
    ("kvm-backup", ["create", "web1", "--dest", "/tmp", "--ionice", "idle:3"], 2,
     "argument --ionice: 'idle:3' is not idle, best-effort[:0-7] or none"),
    ("kvm-snapshot", ["prune", "--all", "--older-than", "3"], 2,
     "argument --older-than: '3' has no unit: add s, m, h, d or w"),
    ("check-kvm-domstate", ["--per-domain", "sensu", "--per-domain-address", "garbage"], 3,
     "argument --per-domain-address: 'garbage' is neither HOST:PORT"),
    ("check-kvm-domstate", ["--per-domain", "sensu", "--per-domain-address", "127.0.0.1:70000"], 3,
     "argument --per-domain-address: '127.0.0.1:70000' is neither HOST:PORT"),
    ("check-kvm-domstate", ["--per-domain", "sensu-go", "--per-domain-address", "127.0.0.1:3030"], 3,
     "argument --per-domain-address: --per-domain sensu-go sends to an http(s) URL"),
    ("check-kvm-domstate", ["--per-domain", "sensu", "--per-domain-address", "http://127.0.0.1:3031/events"], 3,
     "argument --per-domain-address: --per-domain sensu sends to HOST:PORT"),
    ("check-kvm-domstate", ["--per-domain-address", "127.0.0.1:3030"], 3,
     "--per-domain-address needs --per-domain sensu or --per-domain sensu-go"),
    ("check-kvm-domstate", ["--per-domain-ttl", "180"], 3,
     "--per-domain-ttl needs --per-domain sensu or --per-domain sensu-go"),
    ("check-kvm-domstate", ["--per-domain", "sensu", "--per-domain-ttl", "60"], 3,
     "argument --per-domain-ttl: must be above --per-domain-interval (60)"),
    ("check-kvm-domstate", ["--per-domain", "sensu", "--per-domain-occurrences", "0"], 3,
     "argument --per-domain-occurrences: '0' is below 1"),
    ("check-kvm-domstate", ["-d", "a\nb"], 3, "argument -d/--domain: domain name 'a\\nb' contains control characters"),
    ("kvm-snapshot", ["info", "web1", "x\x1b[2J"], 2, "argument name: name 'x\\x1b[2J' contains control characters"),
    ("metrics-kvm", ["--scheme", "kvm\nforged.metric 1"], 3, "argument -s/--scheme: 'kvm\\nforged.metric 1' is not a "
     "Graphite path"),
]


@pytest.mark.parametrize(("command", "args", "code", "words"), REFUSED)
def test_bad_values_of_the_audit_are_one_line(tmp_path, command, args, code, words):
    result = subprocess.run([str(BIN / command), *args], capture_output=True, text=True, cwd=tmp_path,
                            input="", timeout=60, check=False, env=ENV)
    assert (result.returncode, result.stdout) == (code, ""), result
    line = one_line(result.stderr)
    assert line.startswith(f"{command.split()[0]}") and words in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written, not even into the working directory


@pytest.mark.parametrize("args", [
    ["kvm-backup", b"create", b"web\xff", b"--dest", b"/tmp"],
    ["kvm-backup", b"recover", b"web\xff"],
    ["kvm-snapshot", b"list", b"web\xff"],
    ["kvm-snapshot", b"revert", b"web1", b"snap\xff"],
    ["kvm-inspect", b"web\xff"],
    ["handler-kvm-remediate", b"--domain", b"web\xff"],
    ["check-kvm-domstate", b"-d", b"web\xff"],
    ["kvm-snapshot", b"create", b"web1", b"--description", b"\xff"],
    ["kvm-backup", b"list", b"/tmp/\xff"],
])
def test_names_that_are_not_utf8_are_one_line(args):
    command, *rest = args
    result = subprocess.run([os.fsencode(str(BIN / command)), *rest, b"-u", b"test:///default"], capture_output=True,
                            input=b"", timeout=60, check=False, env=ENV)
    assert result.returncode == (3 if command.startswith("check-") else 2), result
    assert result.stdout == b""
    line = one_line(result.stderr.decode())
    assert "is not valid UTF-8" in line and "\\xff" in line and "internal error" not in line, line


def test_a_relative_state_dir_is_made_absolute(tmp_path):
    result = subprocess.run([str(BIN / "check-kvm-vcpu"), "-u", "test:///default", "--state-dir", "samples"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False, env=ENV)
    assert result.returncode in (0, 1, 2), result
    assert [p.name for p in (tmp_path / "samples").iterdir()] != []


ENV = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"} | {"LIBVIRT_DEFAULT_URI": "test:///default"}
