"""Which archives a prune keeps (pure)."""

from __future__ import annotations

import time

from sensu_kvm.backup.catalog import Entry

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
