"""Reading the host's storage pools: what check-kvm-pool judges and metrics-kvm reports.

One call lists the pools; then each pool is read on concurrent calls (virt.in_parallel) under the
time budget: its info, and for an active pool its volumes. What is read of the volumes depends on
the caller: check-kvm-pool needs each volume's capacity (a listing, then one call per volume:
libvirt has no bulk call for volumes), metrics-kvm only their number (one call per pool,
virStoragePoolNumOfVolumes, which counts the same list of volumes that a listing returns).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlparse
from xml.etree import ElementTree

from sensu_kvm import activity, virt
from sensu_kvm.errors import NotFound
from sensu_kvm.names import Names

INACTIVE, BUILDING, RUNNING, DEGRADED, INACCESSIBLE = range(5)  # virStoragePoolState
STATE_WORDS = {INACTIVE: "inactive", BUILDING: "building", RUNNING: "running", DEGRADED: "degraded",
               INACCESSIBLE: "inaccessible"}
DIRECTORY_TYPES = ("dir", "fs", "netfs")  # pools whose target is a directory of this host
ACTIVE = (RUNNING, DEGRADED, BUILDING)  # the states in which a pool's volumes can be listed


class Pool(NamedTuple):
    """What was read of one pool: ``error`` set when it could not be read.

    ``volumes`` holds each volume's capacity in bytes when they were read one by one (``sizes``),
    ``volume_count`` the number of volumes either way (0 for a pool that is not active)."""

    name: str
    uuid: str
    state: int = RUNNING
    capacity: int = 0
    allocation: int = 0
    available: int = 0
    autostart: bool = False
    kind: str = ""
    target: str = ""
    volumes: tuple[int, ...] = ()
    target_missing: bool = False
    error: str = ""
    volume_count: int = 0
    gone: bool = False  # the error says the pool no longer exists (undefined since it was listed)


def is_local(uri: str) -> bool:
    """Whether the URI names a driver of this host (no host part; not libvirt's test driver, whose
    pools are on no disk), so that a pool's target directory can be looked at."""
    parsed = urlparse(uri)
    return not parsed.hostname and parsed.scheme.split("+", 1)[0] != "test"


def list_pools(conn: Any) -> tuple[list[Any], Names]:
    """Every pool of the host (one call) and the names of all of them (names.Names, from every
    pool before any is chosen, so that a pool's forms do not depend on what a run selects)."""
    activity.doing("listing the storage pools")
    try:
        every = conn.listAllStoragePools(0)
    except virt.libvirtError as err:
        raise virt.translate(err, "cannot list storage pools") from err
    return every, Names((p.name(), p.UUIDString()) for p in every)


def read_pool(obj: Any, local: bool, sizes: bool = True) -> Pool:
    """One pool's facts: its info; for an inactive pool its autostart flag; for an active one its
    volumes: with ``sizes`` each volume's capacity (a listing, then one call per volume) and, on
    this host, its XML for the target directory (only what is judged is read); without, only
    their number (one call)."""
    name, uuid = obj.name(), obj.UUIDString()
    try:
        state, capacity, allocation, available = obj.info()
        if not sizes:
            count = int(obj.numOfVolumes()) if state in ACTIVE else 0
            return Pool(name, uuid, state, capacity, allocation, available, volume_count=count)
        autostart = state == INACTIVE and bool(obj.autostart())
        kind = target = ""
        if local and state != INACTIVE:
            root = ElementTree.fromstring(obj.XMLDesc(0))
            kind, target = root.get("type", ""), root.findtext("target/path") or ""
        volumes: tuple[int, ...] = ()
        if state in ACTIVE:
            volumes = tuple(int(vol.info()[1]) for vol in obj.listAllVolumes(0))
    except virt.libvirtError as err:
        return Pool(name, uuid, error=virt.reason(err), gone=virt.kind(err) is NotFound)
    except ElementTree.ParseError as err:
        return Pool(name, uuid, error=f"its XML does not parse: {err}")
    missing = kind in DIRECTORY_TYPES and bool(target) and not os.path.isdir(target)
    return Pool(name, uuid, state, capacity, allocation, available, autostart, kind, target, volumes, missing,
                volume_count=len(volumes))


PHASE = "reading the storage pools' volumes"


def read_pools(chosen: list[Any], reader: Callable[[Any], Pool], phase: str = PHASE) -> list[Pool]:
    """``reader`` of every chosen pool on concurrent calls, within the time budget; a pool not
    read in time has a ``virt.late_error`` (and the phase is recorded as late: activity)."""
    text = f"{phase} of {len(chosen)} pool{'s' if len(chosen) != 1 else ''}"
    answers = virt.in_parallel(reader, chosen, virt.concurrency(), text)
    return [Pool(p.name(), p.UUIDString(), error=virt.late_error(text)) if a is virt.LATE else a
            for p, a in zip(chosen, answers)]
