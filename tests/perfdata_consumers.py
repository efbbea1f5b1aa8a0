"""How three consumers read a check's output, each written after its own source.

* :func:`sensu_go` stands in for the Sensu Go agent's ``nagios_perfdata`` extraction, which
  cannot run here (Sensu Go has no Debian package): it follows ``ParseNagios`` in sensu-go
  agent/transformers/nagios.go line by line. The whole output is split on ``|`` and must give
  exactly two parts; the rest is split on single spaces only (a line break glues two items);
  everything after ``;`` is dropped; quotes stay in the label; spaces in it become ``_``.
* :func:`nagios4` follows ``parse_check_output`` of Nagios Core 4.4.6 (base/checks.c, the version
  of Debian 12's nagios4): the first line up to its first ``|`` is the short output; the next
  lines are long output until a line holds ``|``; from there on, everything is perfdata.
* :func:`icinga2` follows Icinga 2.13's ``PluginUtility::ParseCheckOutput`` and ``SplitPerfdata``
  (lib/icinga/pluginutility.cpp) and ``PerfdataValue::Parse`` (lib/base/perfdatavalue.cpp),
  which every perfdata writer calls: a value it refuses is what the writers log as "Ignoring
  invalid perfdata".

The real nagios4 and icinga2 run the checks elsewhere in the suite (tests/services); these
parsers let every check's output, for every hostile name and for 1,000 domains, be read the way
each consumer reads it without starting a daemon per case.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

# --- Sensu Go (agent/transformers/nagios.go) -----------------------------------------------------


def _go_is_space(char: str) -> bool:
    """Go's unicode.IsSpace: '\\t', '\\n', '\\v', '\\f', '\\r', ' ', U+0085, U+00A0 and category Z."""
    return char in "\t\n\v\f\r \x85\xa0" or unicodedata.category(char) in ("Zs", "Zl", "Zp")


def _go_trim_space(text: str) -> str:
    """strings.TrimSpace."""
    start, end = 0, len(text)
    while start < end and _go_is_space(text[start]):
        start += 1
    while end > start and _go_is_space(text[end - 1]):
        end -= 1
    return text[start:end]


_GO_NON_NUMERIC = re.compile(r"[^-0-9.]")  # `[^-\d\.]`: RE2's \d is ASCII
_GO_FLOAT = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)\Z")  # what strconv.ParseFloat takes of [-0-9.]


class SensuGo(NamedTuple):
    points: list[tuple[str, float]]  # (label, value) of every metric point
    errors: list[str]  # what the agent logs (ErrMetricExtraction)


def sensu_go(output: str) -> SensuGo:
    """The metric points the Sensu Go agent extracts with output_metric_format nagios_perfdata."""
    points: list[tuple[str, float]] = []
    errors: list[str] = []
    parts = output.split("|")
    if len(parts) != 2:
        return SensuGo(points, ["nagios perfdata format requires at least one performance data metric"])
    perfdata = _go_trim_space(parts[1])
    for token in perfdata.split(" "):
        metric = _go_trim_space(token)
        if not metric:
            continue
        fields = metric.split(";")[0].split("=")
        if len(fields) != 2:
            errors.append(f"invalid nagios perfdata metric: {metric!r}")
            continue
        label = fields[0].replace(" ", "_")
        digits = _GO_NON_NUMERIC.sub("", fields[1])
        if not _GO_FLOAT.match(digits):
            errors.append(f"invalid nagios perfdata metric value: {fields[1]!r}")
            continue
        points.append((label, float(digits)))
    return SensuGo(points, errors)


# --- Nagios Core 4.4.6 (base/checks.c parse_check_output) ----------------------------------------


def _nagios_strip(text: str) -> str:
    """common/shared.c strip(): spaces, tabs, CR and LF at both ends."""
    return text.strip(" \t\r\n")


class Nagios(NamedTuple):
    short: str  # plugin_output
    long: str  # long_plugin_output (before Nagios escapes its newlines)
    perf: str  # perf_data


def nagios4(output: str) -> Nagios:
    """Short output, long output and perfdata as Nagios 4 records them."""
    short, long_parts, perf = "", [], ""
    in_perf = False
    lines = output.split("\n")
    if lines and lines[-1] == "":  # the loop ends at the NUL after the last newline
        lines.pop()
    for number, line in enumerate(lines, 1):
        if number == 1:
            before, bar, after = line.partition("|")
            short = _nagios_strip(before)
            if bar and after:
                perf += after
        elif in_perf:
            perf += (" " if perf else "") + line
        elif "|" in line:
            in_perf = True
            before, _bar, after = line.partition("|")
            long_parts.append(before)
            if after:
                perf += (" " if perf else "") + after
        else:
            long_parts.append(line)
    return Nagios(short, "\n".join(long_parts), _nagios_strip(perf))


# --- Icinga 2.13 (lib/icinga/pluginutility.cpp, lib/base/perfdatavalue.cpp) ----------------------


class Icinga2(NamedTuple):
    text: str  # the check result's output
    perfdata: list[str]  # SplitPerfdata's items, as the check result keeps them


