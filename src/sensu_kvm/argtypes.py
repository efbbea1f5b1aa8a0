"""Option value types shared by the checks, handlers and tools: each turns a bad value into one
clear argparse error line."""

from __future__ import annotations

import argparse
import re

from sensu_kvm.durations import parse_duration
from sensu_kvm.output import format_number
from sensu_kvm.ranges import Range, RangeError

__all__ = ["count_arg", "duration_arg", "duration_range", "positive_arg", "range_arg", "regex_arg", "seconds_arg"]


def range_arg(text: str) -> Range:
    try:
        return Range.parse(text)
    except RangeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def regex_arg(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"invalid regular expression '{text}': {err}") from None


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"'{text}' is not between 0 and 86400 seconds")
    return value


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is below 0")
    return value


def positive_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not above 0")
    return value


def duration_arg(text: str) -> float:
    """A duration such as 30s, 90m, 12h, 3d, 1w or 1d12h, in seconds."""
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def duration_range(text: str) -> Range:
    """A threshold given as a duration ('3d'): alert above it; perfdata in seconds."""
    seconds = duration_arg(text)
    return Range(0.0, seconds, False, format_number(seconds))
