"""The base of every check: the shared option parser, the sensu-plugin adapter and the watchdog.

sensu-plugin is the base of the checks by the user's choice; why it is wrapped, and how, is
decision D1 in docs/decisions.md. It is used through this module only, and its defects stay here:

* it parses with ``parse_known_args`` and ignores unknown options: we refuse them, exit 3;
* argparse exits 2 on a bad option: our parser prints one line and exits 3;
* a crash makes it print a list of traceback lines and exit 2: we catch everything and exit 3
  with the exception's message;
* ``import sensu_plugin`` runs its ``__init__``, which imports its handler and thereby
  ``requests`` (~80 ms on every check run): checks load only the modules they use;
* its ``plugin`` module imports ``traceback`` (with ``linecache``, ``tokenize`` and ``textwrap``,
  ~4 ms a run) for the crash report that this adapter replaces: the module is loaded on first
  use instead.

The last two are done by putting stand-ins into ``sys.modules`` before sensu-plugin is imported
(``_load_sensu_plugin_check``, the only place in the project that changes ``sys.modules``; each
change is commented where it is made).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sensu_kvm import STATE_DIR as DEFAULT_STATE_DIR
from sensu_kvm import __version__, activity
from sensu_kvm.argtypes import (
    StrictParsing,
    address_arg,
    address_kind,
    concurrency_arg,
    domain_arg,
    name_arg,
    one_line,
    output_bytes_arg,
    range_arg,
    regex_arg,
    seconds_arg,
    state_dir_arg,
    uri_arg,
    whole_arg,
)
from sensu_kvm.errors import KvmError
from sensu_kvm.names import visible
from sensu_kvm.output import Report, Status
from sensu_kvm.ranges import Range


class _OnFirstUse(types.ModuleType):
    """A stand-in that imports the real module when one of its attributes is first read, once.

    Whoever imported the stand-in keeps it; every attribute is then read from the real module,
    which is also what ``sys.modules`` holds from then on.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._real: types.ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:  # only for what the stand-in itself lacks
        real = self._real
        if real is None:
            if sys.modules.get(self.__name__) is self:
                # The stand-in leaves sys.modules, or the import below would return it again.
                del sys.modules[self.__name__]
            real = self._real = __import__(self.__name__)
        return getattr(real, attribute)


def _load_sensu_plugin_check() -> Any:
    if "traceback" not in sys.modules:
        # sensu_plugin.plugin imports traceback only for the crash report this adapter replaces:
        # a stand-in defers its import (~4 ms a run) to the first use, if any (decision D1).
        sys.modules["traceback"] = _OnFirstUse("traceback")
    if "sensu_plugin" not in sys.modules:
        where = next((os.path.join(entry, "sensu_plugin") for entry in sys.path
                      if os.path.isfile(os.path.join(entry or ".", "sensu_plugin", "check.py"))), None)
        if where is None:
            raise ImportError("the sensu-plugin package is not installed")
        package = types.ModuleType("sensu_plugin")
        package.__path__ = [where]
        # An empty package in place of sensu_plugin, so that sensu_plugin.check imports without
        # running the package's __init__, which imports its handler and requests (~80 ms a run).
        sys.modules["sensu_plugin"] = package
    from sensu_plugin.check import SensuPluginCheck  # noqa: PLC0415 (after the package stand-in)

    return SensuPluginCheck


SensuPluginCheck = _load_sensu_plugin_check()

EXIT_USAGE = Status.UNKNOWN.value


