"""Progress lines of long copies (at most one line every few seconds, on stderr)."""

from __future__ import annotations

import sys
import time

from sensu_kvm.backup.catalog import MIB

# --- progress and rate limit -----------------------------------------------------------------------


class Progress:
    """Bytes done of a total, with rate and ETA on a terminal (stderr); silent otherwise."""

    def __init__(self, total: int, show: bool, bwlimit: float = 0.0) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.show = show
        self.bwlimit = bwlimit
        self.started = time.monotonic()
        self.shown = 0.0
        self.label = ""

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.bwlimit > 0:
            ahead = self.done / self.bwlimit - (now - self.started)
            if ahead > 0:
                time.sleep(ahead)
                now = time.monotonic()
        if self.show and now - self.shown >= 0.5:
            self.shown = now
            elapsed = max(now - self.started, 1e-6)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else 0
            sys.stderr.write(f"\r{self.label}: {self.done / MIB:,.0f} of {self.total / MIB:,.0f} MiB, "
                             f"{rate / MIB:,.1f} MiB/s, ETA {eta:,.0f}s   ")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.show:
            sys.stderr.write("\n")
            sys.stderr.flush()
