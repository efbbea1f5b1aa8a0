"""What a backup folder holds, by name only: archive names and stamps, the scan of a folder, failure
markers and remote receipts. check-kvm-backup-age reads this module alone (no engine, no libvirt)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from typing import Any, NamedTuple

from sensu_kvm.atomic import write_atomic
from sensu_kvm.errors import BadRequest

FORMAT = "kvm-backup/1"  # what `kvm-backup create` writes today (the qcow2 or raw image file as the member)
FORMAT_V2 = "kvm-backup/2"  # guest-visible raw disks, full or incremental (issue 17; docs/decisions.md)
LEVELS = ("full", "inc", "diff")
MAX_ZEROED = 100_000  # zeroed ranges per disk in a kvm-backup/2 header; past that the writer stores zeros as data
HEADER = "kvm-backup.json"
XML_MEMBER = "domain.xml"
MANIFEST = "manifest.json"
STATE_DIR = "/var/lib/kvm-backup"
OVERLAY_TAG = "kvm-backup-overlay"
MIB = 1024 * 1024
CHUNK = 4 * MIB
BLOCK = 512
SUFFIX = {"zstd": ".tar.zst", "bzip2": ".tar.bz2", "none": ".tar"}
NAME_RE = re.compile(r"^(?P<domain>.+)-(?P<stamp>\d{8}T\d{6}Z)\.kvmbak(?P<ext>\.tar(?:\.zst|\.bz2)?)$")
# any archive's name, a kvm-backup/2 inc and diff included (what scan() sees; prune keeps the archives a
# kept one depends on)
CHAIN_NAME_RE = re.compile(
    r"^(?P<domain>[^/]+)-(?P<stamp>\d{8}T\d{6}Z)(?:\.(?P<level>inc|diff))?\.kvmbak(?P<ext>\.tar(?:\.zst|\.bz2)?)$")


# --- names and times -------------------------------------------------------------------------------


def stamp(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def parse_stamp(text: str) -> float:
    import calendar  # noqa: PLC0415

    return float(calendar.timegm(time.strptime(text, "%Y%m%dT%H%M%SZ")))


def archive_name(domain: str, when: float, compress: str, level: str = "full") -> str:
    """``DOMAIN-STAMP.kvmbak.tar.zst`` for a full, ``DOMAIN-STAMP.inc.kvmbak.tar.zst`` (or ``.diff.``)."""
    middle = "" if level == "full" else f".{level}"
    return f"{domain}-{stamp(when)}{middle}.kvmbak{SUFFIX[compress]}"


def chain_record(level: str, checkpoint: str | None, since: str | None = None, parent: str | None = None,
                 parent_sha256: str | None = None, root: str | None = None, depth: int = 0) -> dict[str, Any]:
    """The ``chain`` object of a kvm-backup/2 header: the archive's level, the checkpoint it made, the
    checkpoint it starts from, its parent archive (a name in the same folder) and that file's sha256
    (``reader.file_sha256``), the full the chain starts with and how many archives lie between."""
    return {"level": level, "checkpoint": checkpoint, "since": since, "parent": parent,
            "parent_sha256": parent_sha256, "root": root, "depth": depth}


class Entry(NamedTuple):
    """A published archive as its name tells (no read of its content)."""

    path: str
    domain: str
    created: float
    size: int
    level: str = "full"  # full (every kvm-backup/1 archive), inc or diff: from the name


def scan(folder: str) -> list[Entry]:
    """Published archives in ``folder``, every level (temporary files, markers and foreign files are
    ignored). An inc or diff is a backup of its own (a point a restore gives back), so the age check
    counts it; prune keeps what it depends on."""
    found = []
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise BadRequest(f"cannot read {folder}: {err.strerror}") from err
    for name in names:
        match = CHAIN_NAME_RE.match(name)
        if not match or name.startswith("."):
            continue
        path = os.path.join(folder, name)
        try:
            size = os.stat(path).st_size
            created = parse_stamp(match.group("stamp"))
        except (OSError, ValueError):
            continue
        found.append(Entry(path, match.group("domain"), created, size, match.group("level") or "full"))
    found.sort(key=lambda e: (e.domain, e.created))
    return found


# --- failure markers -------------------------------------------------------------------------------


def marker_path(folder: str, domain: str) -> str:
    return os.path.join(folder, f".kvm-backup-failed.{domain}.json")


def write_marker(folder: str, domain: str, error: str, when: float) -> None:
    """Say that a backup of ``domain`` failed (check-kvm-backup-age turns CRITICAL)."""
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
        # readable by all: check-kvm-backup-age runs as the Sensu client's user
        write_atomic(marker_path(folder, domain), json.dumps({"domain": domain, "time": when, "error": error}), 0o644)


def clear_marker(folder: str, domain: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(marker_path(folder, domain))


def read_markers(folder: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if name.startswith(".kvm-backup-failed.") and name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    data = json.load(f)
                found[str(data["domain"])] = {"time": float(data["time"]), "error": str(data.get("error", ""))}
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return found


def write_receipt(state_dir: str, domain: str, archive: str, created: float, size: int) -> None:
    """Remember the newest backup of ``domain`` sent to a remote host, for check-kvm-backup-age."""
    folder = os.path.join(state_dir, "remote")
    with contextlib.suppress(OSError):
        os.makedirs(folder, mode=0o755, exist_ok=True)
        write_atomic(os.path.join(folder, f"{domain}.json"),
                     json.dumps({"domain": domain, "archive": archive, "created": created, "size": size}), 0o644)


def read_receipts(state_dir: str) -> list[Entry]:
    """The newest remote backup of each domain, as ``write_receipt`` left it."""
    folder = os.path.join(state_dir, "remote")
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    data = json.load(f)
                found.append(Entry(str(data["archive"]), str(data["domain"]), float(data["created"]),
                                   int(data["size"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return found
