"""The record of a test restore (``kvm-backup test-restore``): ``ARCHIVE.tested.json`` beside the
archive, written atomically, read by ``kvm-backup list`` and ``check-kvm-backup-age --require-tested``.
No libvirt, no archive read: check-kvm-backup-age imports this module with catalog alone."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from sensu_kvm.atomic import write_atomic

SUFFIX = ".tested.json"
RESULTS = ("passed", "failed", "refused")


class Record(NamedTuple):
    """What one test restore of an archive found."""

    archive: str  # the archive's file name (no folder)
    sha256: str  # of the archive file as it was tested ("" when it was refused before it was read whole)
    result: str  # passed, failed or refused
    sign: str  # the sign of life looked for: agent, disk or console ("" when refused before a boot)
    seconds: float  # how long the test took
    when: float  # when it ended (seconds since the epoch)
    message: str
    host: str
    version: str  # of kvm-backup


def record_path(archive: str) -> str:
    return archive + SUFFIX


def write(archive: str, record: Record) -> None:
    """Replace the record beside ``archive`` (readable by all: the check runs as the Sensu user)."""
    write_atomic(record_path(archive), json.dumps(record._asdict(), indent=1) + "\n", 0o644)


def read(archive: str) -> Record | None:
    """The record beside ``archive``; None when there is none or it is not one (a damaged or foreign
    file counts as no test)."""
    try:
        with open(record_path(archive)) as f:
            data: Any = json.load(f)
        record = Record(archive=str(data["archive"]), sha256=str(data["sha256"]), result=str(data["result"]),
                        sign=str(data["sign"]), seconds=float(data["seconds"]), when=float(data["when"]),
                        message=str(data["message"]), host=str(data["host"]), version=str(data["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.result not in RESULTS or record.archive != os.path.basename(archive):
        return None
    return record


def summary(record: Record | None) -> str:
    """One cell for ``kvm-backup list``: ``no``, ``passed (agent)``, ``FAILED: ...``, ``REFUSED: ...``."""
    if record is None:
        return "no"
    if record.result == "passed":
        return f"passed ({record.sign})"
    return f"{record.result.upper()}: {record.message}"
