"""Option value types shared by the checks, handlers and tools: each turns a bad value into one
clear argparse error line.

Every value is checked where it is parsed, before anything connects or changes: numbers are
finite and within bounds, whole numbers are whole, a URI or a directory is never empty, a domain
name is valid UTF-8 without control characters, a duration on a destructive command carries its
unit. ``StrictParsing`` refuses any other value that is not valid UTF-8 (argv is decoded with
surrogateescape), and ``one_line`` keeps every message on one line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from sensu_kvm.durations import parse_duration
from sensu_kvm.output import format_number
from sensu_kvm.ranges import Range, RangeError

__all__ = ["ListenAddress", "StrictParsing", "address_arg", "count_arg", "domain_arg", "duration_arg", "duration_range",
           "listen_arg", "metric_prefix_arg", "name_arg", "number_arg", "one_line", "path_arg", "positive_arg", "range_arg",
           "regex_arg", "seconds_arg", "shown", "state_dir_arg", "strict_duration_arg", "text_arg", "uri_arg", "whole_arg"]

# compiled on first use only (re's own cache): it costs 0.6 ms, and only messages about bad input need it
_CONTROL = r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]"


def _has_control(text: str) -> bool:
    """Whether ``text`` holds a character _CONTROL matches (checked without compiling it)."""
    return any(c < " " or "\x7f" <= c <= "\x9f" or "\ud800" <= c <= "\udfff" or c in "\u2028\u2029" for c in text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as surrogateescape decoded it
        return f"\\x{code - 0xDC00:02x}"
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def one_line(text: str) -> str:
    """``text`` with every control character, line break and undecodable byte escaped: a message
    that holds a value from outside stays one line and never writes raw bytes to a terminal."""
    return re.sub(_CONTROL, _escape, text)


def shown(text: str, limit: int = 60) -> str:
    """A value from the command line, quoted for a message: escaped, and cut when very long."""
    safe = one_line(text)
    if len(safe) > limit:
        safe = safe[:limit] + f"... ({len(text)} characters)"
    return f"'{safe}'"


def valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_control(text: str, what: str) -> str:
    if not valid_utf8(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not valid UTF-8: {what} must be")
    if _has_control(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} contains control characters, which no {what} may hold")
    return text


def name_check(text: str, what: str) -> str | None:
    """Why ``text`` cannot be a domain (or snapshot) name, or None: empty, not valid UTF-8, or
    holding control characters (libvirt itself refuses a newline in a name)."""
    if not text or not text.strip():
        return f"empty {what}"
    if not valid_utf8(text):
        return f"{what} {shown(text)} is not valid UTF-8"
    if _has_control(text):
        return f"{what} {shown(text)} contains control characters"
    return None


def domain_arg(text: str) -> str:
    """A domain name (or UUID, or ID where a tool accepts them)."""
    problem = name_check(text, "domain name")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def name_arg(text: str) -> str:
    """A snapshot or other object name."""
    problem = name_check(text, "name")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def text_arg(text: str) -> str:
    """Free text (a description): any characters, but valid UTF-8."""
    if not valid_utf8(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not valid UTF-8")
    return text


# patterns, not compiled objects: re compiles each on first use (its cache), not at every check's import
_METRIC_PATH = r"[A-Za-z0-9_:.-]+"


def metric_prefix_arg(text: str) -> str:
    """A Graphite path prefix: letters, digits and ``_ : . -`` only (a space or a line break would
    split the metric lines, and forge others)."""
    if not re.fullmatch(_METRIC_PATH, text) or text.startswith(".") or text.endswith(".") or ".." in text:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a Graphite path: use letters, digits, '_', ':', '-' "
                                         "and dots between them (such as kvm.dc1.host7)")
    return text


def uri_arg(text: str) -> str:
    """A libvirt URI: never empty (libvirt would take '' for its default, the real host)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty URI: give one such as qemu:///system, or leave -u out for the default")
    return _no_control(text, "URI")


