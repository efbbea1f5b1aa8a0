"""Command-line tools for people and cron (kvm-snapshot, kvm-backup, kvm-inspect), not checks.

They share their conventions here: exit 0 done, 1 a failure of libvirt or the host (or a
refusal), 2 bad options or input; every failure is one line on stderr, never a traceback. The
common options (``-u/--uri``, ``--timeout``, ``--state-dir``, ``--json``) mean the same in every
tool and are taken both before and after the subcommand (``common_options``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from sensu_kvm.argtypes import StrictParsing, one_line, seconds_arg, state_dir_arg, uri_arg
from sensu_kvm.errors import KvmError, NotFound
from sensu_kvm.virt.deadline import DEFAULT_TIMEOUT, LONG_FACTOR

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class Parser(StrictParsing):
    """argparse that reports a bad command line in one line and exits 2."""

    def fail(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(EXIT_BAD_INPUT)


URI_HELP = "libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)"
TIMEOUT_HELP = (f"deadline of each libvirt call, up to 86400 (default: {DEFAULT_TIMEOUT:g}; starting a guest, "
                f"a snapshot, a revert or deleting a snapshot get {LONG_FACTOR} times as long); a call that does "
                "not answer in time fails the command with one line naming the call")
COMMON = ("uri", "timeout", "state_dir")


def common_options(top: argparse.ArgumentParser, state_dir: str | None = None, state_help: str = "") -> Parser:
    """Give ``top`` the common options and return the parent parser that gives them to each
    subcommand too, so that ``TOOL -u URI COMMAND`` and ``TOOL COMMAND -u URI`` both work.

    The subcommands' copies default to argparse.SUPPRESS (a value given before the subcommand is
    kept); ``settle`` fills the defaults afterwards. ``--json`` before the subcommand means the
    subcommand's own ``--json``.
    """
    after = Parser(add_help=False)
    for parser in (top, after):
        default = None if parser is top else argparse.SUPPRESS
        parser.add_argument("-u", "--uri", type=uri_arg, default=default, help=URI_HELP)
        parser.add_argument("--timeout", type=seconds_arg, default=default, metavar="SECONDS", help=TIMEOUT_HELP)
        if state_dir is not None:
            parser.add_argument("--state-dir", type=state_dir_arg, default=default, metavar="DIR",
                                help=f"{state_help} (default: {state_dir})")
    top.add_argument("--json", action="store_true", dest="json_first",
                     help="JSON on stdout (for the subcommands that have --json)")
    top.set_defaults(uses_libvirt=True)
    return after


def settle(parser: Parser, options: argparse.Namespace, state_dir: str | None = None) -> argparse.Namespace:
    """Defaults of the common options, once parsing is done; a common option given to a
    subcommand that has no use for it (no libvirt, no JSON output) is refused, not ignored."""
    if not options.uses_libvirt:
        given = [name for name in COMMON if getattr(options, name, None) is not None]
        if given:
            parser.fail(f"--{given[0].replace('_', '-')}: {options.command} does not talk to libvirt")
    if getattr(options, "uri", None) is None:
        options.uri = None
    if getattr(options, "timeout", None) is None:
        options.timeout = DEFAULT_TIMEOUT
    if state_dir is not None and getattr(options, "state_dir", None) is None:
        options.state_dir = state_dir
    if options.json_first:
        if "json" not in options:
            parser.fail(f"--json: {options.command} has no JSON output")
        options.json = True
    return options


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
