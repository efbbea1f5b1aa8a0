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

# The state reasons that say a migration, a save or a core dump of the domain is under way
# (libvirt's virDomainPausedReason and virDomainRunningReason), and what the domain is doing:
# check-kvm-domstate reads the job details of these domains only. Paused "migrating" is an
# offline migration, the switchover of a live one, the domain of an incoming migration, or a
# guest the user paused during its migration; a pre-copy live migration keeps the reason the
# guest had before (running (booted), say) until its switchover, and a live or memory-only core
# dump shows no reason of its own (docs/decisions.md, "Issue 16: migrations in check-kvm-domstate").
MIGRATING, SAVING, DUMPING = "migrating", "saving", "dumping"
JOB_REASONS: dict[tuple[int, int], str] = {
    (PAUSED, 2): MIGRATING,  # VIR_DOMAIN_PAUSED_MIGRATION
    (PAUSED, 3): SAVING,  # VIR_DOMAIN_PAUSED_SAVE
    (PAUSED, 4): DUMPING,  # VIR_DOMAIN_PAUSED_DUMP
    (PAUSED, 12): MIGRATING,  # VIR_DOMAIN_PAUSED_POSTCOPY
    (PAUSED, 13): MIGRATING,  # VIR_DOMAIN_PAUSED_POSTCOPY_FAILED
    (RUNNING, 10): MIGRATING,  # VIR_DOMAIN_RUNNING_POSTCOPY
    (RUNNING, 11): MIGRATING,  # VIR_DOMAIN_RUNNING_POSTCOPY_FAILED (libvirt 8.5)
}
POSTCOPY = frozenset({(PAUSED, 12), (RUNNING, 10)})
POSTCOPY_FAILED = frozenset({(PAUSED, 13), (RUNNING, 11)})

# virDomainJobType and virDomainJobOperation (jobStats' "type" and "operation").
JOB_NONE, JOB_BOUNDED, JOB_UNBOUNDED, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED = range(6)
JOB_DIRECTIONS = {4: "incoming", 5: "outgoing"}  # VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN, _OUT

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


def job_of(state: int, reason: int) -> str | None:
    """What the state reason says the domain is doing (MIGRATING, SAVING, DUMPING), or None."""
    return JOB_REASONS.get((state, reason))


def disk_error_name(code: int) -> str:
    return DISK_ERRORS.get(code, f"error {code}")
