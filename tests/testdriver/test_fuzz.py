"""A fuzz pass over every command's options and inputs, as real processes of the installed commands.

The commands come from the installed entry points (the console_scripts of this distribution, named
check-*, metrics-*, handler-* or kvm-*: tests/entrypoints.py), their options from each command's own argparse parser (every
subcommand's too). Every option and positional argument that takes a value is fed a seeded corpus
of bad values: empty, whitespace, control characters, a line break, nan, inf, -inf, 1e300, -1, 0,
0.5, huge integers, '=', '|', quotes, a very long string and bytes that are not UTF-8 (passed as
bytes in argv). The handler is also fed bad events on stdin. The other arguments are valid and
point at libvirt's test driver (test:///default, in memory, per process) and at a domain that does
not exist, so that nothing real is touched whatever a value does.

Every run must exit with a code of the command's documented set, print no traceback and no
'internal error', and create nothing in its working directory; a refusal (exit 3 of a check with
nothing on stdout, exit 2 of a tool or the handler) must be exactly one line on stderr that names
the command, leave stdout empty and create nothing in its state directory or destination either.

Options parsed by the same value type (every range, every count, every timeout, the checks' -u
and -d, kvm-snapshot's DOMAIN in each subcommand, every list of choices) are fed the whole corpus
on the first command that has one and a seeded sample of it on the others; an option read as a
plain string gets the whole corpus everywhere. About 1,080 runs: ~30 s on two idle cores, under a
minute on a busy machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import re
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import BIN
from tests.entrypoints import console_scripts

SEED = 11
PREFIXES = ("check-", "metrics-", "handler-", "kvm-")
TEST_URI = "test:///default"
MISSING = "spk-fuzz-none"  # a domain that does not exist on the test driver
SHARED_SAMPLE = 3  # values of the corpus fed to an option already fuzzed on another command
WORKERS = 3

CORPUS: list[str | bytes] = [
    "", " ", "\t\x01\x1b[2J\x7f", "a\nb", "nan", "inf", "-inf", "1e300", "-1", "0", "0.5",
    "1" + "0" * 30, "9" * 5000, "=", "|", "'\"", "x" * 100_000, b"\xff\xfe", b"web\xc3(",
]

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s+File \"", re.MULTILINE)
# what the commands print for a bug they caught ("internal error: TypeError: ..."); libvirt's own
# "internal error: Unable to parse URI" is a reason, not a bug of ours
OUR_INTERNAL_ERROR = re.compile(r"internal error: [A-Za-z_.]*(Error|Exception|Warning|Exit|Interrupt)\b")
EXIT_CODES = {"check": {0, 1, 2, 3}, "metrics": {0, 1, 2, 3}, "handler": {0, 1, 2}, "kvm": {0, 1, 2}}
REFUSAL = {"check": 3, "metrics": 3, "handler": 2, "kvm": 2}
# options whose value is a file or folder: a value the command accepts (a relative path such as
# '=') is where it may then write, so only refusals must leave the working directory empty
PATHS = {"state_dir", "backup_dir", "work_dir", "image_dir", "dest", "folder", "archive", "archives"}

EVENT = {"client": {"name": MISSING, "type": "proxy"},
         "check": {"name": "check-kvm-domstate", "status": 2, "output": "x", "source": MISSING},
         "occurrences": 1, "action": "create"}


def commands() -> list[tuple[str, str]]:
    """(command, module) of every installed command of this package."""
    found = {name: target.split(":")[0] for name, target in console_scripts().items()}
    assert all(name.startswith(PREFIXES) for name in found), f"a command whose kind is not known here: {found}"
    return sorted(found.items())


def kind(command: str) -> str:
    return command.split("-", 1)[0]


class Slot(NamedTuple):
    """One option or positional argument of one (sub)command."""

    path: tuple[str, ...]  # subcommand names
    action: argparse.Action
    positionals: tuple[argparse.Action, ...]
    required: tuple[argparse.Action, ...]
    options: tuple[str, ...]  # option strings the (sub)command has


def slots(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Slot]:
    own = [a for a in parser._actions
           if a.nargs != 0 and not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction,
                                                  argparse._VersionAction))]
    positionals = tuple(a for a in own if not a.option_strings)
    required = tuple(a for a in own if a.option_strings and a.required)
    flags = tuple(s for a in parser._actions for s in a.option_strings)
    for action in own:
        yield Slot(path, action, positionals, required, flags)
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for name, child in sub.choices.items():
            yield from slots(child, (*path, name))


class Scratch(NamedTuple):
    cwd: Path
    state: Path
    dest: Path


def valid(action: argparse.Action, scratch: Scratch) -> list[str]:
    """A valid value for an argument that is not the one fuzzed."""
    dest = action.dest
    if dest in ("domain", "domains"):
        return [MISSING]
    if dest == "name":
        return ["snap"]
    if dest in ("archive", "archives"):
        return [str(scratch.dest / "none.kvmbak.tar.zst")]
    if dest == "folder":
        return [str(scratch.dest)]
    if dest == "dest":
        return ["--dest", str(scratch.dest)]
    raise AssertionError(f"no valid value known for {dest}")


def argv(command: str, slot: Slot, value: str | bytes, scratch: Scratch) -> list[bytes]:
    """The command line: the subcommand, the fuzzed option (or the valid options and the fuzzed
    positional), the options that keep it on the test driver and scratch folders."""
    enc = os.fsencode
    out = [enc(str(BIN / command)), *map(enc, slot.path)]
    fuzzed = slot.action
    if fuzzed.option_strings:
        out.append(enc(fuzzed.option_strings[-1]) + b"=" + enc(value))
    base = [("--uri", TEST_URI), ("--state-dir", str(scratch.state))]
    if command == "check-kvm-backup-age":
        base.append(("--backup-dir", str(scratch.dest)))
    for flag, text in base:
        if flag in slot.options and flag not in fuzzed.option_strings:
            out.append(enc(f"{flag}={text}"))
    for action in slot.required:
        if action is not fuzzed:
            out += map(enc, valid(action, scratch))
    if slot.path[-1:] == ("prune",) and command == "kvm-backup" and fuzzed.dest != "keep_last":
        out.append(b"--keep-last=1")
    if slot.positionals:
        out.append(b"--")
        for action in slot.positionals:
            out += [enc(value)] if action is fuzzed else map(enc, valid(action, scratch))
    return out


class Outcome(NamedTuple):
    command: str
    what: str
    code: int
    stdout: str
    stderr: str
    created_cwd: list[str]
    created_other: list[str]
    is_path: bool


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def execute(command: str, what: str, args: list[bytes], scratch: Scratch, stdin: bytes, is_path: bool) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    env["LIBVIRT_DEFAULT_URI"] = TEST_URI  # where a fuzzed -u falls back, if it ever did
    result = subprocess.run(args, input=stdin, capture_output=True, env=env, cwd=scratch.cwd, timeout=60, check=False)
    return Outcome(command, what, result.returncode, result.stdout.decode(errors="replace"),
                   result.stderr.decode(errors="replace"), listing(scratch.cwd),
                   listing(scratch.state) + listing(scratch.dest), is_path)


def shown(value: str | bytes) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:30] + f"...({len(value)})"


def problems(o: Outcome) -> list[str]:
    """What is wrong with one run (nothing when it holds)."""
    k = kind(o.command)
    found = []
    if o.code not in EXIT_CODES[k]:
        found.append(f"exit {o.code}")
    for bad in (TRACEBACK, OUR_INTERNAL_ERROR):
        if bad.search(o.stdout) or bad.search(o.stderr):
            found.append(f"{bad.pattern!r} in the output")
    refused = o.code == REFUSAL[k] and (k in ("kvm", "handler") or o.stdout == "")
    if refused:
        lines = o.stderr.splitlines()
        if len(lines) != 1:
            found.append(f"{len(lines)} stderr lines for a refusal")
        elif o.command not in lines[0]:
            found.append("the refusal does not name the command")
        if o.stdout:
            found.append("stdout not empty on a refusal")
        if o.created_other:
            found.append(f"a refusal created {o.created_other[:3]}")
    if o.created_cwd and (refused or not o.is_path):
        found.append(f"created {o.created_cwd[:3]} in the working directory")
    return [f"{o.command} {o.what}: {p} (exit {o.code}; stdout {o.stdout[:200]!r}; stderr {o.stderr[:300]!r})"
            for p in found]


class Case(NamedTuple):
    command: str
    what: str
    slot: Slot | None
    value: str | bytes
    stdin: bytes


def option_cases() -> list[Case]:
    rng = random.Random(SEED)
    fuzzed: set[tuple[str, ...]] = set()
    cases = []
    event = json.dumps(EVENT).encode()
    for command, module in commands():
        parser = importlib.import_module(module).parser()
        for slot in slots(parser):
            action = slot.action
            # options parsed by one value type (every range, every count...) share one full pass; plain
            # strings are judged by what reads them, so each option of its own
            kind_of: tuple[str, ...] = (getattr(action.type, "__qualname__", repr(action.type)), repr(action.choices))
            if action.choices is not None:
                kind_of = ("choices",)  # argparse's own check, the same for every list of choices
            elif action.type is None:
                kind_of = (*action.option_strings, command, action.dest)
            key = kind_of if action.option_strings else (command, action.dest, *kind_of)
            values = rng.sample(CORPUS, SHARED_SAMPLE) if key in fuzzed else CORPUS
            fuzzed.add(key)
            name = action.option_strings[-1] if action.option_strings else action.dest.upper()
            for value in values:
                what = " ".join([*slot.path, name, shown(value)])
                cases.append(Case(command, what, slot, value, event if command.startswith("handler-") else b""))
    return cases


def event_cases() -> list[Case]:
    good = dict(EVENT)
    go: dict[str, Any] = {"entity": {"entity_class": "proxy", "metadata": {"name": MISSING}},
          "check": {"metadata": {"name": "check-kvm-domstate"}, "status": 2, "occurrences": 1}}

    def core(**changes: Any) -> bytes:
        event = json.loads(json.dumps(good))
        for dotted, value in changes.items():
            where = event
            *parents, last = dotted.split("__")
            for p in parents:
                where = where[p]
            where[last] = value
        return json.dumps(event).encode()

    events: list[tuple[str, bytes]] = [
        ("empty", b""), ("whitespace", b" \n\t"), ("truncated", json.dumps(good).encode()[:-7]),
        ("brackets x100000", b"[" * 100_000), ("objects x100000", b'{"a":' * 100_000),
        ("nested 40 deep", b'{"check":' * 40 + b"{}" + b"}" * 40), ("null", b"null"), ("list", b"[]"),
        ("number", b"1e999"), ("string", b'"event"'), ("not UTF-8", b'{"client": {"name": "\xff\xfe"}}'),
        ("BOM", b"\xef\xbb\xbf" + json.dumps(good).encode()), ("NaN", b'{"check": NaN}'),
        ("huge", b'{"check": {"output": "' + b"x" * (4 * 1024 * 1024) + b'"}}'),
        ("source a number", core(check__source=42)), ("source a list", core(check__source=["a"])),
        ("source null", core(check__source=None)), ("client name a number", core(client__name=7)),
        ("client name null", core(client__name=None)), ("client a list", core(client=["a"])),
        ("check null", core(check=None)), ("check name a number", core(check__name=1)),
        ("status a string", core(check__status="2")), ("status a float", core(check__status=2.5)),
        ("status true", core(check__status=True)), ("status huge", core(check__status=10**30)),
        ("output a number", core(check__output=3)), ("occurrences a string", core(occurrences="x")),
        ("action a number", core(action=1)), ("client type a list", core(client__type=[])),
        ("name with a line break", core(client__name="a\nforged log line", check__source="a\nb")),
        ("name a lone surrogate", core(check__source="\ud800web")),
        ("name with escape sequences", core(check__source="\x1b[2Jweb")),
        ("source huge", core(check__source="x" * 100_000)),
        ("go entity name a number", json.dumps({**go, "entity": {"metadata": {"name": 5}}}).encode()),
        ("go metadata a string", json.dumps({**go, "entity": {"metadata": "kvm1"}}).encode()),
        ("go proxy_entity_name a number", json.dumps({**go, "check": {**go["check"], "proxy_entity_name": 9}}).encode()),
        ("go", json.dumps(go).encode()), ("valid", json.dumps(good).encode()),
        ("valid, running domain 'test'", core(client__name="test", check__source="test")),
    ]
    return [Case("handler-kvm-remediate", f"event {name}", None, "", raw) for name, raw in events]


def run_case(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="spk-fuzz-") as top:
        scratch = Scratch(Path(top, "cwd"), Path(top, "state"), Path(top, "dest"))
        for folder in scratch:
            folder.mkdir()
        if case.slot is None:  # an event: the handler with valid options (every domain selected), read-only
            args = [os.fsencode(str(BIN / case.command)), b"-u", TEST_URI.encode(), b"--state-dir",
                    os.fsencode(str(scratch.state)), b"--dry-run", b"--match", b"."]
            return execute(case.command, case.what, args, scratch, case.stdin, False)
        is_path = case.slot.action.dest in PATHS
        return execute(case.command, case.what, argv(case.command, case.slot, case.value, scratch), scratch,
                       case.stdin, is_path)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, list[Outcome]]:
    cases = option_cases() + event_cases()
    with ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(run_case, cases))
    by_command: dict[str, list[Outcome]] = {}
    for outcome in done:
        by_command.setdefault(outcome.command, []).append(outcome)
    return by_command


def test_every_command_is_fuzzed(outcomes):
    names = [name for name, _ in commands()]
    assert len(names) >= 15, names
    assert sorted(outcomes) == names
    total = sum(len(v) for v in outcomes.values())
    events = sum(1 for o in outcomes["handler-kvm-remediate"] if o.what.startswith("event "))
    print(f"\nfuzz: {total} runs over {len(names)} commands ({events} of them handler events)")
    assert total > 1000


@pytest.mark.parametrize("command", [name for name, _ in commands()])
def test_bad_values_are_refused_in_one_line(outcomes, command):
    runs = outcomes[command]
    failures = [p for o in runs for p in problems(o)]
    assert not failures, f"{len(failures)} of {len(runs)} runs failed:\n" + "\n".join(failures[:40])
    if not command.startswith("handler-"):
        assert any(o.code == REFUSAL[kind(command)] for o in runs), "no value was refused at all"


def test_handler_events(outcomes):
    runs = {o.what: o for o in outcomes["handler-kvm-remediate"] if o.what.startswith("event ")}
    assert runs["event valid, running domain 'test'"].code == 0, runs["event valid, running domain 'test'"]
    assert "test is running" in runs["event valid, running domain 'test'"].stderr
    for name in ("brackets x100000", "objects x100000", "nested 40 deep", "source a number", "not UTF-8",
                 "name with a line break", "name a lone surrogate", "status huge", "huge"):
        run = runs[f"event {name}"]
        assert run.code == 2 and "cannot read the event, nothing done" in run.stderr, run
    for name in ("valid", "go"):  # the domain does not exist: a failure, one line, not bad input
        run = runs[f"event {name}"]
        assert run.code == 1 and len(run.stderr.splitlines()) == 1, run