def icinga2(output: str) -> Icinga2:
    """PluginCheckTask: Trim(), ParseCheckOutput, SplitPerfdata."""
    text, perfdata = "", ""
    for line in re.split(r"[\r\n]", output.strip(" \t\n\v\f\r")):  # String::Split("\r\n"): any of them
        delim = line.find("|")
        if text:
            text += "\n"
        if delim != -1 and line.find("=", delim) != -1:
            text += line[:delim]
            if perfdata:
                perfdata += " "
            perfdata += line[delim + 1:]
        else:
            text += line
    return Icinga2(text, split_perfdata(perfdata.strip(" \t\n\v\f\r")))


def split_perfdata(perfdata: str) -> list[str]:
    """PluginUtility::SplitPerfdata, with its check_multi '::' prefix rule."""
    result: list[str] = []
    begin, multi_prefix = 0, ""
    while True:
        eqp = perfdata.find("=", begin)
        if eqp == -1:
            break
        label = perfdata[begin:eqp]
        if len(label) > 2 and label[0] == "'" and label[-1] == "'":
            label = label[1:-1]
        multi_index = label.rfind("::")
        if multi_index != -1:
            multi_prefix = ""
        spq = perfdata.find(" ", eqp)
        if spq == -1:
            spq = len(perfdata)
        value = perfdata[eqp + 1:spq]
        if multi_prefix:
            label = multi_prefix + "::" + label
        result.append(f"'{label}'={value}" if " " in label else f"{label}={value}")
        if multi_index != -1:
            multi_prefix = label[:multi_index]
        begin = spq + 1
    return result


_LEXICAL_DOUBLE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z|[+-]?(inf|infinity|nan)\Z", re.I)


def _to_double(text: str) -> float:
    """boost::lexical_cast<double>, which Convert::ToDouble uses: the whole string or nothing."""
    if not _LEXICAL_DOUBLE.match(text):
        raise ValueError(f"Can't convert '{text}' to a floating point number.")
    return float(text)


class PerfdataValue(NamedTuple):
    label: str
    value: float
    unit: str  # as written: Icinga 2 maps it to its own units and drops one it does not know (never refused)
    warn: float | None
    crit: float | None
    min: float | None
    max: float | None


def _threshold(tokens: list[str], index: int) -> float | None:
    """ParseWarnCritMinMaxToken: a plain number, else nothing (a range such as '10:' is ignored)."""
    if len(tokens) > index and tokens[index] not in ("U", "") and not set(tokens[index]) - set("+-0123456789.eE"):
        return _to_double(tokens[index])
    return None


def parse_value(item: str) -> PerfdataValue:
    """PerfdataValue::Parse; ValueError where Icinga 2 throws (the writers' "Ignoring invalid
    perfdata")."""
    eqp = item.rfind("=")
    if eqp == -1:
        raise ValueError(f"Invalid performance data value: {item}")
    label = item[:eqp]
    if len(label) > 2 and label[0] == "'" and label[-1] == "'":
        label = label[1:-1]
    spq = item.find(" ", eqp)
    value_text = item[eqp + 1:] if spq == -1 else item[eqp + 1:spq]
    tokens = value_text.split(";")
    if "," in value_text or not tokens:
        raise ValueError(f"Invalid performance data value: {item}")
    last = max(tokens[0].rfind(c) for c in "0123456789.")
    number = tokens[0][:last + 1] if last != -1 else tokens[0]
    unit = tokens[0][last + 1:] if last != -1 else ""
    return PerfdataValue(label, _to_double(number), unit,
                         _threshold(tokens, 1), _threshold(tokens, 2), _threshold(tokens, 3), _threshold(tokens, 4))


# --- the layout of sensu_kvm.output, for tests that look at one item -------------------------------


def text_lines(output: str) -> list[str]:
    """The text lines of a check's output: everything before its only ``|``, line by line."""
    text = output.partition("|")[0]
    return text.rstrip(" \n").split("\n")


def perfdata(output: str) -> dict[str, str]:
    """Each perfdata item of a check's output, label -> ``value[UOM];warn;crit;min;max``."""
    items = output.partition("|")[2].split()
    return dict(item.split("=", 1) for item in items)


FIRST_LINE_MAX = 512  # the status line's budget (sensu_kvm.output.FIRST_LINE_BYTES after "<Check> <STATE>: ")


def taken_whole(output: str) -> list[str]:
    """Assert that every consumer reads the output whole; the perfdata items."""
    assert output.count("|") <= 1, output
    lines = text_lines(output)
    items = output.partition("|")[2].split()
    labels = [item.split("=", 1)[0] for item in items]
    assert len(lines[0].encode()) <= FIRST_LINE_MAX, lines[0]
    assert len(set(labels)) == len(labels), sorted(label for label in labels if labels.count(label) > 1)

    go = sensu_go(output)
    if items:
        assert go.errors == [], go.errors
    assert [label for label, _value in go.points] == labels

    nagios = nagios4(output)
    assert nagios.short == lines[0]
    assert nagios.long.rstrip("\n") == "\n".join(lines[1:])
    assert nagios.perf == " ".join(items)

    icinga = icinga2(output)
    assert icinga.text.rstrip() == "\n".join(lines)
    assert icinga.perfdata == items
    for value in map(parse_value, icinga.perfdata):  # raises where Icinga 2 logs "Ignoring invalid perfdata"
        assert value.label in labels
        assert value.min is None or value.value >= value.min, value
        assert value.max is None or value.value <= value.max, value
    return items
