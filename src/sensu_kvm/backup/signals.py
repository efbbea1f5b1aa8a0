"""Signals during a run: SIGINT/SIGTERM/SIGHUP turn into Interrupted, and are held during an undo."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from sensu_kvm.errors import Interrupted

# --- signals ---------------------------------------------------------------------------------------


class _Shield:
    """While a domain is being put back on its own images, a signal must not cut the undo in half
    (that is what leaves a guest on an overlay): it is kept here and raised once the undo is done."""

    depth = 0
    pending: int | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted (as does SIGINT), so that the cleanup on the way out
    runs; a second signal while cleaning up is ignored. Inside ``shielded()`` the signal is kept
    for later instead."""
    def handler(signum: int, _frame: object) -> None:
        if _Shield.depth:
            if _Shield.pending is None:
                _Shield.pending = signum
            return
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, what in old.items():
            signal.signal(sig, what)


@contextlib.contextmanager
def shielded(raise_pending: bool = True) -> Iterator[None]:
    """Run the block to its end even when SIGTERM, SIGHUP or SIGINT arrives (under
    ``interruptible``); then, with ``raise_pending``, raise Interrupted for the signal that came.
    A commit job waiting for a signalled run drops its bandwidth limit (``hurry``)."""
    _Shield.depth += 1
    signum = None
    try:
        yield
    finally:
        _Shield.depth -= 1
        if not _Shield.depth:
            signum, _Shield.pending = _Shield.pending, None
    if signum is not None and raise_pending:  # a signal came while the block ran to its end
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def hurry() -> bool:
    """Whether a signal is waiting for the shielded block to end (finish fast, without limits)."""
    return _Shield.pending is not None
