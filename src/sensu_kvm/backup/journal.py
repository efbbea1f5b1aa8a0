"""The journal of a run (what it changed, so that a killed run can be undone) and stale temporaries."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from typing import Any

from sensu_kvm.atomic import write_atomic
from sensu_kvm.backup.catalog import OVERLAY_TAG, stamp
from sensu_kvm.errors import Refused

# --- journal and locks -----------------------------------------------------------------------------


class Journal:
    """What a run changed on a domain, on disk before each change, so a killed run is undone by the
    next one: the overlays it made (target -> overlay, base), whether it stopped or suspended the
    domain, and the temporary archive it was writing."""

    def __init__(self, folder: str, uuid: str) -> None:
        self.folder = folder
        self.uuid = uuid
        self.path = os.path.join(folder, f"{uuid}.journal.json")
        self.lock_path = os.path.join(folder, f"{uuid}.lock")
        self.data: dict[str, Any] = {}
        self.lock_fd: int | None = None

    def acquire(self) -> None:
        try:
            os.makedirs(self.folder, mode=0o755, exist_ok=True)  # markers of remote backups are read by the check
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise Refused(f"cannot use the state directory {self.folder}: {err.strerror} "
                          "(choose another with --state-dir)") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise Refused("another kvm-backup run is working on this domain") from err
        self.lock_fd = fd

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        write_atomic(self.path, json.dumps(self.data, indent=1))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.data = {}


def journals(folder: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for name in names:
        if name.endswith(".journal.json"):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(folder, name)) as f:
                    data = json.load(f)
                if isinstance(data, dict) and data.get("uuid"):
                    found.append(data)
    return found


def overlay_path(base: str, when: float) -> str:
    stem, _ext = os.path.splitext(base)
    return f"{stem}.{OVERLAY_TAG}-{stamp(when)}.qcow2"


def remove_stale_temps(folder: str) -> None:
    """Remove the temporary files of journal writes whose process died (a kill in write_atomic)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r".+\.journal\.json\.(\d+)\.tmp", name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # that process still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