def path_arg(text: str) -> str:
    """A file or folder named on the command line: not empty, valid UTF-8, no control characters."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return _no_control(text, "path")


def state_dir_arg(text: str) -> str:
    """A state directory: not empty, made absolute and normalised (never the current directory by
    accident)."""
    return os.path.abspath(path_arg(text))


def range_arg(text: str) -> Range:
    try:
        return Range.parse(text)
    except RangeError as err:
        raise argparse.ArgumentTypeError(one_line(str(err))) from None


def regex_arg(text: str) -> re.Pattern[str]:
    if not valid_utf8(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not valid UTF-8")
    try:
        return re.compile(text)
    except (re.error, OverflowError, RecursionError) as err:
        raise argparse.ArgumentTypeError(f"invalid regular expression {shown(text)}: {one_line(str(err))}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number")
    return value


def number_arg(maximum: float, unit: str = "", minimum: float = 0.0) -> Callable[[str], float]:
    """A finite number above ``minimum`` and at most ``maximum`` (the bound keeps a value from
    overflowing the C types libvirt and the kernel take)."""
    words = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        value = _float(text, "a number")
        if not minimum < value <= maximum:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not above {format_number(minimum)} and at most "
                                             f"{format_number(maximum)}{words}")
        return value

    parse.__name__ = "number"
    return parse


def seconds_arg(text: str) -> float:
    value = _float(text, "a number of seconds")
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not between 0 and 86400 seconds")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number") from None


MAX_COUNT = 10**9  # no count here is larger; a bound keeps huge numbers out of messages and C calls


def _bounded(text: str, minimum: int) -> int:
    value = _whole(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{shown(text)} is below {minimum}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{shown(text)} is above {MAX_COUNT}")
    return value


def count_arg(text: str) -> int:
    """A whole number >= 0 (at most a billion)."""
    return _bounded(text, 0)


MAX_CONCURRENCY = 64  # libvirtd's own default max_workers is 20


def concurrency_arg(text: str) -> int:
    """A number of concurrent libvirt calls: 1 to 64."""
    value = _bounded(text, 1)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"{shown(text)} is above {MAX_CONCURRENCY}")
    return value


def whole_arg(text: str) -> int:
    """A whole number >= 1 (at most a billion)."""
    return _bounded(text, 1)


MIN_OUTPUT_BYTES = 1024  # the status line (480 bytes), the left-out note and some perfdata


def output_bytes_arg(text: str) -> int:
    """A whole number of bytes for --max-output: at least MIN_OUTPUT_BYTES."""
    return _bounded(text, MIN_OUTPUT_BYTES)


def positive_arg(text: str) -> float:
    """A finite number above 0 (at most 1e9)."""
    return number_arg(1e9)(text)


_BARE_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
MAX_DURATION = 1000 * 366 * 86400  # a millennium: any longer is a typo (and may overflow)


def duration_arg(text: str) -> float:
    """A duration such as 30s, 90m, 12h, 3d, 1w or 1d12h (or a bare number of seconds), in seconds."""
    if not valid_utf8(text):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not valid UTF-8")
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(one_line(str(err))) from None
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{shown(text)} is longer than a thousand years")
    return seconds


def strict_duration_arg(text: str) -> float:
    """A duration that must carry its unit (``3d``, not ``3``): for options of commands that
    delete, where a bare number taken as seconds would delete far more than meant."""
    if re.fullmatch(_BARE_NUMBER, text.strip()):
        raise argparse.ArgumentTypeError(f"{shown(text)} has no unit: add s, m, h, d or w (such as 3d, 12h or 90m)")
    return duration_arg(text)


def duration_range(text: str) -> Range:
    """A threshold given as a duration ('3d'): alert above it; perfdata in seconds."""
    seconds = duration_arg(text)
    return Range(0.0, seconds, False, format_number(seconds))


_HOST_PORT = r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*):(?P<port>[0-9]{1,5})"
_URL = r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?(/[!-~]*)?"


def address_kind(text: str) -> str | None:
    """'sensu' for HOST:PORT (the Core client socket), 'sensu-go' for an http(s) URL (the Go
    agent's events API), None for anything else."""
    match = re.fullmatch(_HOST_PORT, text)
    if match:
        return "sensu" if 1 <= int(match.group("port")) <= 65535 else None
    match = re.fullmatch(_URL, text)
    if match:
        port = match.group(2)
        return "sensu-go" if port is None or 1 <= int(port[1:]) <= 65535 else None
    return None


def address_arg(text: str) -> str:
    """Where per-domain results go: HOST:PORT or an http(s) URL (checked against --per-domain
    after parsing)."""
    if address_kind(text) is None:
        raise argparse.ArgumentTypeError(f"{shown(text)} is neither HOST:PORT (port 1-65535, such as 127.0.0.1:3030) "
                                         "nor an http(s) URL (such as http://127.0.0.1:3031/events)")
    return text


class ListenAddress(NamedTuple):
    """Where a server listens: a host (an IPv4 or IPv6 address, or a name), a port, and whether
    the host is an IPv6 address (given in brackets)."""

    host: str
    port: int
    ipv6: bool

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"


_LISTEN = r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)):(?P<port>[0-9]{1,5})"


def listen_arg(text: str) -> ListenAddress:
    """HOST:PORT or [IPv6]:PORT (port 1-65535), such as 127.0.0.1:9177, [::1]:9177 or 0.0.0.0:9177."""
    import ipaddress  # noqa: PLC0415 (only a server needs it)

    usage = "such as 127.0.0.1:9177, [::1]:9177, 0.0.0.0:9177 (every IPv4 address) or [::]:9177"
    match = re.fullmatch(_LISTEN, text)
    if match is None:
        hint = " (an IPv6 address goes in brackets)" if re.fullmatch(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9]+", text) else ""
        raise argparse.ArgumentTypeError(f"{shown(text)} is not HOST:PORT or [IPv6]:PORT{hint}, {usage}")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{shown(text)}: the port must be 1-65535, {usage}")
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(match.group("v6"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)}: {shown(match.group('v6'))} is not an IPv6 address, "
                                             f"{usage}") from None
        return ListenAddress(str(ipaddress.IPv6Address(match.group("v6"))), port, True)
    host = match.group("host")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)}: {shown(host)} is not an IPv4 address, {usage}") from None
    return ListenAddress(host, port, False)


def _values(value: Any) -> Sequence[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, re.Pattern):
        return [value.pattern] if isinstance(value.pattern, str) else []
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _values(item)]
    return []


class StrictParsing(argparse.ArgumentParser):
    """An argparse parser whose parsed values are all valid UTF-8, and whose one error line keeps
    to one line; subclasses say how to exit (``fail``)."""

    def fail(self, message: str) -> NoReturn:
        raise NotImplementedError

    def error(self, message: str) -> NoReturn:
        self.fail(one_line(message))

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        options, rest = super().parse_known_args(args, namespace)
        for dest, value in vars(options).items():
            for text in _values(value):
                if not valid_utf8(text):
                    flag = next((a.option_strings[-1] if a.option_strings else (a.metavar or a.dest)
                                 for a in self._actions if a.dest == dest), dest)
                    self.error(f"argument {flag}: {shown(text)} is not valid UTF-8")
        return options, rest
