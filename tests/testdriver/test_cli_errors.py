"""Bad input and broken hypervisors: one clear line, exit 3, never a traceback (real processes)."""

from __future__ import annotations

import os
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, node_uri, run


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
def silent_socket() -> Iterator[str]:
    """A Unix socket that accepts connections and never answers: a hung libvirtd."""
    folder = tempfile.mkdtemp(prefix="spk-hang-")
    path = os.path.join(folder, "hang.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()
    os.unlink(path)
    os.rmdir(folder)


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
    assert "unreadable=1;;;0;6" in lines[0]


COMMANDS = ["check-kvm-domstate", "check-kvm-vcpu", "check-kvm-memory", "check-kvm-blkerror", "check-kvm-blkstat",
            "check-kvm-host", "metrics-kvm", "check-memory-percent", "check-kvm-snapshot-age",
            "check-kvm-guest-agent", "check-kvm-backup-age"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples_and_refuses_typos(command):
    result = run(command, "--help")
    assert result.returncode == 0, result
    assert "examples:" in result.stdout
    assert f"  {command}" in result.stdout.split("examples:")[1]
    result = run(command, "--bogus-option")
    assert (result.returncode, result.stdout) == (3, "")
    assert one_line(result.stderr) == f"{command}: unrecognized arguments: --bogus-option (see --help)"


def test_guest_memory_check_runs_without_libvirt():
    """check-memory-percent reads this machine's memory through psutil; it never loads libvirt."""
    result = run("check-memory-percent", "-w", "0:0", "-c", "100")
    assert result.returncode == 1, result
    assert result.stdout.startswith("MEM WARNING: system memory usage: ")
    probe = run("python", "-c", "import sys; import sensu_kvm.checks.memory_percent; print('libvirt' in sys.modules)")
    assert probe.stdout.strip() == "False"
