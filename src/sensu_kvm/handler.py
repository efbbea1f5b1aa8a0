"""The base of every handler: sensu-plugin's SensuHandler, through this adapter only (decision D1).

Its defects stay here: SensuHandler reads standard input before it parses the options (so
``--help`` waits for an event), turns a bad event into a traceback, parses options with
``parse_known_args`` (a typo is ignored) and maps Sensu Go events with the 2.0 beta's field
names. The adapter parses first, reads at most a few MiB, normalises both event formats itself
(``events.parse``: nesting depth bounded, every field it reads type-checked), and reports a bad
command line or event in one line with exit 2. Every log line is kept to one line (control
characters from an event are escaped), so an event cannot forge log lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from sensu_plugin.handler import SensuHandler

from sensu_kvm import __version__
from sensu_kvm.argtypes import StrictParsing, one_line, seconds_arg
from sensu_kvm.errors import KvmError
from sensu_kvm.events import MAX_EVENT_BYTES, Event, EventError, parse
from sensu_kvm.virt.deadline import DEFAULT_TIMEOUT, LONG_FACTOR

EXIT_DONE = 0  # acted, or nothing to do
EXIT_FAILED = 1  # an action was needed and failed, or was refused by a guardrail
EXIT_BAD_INPUT = 2  # bad options or an event that cannot be read: nothing done


class HandlerParser(StrictParsing):
    def fail(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def build_parser(prog: str, description: str, examples: str, libvirt: bool = True) -> HandlerParser:
    """The handler's parser with -V and, for a handler that calls libvirt, its --timeout."""
    parser = HandlerParser(prog=prog, description=description, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n" + examples.rstrip() + "\n\n"
                           "Reads one Sensu Core 1.x or Sensu Go event on standard input. Exit codes: 0 done or\n"
                           "nothing to do, 1 an action failed or a guardrail refused it, 2 bad options or event.")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    if not libvirt:
        return parser
    parser.add_argument("--timeout", type=seconds_arg, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"deadline of each libvirt call, up to 86400 (default: {DEFAULT_TIMEOUT:g}; starting a "
                             f"guest gets {LONG_FACTOR} times as long); a call that does not answer in time fails "
                             "the handler (exit 1) with one line naming the call")
    return parser


class Log:
    """Every line a handler says goes to stderr with a UTC time stamp: Sensu keeps it in its log."""

    def __init__(self, prog: str) -> None:
        self.prog = prog

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sys.stderr.write(f"{stamp} {self.prog}: {one_line(message)}\n")
        sys.stderr.flush()


Act = Callable[[argparse.Namespace, Event, Log], int]


class _Adapter(SensuHandler):
    def __init__(self, parser: HandlerParser, act: Act, max_bytes: int) -> None:
        self._parser = parser
        self._act = act
        self._max_bytes = max_bytes
        super().__init__(autorun=False)

    def run(self) -> None:
        options = self._parser.parse_args()
        log = Log(self._parser.prog)
        raw = sys.stdin.buffer.read(self._max_bytes + 1)
        try:
            self.event = parse(raw, self._max_bytes)
        except (EventError, RecursionError, MemoryError) as err:  # the last two: a guard that failed
            if not isinstance(err, EventError):
                err = EventError(f"unreadable event ({type(err).__name__})")
            log(f"cannot read the event, nothing done: {err}")
            sys.exit(EXIT_BAD_INPUT)
        try:
            code = self._act(options, self.event, log)
        except KvmError as err:
            log(f"failed: {err}")
            code = EXIT_FAILED
        except Exception as err:  # a bug: one line, not a traceback
            log(f"internal error: {type(err).__name__}: {err}")
            code = EXIT_FAILED
        sys.exit(code)


def run_handler(parser: HandlerParser, act: Act, max_bytes: int = MAX_EVENT_BYTES) -> None:
    """Parse the options, read and normalise the event (at most ``max_bytes``), call ``act`` and
    exit with its code."""
    _Adapter(parser, act, max_bytes).run()
