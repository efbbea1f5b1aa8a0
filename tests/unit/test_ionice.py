"""kvm-backup create --ionice: the values it takes, and the priority a run really gets (read back
from /proc through psutil in a child process, which inherits it as every thread and program of a
run does).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sensu_kvm.tools.backup import ionice_arg


@pytest.mark.parametrize(("text", "parsed"), [
    ("idle", ("idle", 0)), ("best-effort", ("best-effort", 4)), ("best-effort:0", ("best-effort", 0)),
    ("best-effort:7", ("best-effort", 7)), ("none", ("none", 0)),
])
def test_values(text: str, parsed: tuple[str, int]) -> None:
    assert ionice_arg(text) == parsed


@pytest.mark.parametrize("text", ["realtime", "best-effort:8", "best-effort:", "idle:1", "none:0", "", "BE:7"])
def test_bad_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"is not idle, best-effort\[:0-7\] or none$"):
        ionice_arg(text)


def ioprio_after(text: str) -> tuple[int, int]:
    """(class, level) of a child process started by a process that set ``text``."""
    code = ("import subprocess, sys\n"
            "from sensu_kvm.tools.backup import ionice_arg, set_ionice\n"
            "set_ionice(ionice_arg(sys.argv[1]))\n"
            "import psutil\n"
            "child = subprocess.Popen(['sleep', '5'])\n"
            "got = psutil.Process(child.pid).ionice()\n"
            "child.kill()\n"
            "print(int(got.ioclass), got.value)\n")
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True).stdout
    ioclass, value = out.split()
    return int(ioclass), int(value)


def test_the_priority_is_inherited_by_what_the_run_starts() -> None:
    import psutil  # noqa: PLC0415

    assert ioprio_after("best-effort:7") == (int(psutil.IOPRIO_CLASS_BE), 7)
    assert ioprio_after("idle")[0] == int(psutil.IOPRIO_CLASS_IDLE)
