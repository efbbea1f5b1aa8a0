"""Prune: which archives a policy keeps (pure), and the prune itself, which never deletes the newest
verified archive of a domain."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from sensu_kvm.backup import reader, tested
from sensu_kvm.backup.catalog import FORMAT, FORMAT_V2, Entry, scan
from sensu_kvm.errors import BadRequest, Corrupt, KvmError

# --- prune (pure) ----------------------------------------------------------------------------------


def prune_plan(entries: list[Entry], keep_last: int, keep_daily: int, keep_weekly: int,
               parents: dict[str, str] | None = None, broken: dict[str, str] | None = None,
               ) -> list[tuple[Entry, bool, str]]:
    """(entry, keep, why) for every archive, newest first per domain. The newest archive of each
    domain is always kept; -last keeps the N newest, -daily the newest of each of N days (UTC),
    -weekly the newest of each of N ISO weeks. Every level counts as a backup.

    ``parents``: path -> the path of the archive it builds on (a kvm-backup/2 inc or diff); keeping
    an archive keeps its parents back to the full. ``broken``: path -> why its chain cannot be
    rebuilt (a parent missing or unreadable): such an archive is no backup, the policy does not count
    it, and it is not kept for itself."""
    parents = parents or {}
    broken = broken or {}
    plan: list[tuple[Entry, bool, str]] = []
    by_domain: dict[str, list[Entry]] = {}
    for entry in entries:
        by_domain.setdefault(entry.domain, []).append(entry)
    for domain in sorted(by_domain):
        newest_first = sorted(by_domain[domain], key=lambda e: e.created, reverse=True)
        counted = [e for e in newest_first if e.path not in broken]
        why: dict[str, str] = {}
        for n, entry in enumerate(counted[:max(keep_last, 1)]):
            why.setdefault(entry.path, "the newest" if n == 0 else f"one of the {keep_last} newest")
        for count, key, label in ((keep_daily, "%Y-%m-%d", "day"), (keep_weekly, "%G-W%V", "week")):
            seen: list[str] = []
            for entry in counted:
                period = time.strftime(key, time.gmtime(entry.created))
                if period in seen:
                    continue
                if len(seen) >= count:
                    break
                seen.append(period)
                why.setdefault(entry.path, f"the newest of its {label} ({period})")
        for entry in counted:  # newest first: a dependency is named after the newest archive needing it
            if entry.path not in why:
                continue
            current, steps = entry.path, 0
            while current in parents and steps < len(newest_first):
                current, steps = parents[current], steps + 1
                why.setdefault(current, f"needed by {os.path.basename(entry.path)} (its chain)")
        for entry in newest_first:
            if entry.path in broken and entry.path not in why:
                plan.append((entry, False, f"its chain is broken: {broken[entry.path]}"))
            else:
                plan.append((entry, entry.path in why, why.get(entry.path, "beyond the policy")))
    return plan


def chains_of(entries: list[Entry]) -> tuple[dict[str, str], dict[str, str]]:
    """(parents, broken) of ``prune_plan`` from the headers of the incs and diffs among ``entries``
    (a full's header is not read). A parent is looked up by name in the same folder among the
    entries; a chain with a missing or unreadable link is broken, and so is every archive on top."""
    paths = {e.path for e in entries}
    parents: dict[str, str] = {}
    broken: dict[str, str] = {}
    for entry in entries:
        if entry.level == "full":
            continue
        try:
            header = reader.read_header(entry.path, (FORMAT, FORMAT_V2))
            chain = header.get("chain")
            parent = chain.get("parent") if isinstance(chain, dict) else None
            if not isinstance(parent, str) or os.path.basename(parent) != parent or not parent:
                raise Corrupt("its header names no parent")
        except KvmError as err:
            broken[entry.path] = str(err)
            continue
        path = os.path.join(os.path.dirname(entry.path), parent)
        if path not in paths:
            broken[entry.path] = f"its parent {parent} is missing"
        else:
            parents[entry.path] = path
    for entry in entries:  # on top of a broken link: broken too
        current, steps = entry.path, 0
        while current in parents and current not in broken and steps <= len(entries):
            current, steps = parents[current], steps + 1
        if current in broken and entry.path not in broken:
            broken[entry.path] = f"{os.path.basename(current)} in its chain: {broken[current]}"
    return parents, broken


def prune(folder: str, keep_last: int, keep_daily: int, keep_weekly: int, dry_run: bool,
          log: Callable[[str], None], verify: Callable[[str], object] = reader.verify_any) -> list[dict[str, Any]]:
    """Delete the archives of ``folder`` beyond the policy (none with ``dry_run``); what was done to
    each archive, newest first per domain: action keep, would delete, deleted or failed.

    Never the newest verified archive of a domain: the newest kept archive of each domain must
    verify, with its chain (each kept one is tried in turn), before anything older of that domain
    goes. An archive whose chain is broken is reported (``broken``, and on ``log``) and goes as
    anything beyond the policy does."""
    if not (keep_last or keep_daily or keep_weekly):
        raise BadRequest("prune needs --keep-last, --keep-daily or --keep-weekly (at least one above 0)")
    if not os.path.isdir(folder):
        raise BadRequest(f"{folder} does not exist or is not a folder")
    report = []
    safe: dict[str, bool] = {}
    entries = scan(folder)
    parents, broken = chains_of(entries)
    for path, problem in sorted(broken.items()):
        log(f"{path}: its chain is broken ({problem}): no restore can rebuild it")
    for entry, keep, why in prune_plan(entries, max(keep_last, 1), keep_daily, keep_weekly, parents, broken):
        item: dict[str, Any] = {"archive": entry.path, "domain": entry.domain, "created": int(entry.created),
                                "level": entry.level, "parent": parents.get(entry.path),
                                "broken": broken.get(entry.path), "why": why,
                                "action": "keep" if keep else ("would delete" if dry_run else "delete")}
        report.append(item)
        if keep:
            if entry.domain not in safe:
                try:
                    if not dry_run:
                        verify(entry.path)
                    safe[entry.domain] = True
                except KvmError as err:
                    log(f"{entry.domain}: {entry.path} does not verify ({err}); trying the next one")
            continue
        if not safe.get(entry.domain):
            item.update(action="keep", why="no newer archive of this domain verifies")
            continue
        if dry_run:
            continue
        try:
            os.unlink(entry.path)
            item["action"] = "deleted"
            with contextlib.suppress(OSError):  # its test-restore record goes with it
                os.unlink(tested.record_path(entry.path))
        except OSError as err:
            item["action"] = "failed"
            log(f"cannot delete {entry.path}: {err.strerror}")
    return report
