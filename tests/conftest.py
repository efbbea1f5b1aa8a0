"""Shared test helpers: run the installed commands as real processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
DATA = Path(__file__).parent / "data"
FAULTS = Path(__file__).parent / "faults"


def node_uri(name: str) -> str:
    """A libvirt test driver URI for a node file under tests/data/nodes."""
    return f"test://{DATA / 'nodes' / name}"


def run(command: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
        user: str | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run an installed command of this project and capture its output."""
    argv = [str(BIN / command), *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    full_env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
                          input=stdin)


def succeeds(command: str, *args: str, timeout: float = 120) -> str:
    """Run ``command``, which must exit 0; its stdout."""
    result = run(command, *args, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def refuses(command: str, code: int, *args: str, timeout: float = 120) -> str:
    """Run ``command``, which must exit ``code`` and say why in exactly one line on stderr that
    names the command, with nothing on stdout; that line."""
    result = run(command, *args, timeout=timeout)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(command), lines
    assert result.stdout == "", result.stdout
    return lines[0]


@pytest.fixture
def fault_env() -> dict[str, str]:
    """Environment that loads tests/faults/sitecustomize.py into the command's process."""
    return {"PYTHONPATH": str(FAULTS)}


@contextlib.contextmanager
def hung_socket() -> Iterator[Path]:
    """A Unix socket that accepts connections and never answers (a hung libvirtd: point a command at
    ``qemu+unix:///system?socket=PATH``), in a folder of its own that goes afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="spk-hang-", dir="/tmp"))  # short: a socket path has at most 107 bytes
    path = folder / "libvirt.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # kept open, never answered
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