class CheckParser(StrictParsing):
    """argparse that reports a bad command line in one line and exits 3 (UNKNOWN)."""

    def fail(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def add_thresholds(parser: argparse.ArgumentParser, short: tuple[str, str] | None, name: str, what: str,
                   warning: str | None = None, critical: str | None = None) -> None:
    """A pair of range options, ``--NAME-warning``/``--NAME-critical`` (or -w/-c), with defaults."""
    what = what.replace("%", "%%")  # argparse %-formats help strings
    for level, default, letter in (("warning", warning, short and short[0]), ("critical", critical, short and short[1])):
        flags = [letter, f"--{level}"] if letter else [f"--{name}-{level}"]
        shown = f" (default: {default})" if default else ""
        parser.add_argument(*flags, type=range_arg, metavar="RANGE", default=None if default is None else Range.parse(default),
                            dest=f"{name.replace('-', '_')}_{level}" if not letter else level,
                            help=f"{level} range for {what}{shown}")


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter with the width found here: its own lookup imports shutil, on every run."""
    try:
        width = os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        width = int(os.environ.get("COLUMNS", "0") or 0) or 80
    return argparse.RawDescriptionHelpFormatter(prog, width=max(width, 40) - 2)


def build_parser(prog: str, description: str, examples: str, *, thresholds: str | None = None,
                 warning: str | None = None, critical: str | None = None, rates: bool = False,
                 domains: bool = True, state_dir: bool = True) -> CheckParser:
    """The options every check shares.

    ``thresholds`` says what -w/-c judge (None: no -w/-c), with optional default ranges;
    ``rates`` adds --state-dir and --interval for checks that compute rates between runs;
    ``domains`` (the default) adds -u, -d, --match, --exclude and the --per-domain options, which a
    guest-side check lacks, and --state-dir for what --per-domain keeps unless ``state_dir`` is
    false (a check whose --state-dir means something else).
    """
    parser = CheckParser(
        prog=prog,
        description=description,
        epilog="examples:\n" + examples.rstrip() + "\n\n"
        "Ranges follow the monitoring-plugins grammar [@][start:][end]: '10' alerts outside 0..10,\n"
        "'10:' below 10, '~:10' above 10, '@10:20' inside 10..20.\n"
        "Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    if domains:
        parser.add_argument("-u", "--uri", type=uri_arg, help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
        parser.add_argument("-d", "--domain", type=domain_arg, action="append", default=[], metavar="NAME",
                            help="only this domain; repeat for more (a named domain that is missing is CRITICAL)")
        parser.add_argument("--match", type=regex_arg, metavar="REGEX", help="only domains whose name matches REGEX")
        parser.add_argument("--exclude", type=regex_arg, metavar="REGEX", help="skip domains whose name matches REGEX")
        parser.add_argument("--concurrency", type=concurrency_arg, metavar="CALLS",
                            help="libvirt calls made at once, each for a chunk of the domains or one domain "
                                 "(default: what libvirtd serves one client at once, max_client_requests in "
                                 "/etc/libvirt/libvirtd.conf, else 5)")
        parser.add_argument("--per-domain", choices=("sensu", "sensu-go"),
                            help="also send one result per domain, as a proxy client named after it: to the Sensu "
                                 "Core client socket (sensu) or the Sensu Go agent's events API (sensu-go)")
        parser.add_argument("--per-domain-address", type=address_arg, metavar="ADDRESS",
                            help="where to send them: HOST:PORT for sensu (default: 127.0.0.1:3030), an http(s) "
                                 "URL for sensu-go (default: http://127.0.0.1:3031/events)")
        parser.add_argument("--per-domain-handler", type=name_arg, action="append", default=[], metavar="NAME",
                            help="handler for the per-domain results (repeatable; default: the agent's)")
        parser.add_argument("--per-domain-interval", type=whole_arg, default=60, metavar="SECONDS",
                            help="the check's interval, sent with each per-domain result (default: 60)")
        parser.add_argument("--per-domain-ttl", type=whole_arg, metavar="SECONDS",
                            help="Sensu raises a WARNING for a guest whose result is older than this (default: "
                                 "three intervals); a guest that is gone gets a last OK result instead")
        parser.add_argument("--per-domain-occurrences", type=whole_arg, metavar="N",
                            help="the per-domain results alert after N occurrences (Sensu's occurrences filter)")
        parser.add_argument("--per-domain-refresh", type=whole_arg, metavar="SECONDS",
                            help="... and again every SECONDS while they last")
    if thresholds is not None:
        add_thresholds(parser, ("-w", "-c"), "", thresholds, warning, critical)
    if rates:
        parser.add_argument("--state-dir", type=state_dir_arg, default=DEFAULT_STATE_DIR, metavar="DIR",
                            help=f"where samples are kept between runs, for rates, and with --per-domain the proxy "
                                 f"clients sent results (default: {DEFAULT_STATE_DIR})")
    elif domains and state_dir:
        parser.add_argument("--state-dir", type=state_dir_arg, default=DEFAULT_STATE_DIR, metavar="DIR",
                            help="with --per-domain: where the proxy clients sent results are kept, so that a guest "
                                 f"that is gone gets a last OK result (default: {DEFAULT_STATE_DIR})")
    if rates:
        parser.add_argument("--interval", type=seconds_arg, metavar="SECONDS",
                            help="take two samples this far apart now instead of using the previous run's")
    parser.add_argument("-t", "--timeout", type=seconds_arg, default=10.0, metavar="SECONDS",
                        help="report within this long (default: 10): reading stops a fifth before it (at "
                             "most 3 s), what was measured is judged and the domains not read are UNKNOWN, "
                             "named with the phase that ran out of time; a call that still blocks at the end "
                             "gives one UNKNOWN line")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line for everything judged, not only what is not OK")
    parser.add_argument("--max-output", type=output_bytes_arg, metavar="BYTES",
                        help="print at most this many bytes, for a scheduler that cuts long output (nagios4 keeps "
                             "8 KB: the shipped Nagios definitions set 8000): the worst detail lines that fit, a line "
                             "saying what was left out, and only the aggregate perfdata (counts, <metric>_max) instead "
                             "of every domain's (default: all of it)")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def select(names: Sequence[str], options: argparse.Namespace) -> list[str]:
    """The names that -d, --match and --exclude let through, in the order given."""
    chosen = [n for n in names if n in options.domain] if options.domain else list(names)
    if options.match is not None:
        chosen = [n for n in chosen if options.match.search(n)]
    if options.exclude is not None:
        chosen = [n for n in chosen if not options.exclude.search(n)]
    return chosen


class Watchdog:
    """Print the UNKNOWN line and end the process after ``seconds``, whatever blocks.

    A Python signal handler never runs while a libvirt C call blocks; another thread does
    (libvirt-python releases the GIL while it waits). A bare ``_thread`` keeps ``threading``'s
    import off the path of every check run.

    ``raw`` is (prog, stdout text) for a metrics command: its timeout writes that text (the
    format's own "down", or nothing) on stdout and ``prog: timed out ...`` on stderr, never a
    status line a consumer would take for data. The lock keeps the timeout from writing while
    the command prints its output, or after it.
    """

    def __init__(self, name: str, seconds: float, raw: tuple[str, str] | None = None) -> None:
        activity.set_budget(seconds - activity.reserve(seconds))
        self.cancelled = False
        self._lock = _thread.allocate_lock()
        _thread.start_new_thread(self._fire, (name, seconds, raw))

    def _fire(self, name: str, seconds: float, raw: tuple[str, str] | None) -> None:
        time.sleep(seconds)
        with self._lock:
            if self.cancelled:
                return
            message = f"timed out after {seconds:g}s while {visible(activity.current())}"
            if raw is None:
                sys.stdout.write(f"{name} UNKNOWN: {message}\n")
            else:
                fail_raw(raw[0], message, raw[1])
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(Status.UNKNOWN.value)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True


def fail_raw(prog: str, message: str, text: str) -> None:
    """How a metrics command fails: ``text`` (the format's own way of saying "down", or nothing)
    on stdout, flushed first, then ``prog: message`` on stderr."""
    if text:
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"{prog}: {one_line(message)}\n")


Body = Callable[[argparse.Namespace], Report]
# What a metrics command prints on stdout when it fails (see run_check).
Failure = Callable[[argparse.Namespace], str]
# A long-running mode of a command (metrics-kvm --listen): given the parser and the options, the
# exit code when it ran instead of the one-shot body, None when it was not asked for (see run_check).
Resident = Callable[[CheckParser, argparse.Namespace], "int | None"]


def per_domain_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """--per-domain-address and --per-domain-handler only with --per-domain, and an address of
    the kind it sends to: checked before the check runs, so a typo never hides its verdict."""
    kind = getattr(options, "per_domain", None)
    address = getattr(options, "per_domain_address", None)
    if kind is None:
        given = [flag for flag, value in (("--per-domain-address", address),
                                          ("--per-domain-handler", getattr(options, "per_domain_handler", None)),
                                          ("--per-domain-ttl", getattr(options, "per_domain_ttl", None)),
                                          ("--per-domain-occurrences", getattr(options, "per_domain_occurrences", None)),
                                          ("--per-domain-refresh", getattr(options, "per_domain_refresh", None)))
                 if value]
        if given:
            parser.error(f"{given[0]} needs --per-domain sensu or --per-domain sensu-go")
        return
    ttl = options.per_domain_ttl
    if ttl is not None and ttl <= options.per_domain_interval:
        parser.error("argument --per-domain-ttl: must be above --per-domain-interval "
                     f"({options.per_domain_interval}), or every guest's result goes stale between two runs")
    if address is not None and address_kind(address) != kind:
        wanted = "HOST:PORT, such as 127.0.0.1:3030" if kind == "sensu" else "an http(s) URL, such as http://127.0.0.1:3031/events"
        parser.error(f"argument --per-domain-address: --per-domain {kind} sends to {wanted}")


class _Adapter(SensuPluginCheck):  # type: ignore[misc,valid-type]
    def __init__(self, name: str, parser: CheckParser, body: Body, failure: Failure | None = None,
                 resident: Resident | None = None) -> None:
        self._name = name
        self._own_parser = parser
        self._body = body
        self._failure = failure
        self._resident = resident
        try:
            super().__init__(autorun=True)
        except Exception as err:  # raised while parsing, before run(): sensu-plugin would exit 2
            message = f"internal error: {type(err).__name__}: {err}"
            if failure is None:
                print(f"{name} UNKNOWN: {message}")
            else:
                fail_raw(parser.prog, message, "")
            sys.exit(Status.UNKNOWN.value)

    def setup(self) -> None:
        self.parser = self._own_parser

    def _fail(self, message: str, text: str) -> NoReturn:
        """UNKNOWN: a check's status line; a metrics command's error on stderr (fail_raw)."""
        if self._failure is None:
            self.unknown(visible(message))  # prints the status line and exits 3
        else:
            fail_raw(self._own_parser.prog, message, text)
        sys.exit(Status.UNKNOWN.value)

    def run(self) -> None:
        if self.remain:
            self.parser.error(f"unrecognized arguments: {' '.join(self.remain)}")
        per_domain_options(self.parser, self.options)
        self.check_name(self._name)
        if hasattr(self.options, "uri"):  # a libvirt check (a guest-side one never imports libvirt)
            from sensu_kvm.virt.stats import set_concurrency  # noqa: PLC0415

            set_concurrency(self.options.concurrency, self.options.uri)
        if self._resident is not None:
            self._run_resident(self._resident)
        failed = "" if self._failure is None else self._failure(self.options)
        raw = None if self._failure is None else (self._own_parser.prog, failed)
        watchdog = Watchdog(self._name, self.options.timeout, raw)
        try:
            report = self._body(self.options)
        except KvmError as err:
            watchdog.cancel()
            self._fail(str(err), failed)
        except Exception as err:  # a bug must still give one UNKNOWN line, not a traceback
            watchdog.cancel()
            self._fail(f"internal error: {type(err).__name__}: {err}", failed)
        if getattr(self.options, "per_domain", None) and not report.raw and (
                report.findings or report.status is not Status.UNKNOWN):
            report = self._send_per_domain(report)  # no findings, not UNKNOWN: no domains, and those sent before are gone
        watchdog.cancel()
        if report.raw:  # metrics: the data on stdout, what went wrong (details) on stderr
            if report.summary:
                print(report.summary)
            sys.stdout.flush()
            for line in report.details:
                sys.stderr.write(f"{self._own_parser.prog}: {one_line(line)}\n")
            sys.exit(report.status.value)
        prefix = len(f"{self._name} {report.status.name}: ".encode()) + 1  # what sensu-plugin adds: name, status, newline
        getattr(self, report.status.name.lower())(report.render(getattr(self.options, "max_output", None), prefix))

    def _run_resident(self, resident: Resident) -> None:
        """The long-running mode, if the options ask for it: no watchdog (it would end the server
        after -t; the mode bounds each of its requests by -t itself), exit with its code."""
        try:
            code = resident(self._own_parser, self.options)
        except KvmError as err:
            self._fail(str(err), "")
        except Exception as err:  # a bug must still give one line, not a traceback
            self._fail(f"internal error: {type(err).__name__}: {err}", "")
        if code is not None:
            sys.exit(code)

    def _send_per_domain(self, report: Report) -> Report:
        """One result per domain to the Sensu agent, and a last OK one for each guest that is gone
        (sensu_kvm.proxies); the check's own status is not changed."""
        from sensu_kvm import proxies, results, virt  # noqa: PLC0415 (only with --per-domain)

        options = self.options
        activity.doing(f"sending per-domain results to the {options.per_domain} agent")
        address = options.per_domain_address or results.DEFAULT_ADDRESS[options.per_domain]
        directory = getattr(options, "state_dir", None) or DEFAULT_STATE_DIR
        note = ""
        try:
            outcome = proxies.deliver(options, self._own_parser.prog, self._name, report.findings, directory,
                                      virt.resolve_uri(options.uri), min(2.0, options.timeout / 4))
            failed, reason, note, tried = outcome.failed, outcome.reason, outcome.note, outcome.tried
        except Exception as err:  # never let the sending hide the check's own verdict
            failed, reason, tried = len(report.findings), f"{type(err).__name__}: {err}", len(report.findings)
        if failed:
            note = f"; {failed} of {tried} per-domain results not sent to {address}: {reason}" + note
        return report._replace(summary=report.summary + one_line(note)) if note else report


def run_check(name: str, parser: CheckParser, body: Body, failure: Failure | None = None,
              resident: Resident | None = None) -> None:
    """Run a check: parse, call ``body`` under the watchdog, print and exit with its status.

    ``failure`` makes it a metrics command, whose stdout a time-series database ingests: when it
    cannot do its job (an error, a bug, the timeout) it exits 3 with the error on stderr and on
    stdout only ``failure(options)`` (the format's own "down", or nothing), never a status line;
    its raw reports print their summary (the data) on stdout and their details on stderr.

    ``resident`` is a long-running mode of the command (metrics-kvm --listen), called once the
    options are parsed and before the watchdog starts: when it returns an exit code, the command
    ran as that and exits with it, with no watchdog; when it returns None, the one-shot body runs.

    The process ends with ``os._exit`` once the output is flushed: the interpreter's teardown
    (freeing every libvirt object, atexit handlers) costs ~10 ms a run and has nothing to do.
    """
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    code = Status.UNKNOWN.value
    try:
        _Adapter(name, parser, body, failure, resident)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
                stream.flush()
        os._exit(code)
