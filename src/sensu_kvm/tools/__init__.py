"""Command-line tools for people and cron (kvm-snapshot, kvm-backup, kvm-inspect), not checks.

They share their conventions here: exit 0 done, 1 a failure of libvirt or the host (or a
refusal), 2 bad options or input; every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from sensu_kvm.argtypes import StrictParsing, one_line
from sensu_kvm.errors import KvmError, NotFound

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class Parser(StrictParsing):
    """argparse that reports a bad command line in one line and exits 2."""

    def fail(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def run_tool(prog: str, action: Callable[[], int], bad_input: Sequence[type[BaseException]] = ()) -> int:
    """Run ``action``; an exception becomes one line on stderr and the tool's exit code."""
    bad: tuple[type[BaseException], ...] = (NotFound, *bad_input)
    try:
        return action()
    except bad as err:
        sys.stderr.write(f"{prog}: {one_line(str(err))}\n")
        return EXIT_BAD_INPUT
    except KvmError as err:
        sys.stderr.write(f"{prog}: {one_line(str(err))}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_FAILED
    except Exception as err:  # a bug: one line, not a traceback
        sys.stderr.write(one_line(f"{prog}: internal error: {type(err).__name__}: {err}") + "\n")
        return EXIT_FAILED
