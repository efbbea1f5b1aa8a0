"""Prune: which archives a policy keeps (pure), and the prune itself, which never deletes the newest
verified archive of a domain."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from sensu_kvm.backup import reader, tested
from sensu_kvm.backup.catalog import Entry, scan
from sensu_kvm.errors import BadRequest, KvmError

# --- prune (pure) ----------------------------------------------------------------------------------


def prune_plan(entries: list[Entry], keep_last: int, keep_daily: int, keep_weekly: int,
               ) -> list[tuple[Entry, bool, str]]:
    """(entry, keep, why) for every archive, newest first per domain. The newest archive of each
    domain is always kept; -last keeps the N newest, -daily the newest of each of N days (UTC),
    -weekly the newest of each of N ISO weeks."""
    plan: list[tuple[Entry, bool, str]] = []
    by_domain: dict[str, list[Entry]] = {}
    for entry in entries:
        by_domain.setdefault(entry.domain, []).append(entry)
    for domain in sorted(by_domain):
        newest_first = sorted(by_domain[domain], key=lambda e: e.created, reverse=True)
        why: dict[str, str] = {}
        for n, entry in enumerate(newest_first[:max(keep_last, 1)]):
            why.setdefault(entry.path, "the newest" if n == 0 else f"one of the {keep_last} newest")
        for count, key, label in ((keep_daily, "%Y-%m-%d", "day"), (keep_weekly, "%G-W%V", "week")):
            seen: list[str] = []
            for entry in newest_first:
                period = time.strftime(key, time.gmtime(entry.created))
                if period in seen:
                    continue
                if len(seen) >= count:
                    break
                seen.append(period)
                why.setdefault(entry.path, f"the newest of its {label} ({period})")
        for entry in newest_first:
            plan.append((entry, entry.path in why, why.get(entry.path, "beyond the policy")))
    return plan


def prune(folder: str, keep_last: int, keep_daily: int, keep_weekly: int, dry_run: bool,
          log: Callable[[str], None], verify: Callable[[str], object] = reader.verify) -> list[dict[str, Any]]:
    """Delete the archives of ``folder`` beyond the policy (none with ``dry_run``); what was done to
    each archive, newest first per domain: action keep, would delete, deleted or failed.

    Never the newest verified archive of a domain: the newest kept archive of each domain must
    verify (each kept one is tried in turn) before anything older of that domain goes."""
    if not (keep_last or keep_daily or keep_weekly):
        raise BadRequest("prune needs --keep-last, --keep-daily or --keep-weekly (at least one above 0)")
    if not os.path.isdir(folder):
        raise BadRequest(f"{folder} does not exist or is not a folder")
    report = []
    safe: dict[str, bool] = {}
    for entry, keep, why in prune_plan(scan(folder), max(keep_last, 1), keep_daily, keep_weekly):
        item: dict[str, Any] = {"archive": entry.path, "domain": entry.domain, "created": int(entry.created),
                                "why": why, "action": "keep" if keep else ("would delete" if dry_run else "delete")}
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
