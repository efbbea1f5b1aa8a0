"""libvirt's domain states and reasons as words (the numbers are libvirt's stable ABI)."""

from __future__ import annotations

NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)

STATE_NAMES = {
    NOSTATE: "no state",
    RUNNING: "running",
    BLOCKED: "blocked",
    PAUSED: "paused",
    SHUTDOWN: "shutting down",
    SHUTOFF: "shut off",
    CRASHED: "crashed",
    PMSUSPENDED: "pmsuspended",
}

# Perfdata labels, one per state.
STATE_LABELS = {
    NOSTATE: "nostate",
    RUNNING: "running",
    BLOCKED: "blocked",
    PAUSED: "paused",
    SHUTDOWN: "shutdown",
    SHUTOFF: "shutoff",
    CRASHED: "crashed",
    PMSUSPENDED: "pmsuspended",
}

PAUSED_IOERROR = 5
SHUTOFF_CRASHED = 3
SHUTOFF_FAILED = 6

_REASONS: dict[int, tuple[str, ...]] = {
    RUNNING: ("unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
              "migration canceled", "save canceled", "event wakeup", "crashed", "post-copy",
              "post-copy failed"),
    BLOCKED: ("unknown",),
    PAUSED: ("unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
             "from snapshot", "shutting down", "creating snapshot", "crashed", "starting up",
             "post-copy", "post-copy failed", "api error"),
    SHUTDOWN: ("unknown", "user"),
    SHUTOFF: ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
              "from snapshot", "daemon"),
    CRASHED: ("unknown", "panicked"),
    PMSUSPENDED: ("unknown",),
}

DISK_ERRORS = {0: "no error", 1: "unspecified error", 2: "no space"}


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"state {state}")


def reason_name(state: int, reason: int) -> str:
    names = _REASONS.get(state, ())
    return names[reason] if 0 <= reason < len(names) else f"reason {reason}"


def disk_error_name(code: int) -> str:
    return DISK_ERRORS.get(code, f"error {code}")
