"""What the process is doing now, so that a timeout can say where it got stuck; and the time
budget of a check: how long it may still read before it must report what it has.

A check's watchdog (plugin.Watchdog) ends the process at -t whatever blocks. The budget ends a
little before that (``reserve``), so that a check whose libvirtd is slow, or whose host has more
domains than -t allows, stops reading in time and reports what it measured, naming the domains
it could not read and the phase that ran out of time (``ran_out``), instead of one UNKNOWN line.
Commands that are not checks set no budget: ``left()`` is infinite for them.
"""

import math
import time

_current = "starting"
_deadline = math.inf
_ran_out: list[str] = []


def doing(text: str) -> None:
    global _current
    _current = text


def current() -> str:
    return _current


def reserve(seconds: float) -> float:
    """What a check keeps of its -t for judging and printing: a fifth, at most 3 s."""
    return min(3.0, seconds / 5)


def set_budget(seconds: float) -> None:
    """From now on, reading may go on for ``seconds``."""
    global _deadline
    _deadline = time.monotonic() + seconds
    _ran_out.clear()


def left() -> float:
    """Seconds left to read (infinite without a budget; 0 once it is spent)."""
    return max(0.0, _deadline - time.monotonic())


def ran_out(phase: str) -> None:
    """Record that the budget ran out while ``phase`` (what ``doing`` said) was under way."""
    if phase not in _ran_out:
        _ran_out.append(phase)


def late_phases() -> list[str]:
    """The phases that ran out of time, in order."""
    return list(_ran_out)
