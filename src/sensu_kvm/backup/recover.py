"""Recovery of killed runs: wait for libvirt to settle, then undo what each journal says is left."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sensu_kvm.backup import pull
from sensu_kvm.backup.blockjobs import commit_back, commit_offline
from sensu_kvm.backup.catalog import OVERLAY_TAG
from sensu_kvm.backup.hostinfo import _fail, holders, live_chains
from sensu_kvm.backup.journal import Journal, journals, remove_stale_temps
from sensu_kvm.backup.signals import shielded
from sensu_kvm.errors import Interrupted, KvmError, Refused
from sensu_kvm.virt import api

SETTLE = 1.0  # seconds a domain must stay unchanged, with no libvirt job, before recover acts on it
RECOVER_WAIT = 60.0  # default bound of that wait
JOB_OPERATIONS = {1: "a start", 2: "a save", 3: "a restore", 4: "an incoming migration", 5: "an outgoing migration",
                  6: "a snapshot", 7: "a snapshot revert", 8: "a dump", 9: "a backup", 10: "a snapshot deletion"}


class Activity(NamedTuple):
    """What libvirt and QEMU are doing with a domain, as far as it matters to a recovery."""

    busy: str  # "" or the libvirt job still running on the domain ("a snapshot")
    state: tuple[int, int]
    chains: dict[str, list[str]]  # live chains
    blockjobs: dict[str, int]  # target -> block job type
    files: tuple[tuple[str, bool, bool], ...]  # (overlay, exists, held open by QEMU)


def observe(dom: Any, overlays: list[str]) -> Activity:
    busy = ""
    try:
        state = tuple(dom.state())
        stats = dom.jobStats()
        if stats.get("type", 0) not in (0, None):
            busy = JOB_OPERATIONS.get(stats.get("operation", 0), "a job")
        chains = live_chains(dom.XMLDesc(0))
        jobs: dict[str, int] = {}
        if dom.isActive():
            for target in chains:
                info = dom.blockJobInfo(target, 0)
                if info:
                    jobs[target] = int(info.get("type", 0))
    except api.Error as err:
        if err.get_error_code() in (api.VIR_ERR_OPERATION_TIMEOUT, api.VIR_ERR_OPERATION_FAILED) \
                and "lock" in str(err):
            return Activity("another operation (libvirt's job lock is taken)", (0, 0), {}, {}, ())
        if err.get_error_code() == api.VIR_ERR_OPERATION_INVALID:
            return Activity("", (-1, -1), {}, {}, ())  # it stopped or started while being read: changing
        raise
    files = tuple((path, os.path.exists(path), bool(holders(path))) for path in overlays)
    return Activity(busy, (int(state[0]), int(state[1])), chains, jobs, files)


def settle(dom: Any, data: dict[str, Any], log: Callable[[str], None], wait: float) -> Activity:
    """Wait until libvirt has no job on the domain and nothing about it (state, chains, block jobs,
    the overlays' files) changed for SETTLE seconds: a killed run's snapshot, shutdown or destroy
    may still be finishing. Refused (nothing changed) after ``wait`` seconds."""
    name = data.get("domain") or dom.name()
    overlays = sorted(pair["overlay"] for pair in (data.get("overlays") or {}).values())
    deadline = time.monotonic() + wait
    said = ""
    # a killed run that asked the guest to shut down (or destroyed it): that may still happen
    if data.get("stopped") and data.get("phase") in ("stop", "destroy"):
        # a destroy is done within libvirt's own bound (SIGTERM, then SIGKILL after 10 s)
        until = float(data.get("stop_deadline") or 0) if data.get("phase") == "stop" else time.time() + 15
        while dom.isActive() and time.time() < until:
            if time.monotonic() > deadline:
                raise Refused(f"{name}: still shutting down after {wait:g}s (a killed backup asked it to): nothing "
                              f"changed; run kvm-backup recover {name} again")
            if not said:
                said = "shutdown"
                log(f"{name}: waiting for the shutdown a killed backup started")
            time.sleep(0.2)
    last = None
    since = time.monotonic()
    while True:
        try:
            now = observe(dom, overlays)
        except api.Error as err:
            raise _fail(err, f"{name}: cannot read what libvirt is doing with it") from err
        clock = time.monotonic()
        if now.busy or now != last:
            last, since = now, clock
        elif clock - since >= SETTLE:
            return now
        if clock > deadline:
            what = f"libvirt is still busy with {now.busy}" if now.busy else "its state keeps changing"
            raise Refused(f"{name}: {what} after {wait:g}s: nothing changed; run kvm-backup recover {name} again")
        if now.busy and said != now.busy:
            said = now.busy
            log(f"{name}: waiting for {now.busy} to finish")
        time.sleep(0.1)


def _lookup_uuid(conn: Any, uuid: str, name: str) -> Any:
    try:
        return conn.lookupByUUIDString(uuid)
    except api.Error as err:
        if err.get_error_code() == api.VIR_ERR_NO_DOMAIN:
            return None
        raise _fail(err, f"{name}: lookup") from err


def recover(conn: Any, journal: Journal, log: Callable[[str], None], wait: float = RECOVER_WAIT) -> list[str]:
    """Undo what a killed run left, from its journal (its lock held): once libvirt is done with the
    domain (``settle``), commit overlays back, start or resume the domain it stopped or suspended,
    remove its temporary archive, remove the journal. What was done, one line each. A step that
    cannot be done raises KvmError; the journal then keeps what is left."""
    data = journal.data
    done: list[str] = []
    name = data.get("domain", "?")
    dom = _lookup_uuid(conn, data.get("uuid") or journal.uuid, name)
    remaining = dict(data.get("overlays") or {})
    try:
        if data.get("engine") == "api":
            done += _recover_api(dom, journal, name, wait)
        if dom is not None:
            settle(dom, data, log, wait)
        for target, pair in sorted(remaining.items()):
            overlay, base = pair["overlay"], pair["base"]
            with shielded():  # the commit and its report, whole
                if dom is None:
                    if os.path.exists(overlay):
                        done.append(f"{name}: the domain is gone; its overlay {overlay} is kept")
                elif dom.isActive():
                    done.append(f"{name}: " + commit_back(dom, target, overlay, base, log))
                else:
                    done.append(f"{name}: " + commit_offline(dom, target, overlay, base))
                del remaining[target]
                journal.save(overlays=remaining)
        if dom is not None and data.get("suspended"):
            try:
                if dom.state()[0] == api.VIR_DOMAIN_PAUSED:
                    dom.resume()
                    done.append(f"{name}: resumed (a backup had suspended it)")
            except api.Error as err:
                raise _fail(err, f"{name}: cannot resume it") from err
            journal.save(suspended=False)
        if dom is not None and data.get("stopped"):
            try:
                if not dom.isActive():
                    dom.create()
                    done.append(f"{name}: started again (a backup had stopped it)")
                elif data.get("phase") == "stop":
                    done.append(f"{name}: still running (a killed backup had asked it to shut down; it did not)")
            except api.Error as err:
                raise _fail(err, f"{name}: cannot start it again") from err
            journal.save(stopped=False)
    except BaseException:
        for line in done:
            log(line)
        raise
    partial = data.get("partial")
    if partial and os.path.exists(partial):
        final = data.get("final") or ""
        published = bool(final) and os.path.exists(final) and os.path.samefile(partial, final)
        with contextlib.suppress(OSError):
            os.unlink(partial)
            done.append(f"{name}: removed the temporary name {partial} of the published archive {final}" if published
                        else f"{name}: removed the unfinished archive {partial}")
    journal.remove()
    return done


def _recover_api(dom: Any, journal: Journal, name: str, wait: float) -> list[str]:
    """A killed run of the api engine: the guest thawed, our backup job ended (one that names our
    socket or scratch files; another job is left alone), its scratch files and socket folder removed,
    the checkpoint it made deleted unless its archive was published (then its chain record saved and
    the checkpoints it no longer needs deleted). Before ``settle``: a pull job never ends by itself."""
    data = journal.data
    done: list[str] = []
    if dom is not None and dom.isActive():
        if data.get("frozen"):
            pull.thaw(dom)
            done.append(f"{name}: thawed the guest's file systems (a killed backup had frozen them)")
            journal.save(frozen=False)
        deadline = time.monotonic() + wait
        quiet_since = None
        while True:  # a killed backupBegin may still be starting the job: end it once it is there
            ended = pull.end(dom, pull.marks(data))
            if ended:
                done.append(f"{name}: ended the backup job a killed backup left")
                quiet_since = None
            if ended is False:
                raise Refused(f"{name}: a backup job that is not ours runs on it; left alone: run kvm-backup recover "
                              f"{name} again once it has ended")
            now = time.monotonic()
            quiet_since = quiet_since or now
            if now - quiet_since >= SETTLE:
                break
            if now > deadline:
                raise Refused(f"{name}: its backup job did not end after {wait:g}s; run kvm-backup recover {name} again")
            time.sleep(0.1)
    for path in pull.remove_files(data):
        done.append(f"{name}: removed {path}")
    checkpoint = data.get("checkpoint")
    if dom is not None and data.get("phase") == "published" and isinstance(data.get("record"), dict):
        entry = data["record"]
        pull.save_record(journal.folder, journal.uuid, data.get("dest") or "", entry)
        done.append(f"{name}: saved the chain record of the published {entry.get('archive')}")
        for old in pull.prune_checkpoints(dom, {entry.get("checkpoint"), entry.get("root_checkpoint")}, lambda _l: None):
            done.append(f"{name}: deleted the checkpoint {old} (no longer needed)")
    elif dom is not None and checkpoint and checkpoint in pull.checkpoint_names(dom) \
            and not (data.get("final") and os.path.exists(data["final"])):  # published: a later run prunes it
        pull.delete_checkpoint(dom, checkpoint)
        done.append(f"{name}: deleted the checkpoint {checkpoint} of the killed backup")
    journal.save(scratch={}, socket_dir="")
    return done


def recover_all(conn: Any, state_dir: str, log: Callable[[str], None], only_uuid: str | None = None,
                wait: float = RECOVER_WAIT) -> tuple[list[str], list[str]]:
    """Recover every journal in ``state_dir`` whose run is gone (its lock is free): (what was done,
    what could not be done), one line each."""
    done: list[str] = []
    failed: list[str] = []
    remove_stale_temps(state_dir)
    for data in journals(state_dir):
        if only_uuid and data.get("uuid") != only_uuid:
            continue
        journal = Journal(state_dir, data["uuid"])
        try:
            journal.acquire()
        except Refused:
            log(f"{data.get('domain')}: a kvm-backup run is still working on it; left alone")
            continue
        try:
            journal.data = journal.load()
            if journal.data:
                done += recover(conn, journal, log, wait)
        except Interrupted:
            raise  # the whole run ends: the journal stays for the next one
        except KvmError as err:
            failed.append(str(err))
        finally:
            journal.release()
    return done, failed


def recover_orphans(conn: Any, dom: Any, state_dir: str, log: Callable[[str], None],
                    wait: float = RECOVER_WAIT) -> list[str]:
    """Overlays named by this tool that a running domain still runs on without a journal (a
    journal lost with its state directory): committed back onto their backing image, under the
    domain's lock (never under a run that is working on it) and once libvirt is done with it."""
    if not dom.isActive():
        return []
    journal = Journal(state_dir, dom.UUIDString())
    try:
        journal.acquire()
    except Refused:
        return []
    try:
        if journal.load():
            return []  # a journal: recover_all's
        def orphans() -> dict[str, dict[str, str]]:
            return {target: {"overlay": chain[0], "base": chain[1]}
                    for target, chain in live_chains(dom.XMLDesc(0)).items()
                    if len(chain) >= 2 and OVERLAY_TAG in os.path.basename(chain[0])}
        if not orphans():
            return []
        settle(dom, {"domain": dom.name(), "overlays": orphans()}, log, wait)
        return [f"{dom.name()}: " + commit_back(dom, target, pair["overlay"], pair["base"], log)
                for target, pair in sorted(orphans().items())]
    finally:
        journal.release()
