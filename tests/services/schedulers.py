"""What the Icinga 2 and nagios4 tests share: the cases (every check of the registry over the hostile
names of tests/data/nodes/names.xml and over 1,000 domains), the options each case sets on top of
the shipped definitions, the check's own run of the same command line, and a strict reader of
perfdata.

Perfdata is read as the monitoring-plugins guidelines (and Nagios 3+) define it: the items after
the first ``|`` of the first line, and in the long text, from the first line that holds a ``|``,
the rest of that line and every later line. An item is ``label=value[UOM];warn;crit;min;max``; a
label is quoted (``'...'``, a quote in it doubled) or holds no whitespace, quote, ``=`` or ``|``.
A label with control characters, a ``|`` among the items, or text that is no item makes the
output unreadable whole for some consumer: :func:`printed_items` says so instead of guessing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sensu_kvm.registry import BY_NAME, Access, Kind
from tests import nodes
from tests.conftest import BIN, node_uri, run
from tests.entrypoints import commands
from tests.services.nagios import owned_dir

MANY = 1000  # domains of the large node file
SCHEDULED = (Kind.CHECK, Kind.GUEST_CHECK)  # the kinds Icinga 2 and Nagios get definitions for
# One item: a label (quoted, or without whitespace, quote, '=' or '|'), '=', a value and up to four
# ';'-separated fields (warn, crit, min, max).
ITEM = re.compile(r"(?P<label>'(?:[^'\x00-\x1f\x7f]|'')+'|[^\s'=|\x00-\x1f\x7f]+)=(?P<data>[^\s|]*)")
VALUE = re.compile(r"(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|U)[A-Za-z%/]*(?:;[^;\s|]*){0,4}")


class UnreadablePerfdata(AssertionError):
    """The perfdata a check printed is not one that every consumer reads whole."""


def split_items(text: str) -> list[tuple[str, str]]:
    """``(label, data)`` of each item of a perfdata text (labels unquoted); raises on anything else."""
    found = []
    at = 0
    text = text.strip(" ")
    while at < len(text):
        match = ITEM.match(text, at)
        if match is None or not VALUE.fullmatch(match["data"]):
            raise UnreadablePerfdata(f"not a perfdata item at {text[at:at + 80]!r}")
        label = match["label"]
        if label.startswith("'"):
            label = label[1:-1].replace("''", "'")
        found.append((label, match["data"]))
        at = match.end()
        if at < len(text) and text[at] != " ":
            raise UnreadablePerfdata(f"no space after an item at {text[at - 20:at + 40]!r}")
        while at < len(text) and text[at] == " ":
            at += 1
    return found


def printed_items(output: str) -> list[tuple[str, str]]:
    """The perfdata items of a check's output, in order (see the module's docstring); none when it
    printed no '|'."""
    lines = output.rstrip("\n").split("\n")
    parts = []
    _, bar, perf = lines[0].partition("|")
    if bar:
        parts.append(perf)
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            parts.append(line)
        elif "|" in line:
            parts.append(line.split("|", 1)[1])
            in_perf = True
    for part in parts:
        if "|" in part:
            raise UnreadablePerfdata(f"a second '|' in the perfdata: {part[:200]!r}")
        if "\t" in part or "\r" in part:
            raise UnreadablePerfdata(f"a control character in the perfdata: {part[:200]!r}")
    items = split_items(" ".join(part.strip(" ") for part in parts if part.strip(" ")))
    if parts and not items:
        raise UnreadablePerfdata(f"a '|' and no perfdata in {output[:300]!r}")
    return items  # none: the check printed no perfdata (no '|')


@dataclass(frozen=True)
class Case:
    """One check over one node file, as a scheduler runs it."""

    command: str
    nodes: str  # "names" (tests/data/nodes/names.xml), "many" (1,000 domains) or "local" (no libvirt)

    @property
    def service(self) -> str:
        return f"{self.nodes}-{self.command}"

    def __str__(self) -> str:
        return self.service


def cases() -> list[Case]:
    """Every installed check that Icinga 2 and Nagios get a definition for, over each node file."""
    found = []
    for name in commands(*SCHEDULED):
        if BY_NAME[name].access is Access.NONE:
            found.append(Case(name, "local"))
        else:
            found += [Case(name, "names"), Case(name, "many")]
    return found


def rate_check(command: str) -> bool:
    """Whether it keeps state between runs in a --state-dir of its own (the rate checks' samples;
    check-kvm-backup-age's --state-dir is kvm-backup's, and only read): each case then gets a fresh
    one."""
    return any(option.flag == "--state-dir" and option.shared for option in BY_NAME[command].options)


@dataclass
class Site:
    """The files the cases use: the 1,000-domain node file, an empty backup folder and kvm-backup
    state folder, and a sample folder per scheduler and case (owned by user nagios)."""

    root: Path
    many: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.chmod(0o755)
        self.many = nodes.write(self.root / "many.xml", nodes.many(MANY))
        for sub in ("backup", "kvm-backup-state"):
            (self.root / sub).mkdir(mode=0o755)

    def uri(self, case: Case) -> str | None:
        return {"names": node_uri("names.xml"), "many": f"test://{self.many}"}.get(case.nodes)

    def options(self, case: Case, scheduler: str) -> dict[str, str]:
        """The options the case sets on top of the shipped definition: {long option: value}."""
        found: dict[str, str] = {}
        uri = self.uri(case)
        if uri is not None:
            found["--uri"] = uri
        if rate_check(case.command):
            found["--state-dir"] = str(owned_dir(self.root, f"state-{scheduler}-{case.service}"))
        if case.command == "check-kvm-backup-age":
            found["--backup-dir"] = str(self.root / "backup")
            found["--state-dir"] = str(self.root / "kvm-backup-state")
        return found


@contextlib.contextmanager
def site() -> Iterator[Site]:
    folder = Path(tempfile.mkdtemp(prefix="spk-sched-"))
    try:
        yield Site(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Printed:
    """The check's own run of a case's command line: exit code and output."""

    returncode: int
    stdout: str

    @property
    def items(self) -> list[tuple[str, str]]:
        return printed_items(self.stdout)


@cache
def _reference(command: str, options: tuple[tuple[str, str], ...]) -> Printed:
    with tempfile.TemporaryDirectory(prefix="spk-sched-ref-") as fresh:
        args = []
        for option, value in options:
            # a rate check's first run, as the scheduler's first
            fresh_state = option == "--state-dir" and rate_check(command)
            args += [option, os.path.join(fresh, "state") if fresh_state else value]
        result = run(command, *args, "--timeout", str(BY_NAME[command].command_timeout))
    return Printed(result.returncode, result.stdout)


def reference(case: Case, options: Mapping[str, str]) -> Printed:
    """The check run here with the case's options (a fresh sample folder for a rate check), as the
    scheduler's first run of it: what it printed is what the scheduler should have recorded."""
    shared = {k: ("" if k == "--state-dir" and rate_check(case.command) else v) for k, v in options.items()}
    return _reference(case.command, tuple(sorted(shared.items())))


# A service beside the cases: check-kvm-domstate given every hostile name with -d, to show that the
# definitions carry such names to the check whole. Not the names with a tab or a newline: the checks
# refuse control characters in -d (README: Common options), and no Nagios directive holds a newline.
NAMED_SERVICE = "names-d-check-kvm-domstate"


def named_domains() -> list[str]:
    return [name for name in nodes.HOSTILE if name.isprintable()]


@cache
def named_reference() -> Printed:
    """check-kvm-domstate run here with -d for each of them."""
    args = [word for name in named_domains() for word in ("--domain", name)]
    result = run("check-kvm-domstate", "--uri", node_uri("names.xml"), *args, "--timeout", "10")
    return Printed(result.returncode, result.stdout)


def none_missing(perfdata: str) -> bool:
    """Whether the perfdata of check-kvm-domstate counts no named domain as missing."""
    return dict(split_items(perfdata)).get("missing", "").partition(";")[0] == "0"


def command_path(command: str) -> str:
    return str(BIN / command)
