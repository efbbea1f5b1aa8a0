"""Shared test helpers: run the installed commands as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
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
