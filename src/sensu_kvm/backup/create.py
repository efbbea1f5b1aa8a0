"""One backup of one domain: the live, stop and suspend flows, with one undo path after the snapshot."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sensu_kvm.backup import pull, scratchwatch
from sensu_kvm.backup.archive import ArchiveWriter, header_json, manifest_json
from sensu_kvm.backup.blockjobs import commit_back, commit_offline
from sensu_kvm.backup.catalog import (
    FORMAT,
    FORMAT_V2,
    HEADER,
    MANIFEST,
    MAX_ZEROED,
    STATE_DIR,
    XML_MEMBER,
    archive_name,
    chain_record,
    stamp,
)
from sensu_kvm.backup.dest import Destination, LocalFolder, Output, partial_name, split_remote
from sensu_kvm.backup.disks import Disk, disks_of
from sensu_kvm.backup.hostinfo import _fail, agent_answers
from sensu_kvm.backup.journal import Journal, overlay_path
from sensu_kvm.backup.progress import Progress
from sensu_kvm.backup.reader import scan_archive, verify
from sensu_kvm.backup.recover import recover
from sensu_kvm.backup.remote import RemoteFolder
from sensu_kvm.backup.signals import shielded
from sensu_kvm.errors import BadRequest, Interrupted, KvmError, NotUndone, Refused
from sensu_kvm.qcow2 import backing_file, virtual_size
from sensu_kvm.space import data_bytes, overlay_need, space_problems, statvfs_free
from sensu_kvm.virt import api, nbd
from sensu_kvm.virt.versions import versions


class Options(NamedTuple):
    mode: str | None  # live, stop, suspend; None: live for running domains
    dest: str  # a local folder, or HOST:DIR: the archive is streamed there over ssh as it is built
    compress: str = "zstd"
    state_dir: str = STATE_DIR
    force: bool = False
    shutdown_timeout: float = 120.0
    bwlimit: float = 0.0  # bytes/s for the copy, 0: none
    commit_bwlimit: int = 0  # bytes/s for the commit job, 0: none
    progress: bool = False
    quiesce: str = "auto"  # auto, never
    rsh: str = "ssh -o BatchMode=yes"  # HOST:DIR destinations: the ssh command (remote.multiplexed)
    engine: str = "auto"  # auto (api where usable, else overlay), api, overlay; stop/suspend/offline always take files
    level: str = "full"  # full, inc, diff, auto: api engine only (a full when no usable chain, saying why)
    max_chain: int = pull.MAX_CHAIN
    scratch_dir: str | None = None  # the API's scratch files (default: beside each image)


def destination(opts: Options, log: Callable[[str], None]) -> Destination:
    """Where ``opts.dest`` names: a local folder (it must exist and be writable), or a remote one."""
    remote = split_remote(opts.dest)
    if remote is None:
        return LocalFolder(opts.dest)
    return RemoteFolder(opts.rsh, remote[0], remote[1], log)


def free_name(place: Destination, domain: str, when: float, compress: str, levels: tuple[str, ...],
              also: Callable[[float], bool] = lambda _when: False) -> float:
    """The run's time stamp, moved on until no archive of ``levels`` of that stamp (nor its partial
    archive) is in the destination and ``also(stamp)`` is False: two runs within a second never
    write over one another."""
    taken = place.names()
    while any(n in taken or partial_name(n) in taken for n in (archive_name(domain, when, compress, lv) for lv in levels)) \
            or also(when):
        when += 1
    return when


def plan_space(copied: list[Disk], live: bool, dest: str | None,
               free_of: Callable[[str], tuple[int, int]] = statvfs_free) -> list[str]:
    """What is short of space for a backup of ``copied``: the archive in ``dest`` (a local folder;
    None for a remote one, checked there), the overlays beside the images of a live backup."""
    needs = [(dest, sum(data_bytes(d.source) for d in copied), "archive")] if dest is not None else []
    if live:
        needs += [(os.path.dirname(d.source), overlay_need(virtual_size(d.source)), "overlays") for d in copied]
    return space_problems(needs, free_of)


def check_disks(name: str, disks: list[Disk]) -> list[Disk]:
    """The disks to copy; refuses what a backup cannot hold (missing images, backing chains)."""
    copied = [d for d in disks if d.copy]
    for d in copied:
        if not os.path.isfile(d.source):
            raise Refused(f"{name}: {d.target}: the image {d.source} does not exist or is not a file")
        backing = backing_file(d.source)
        if backing:
            raise Refused(f"{name}: {d.target}: {d.source} has a backing file ({backing}); commit or flatten the "
                          "chain first (kvm-snapshot chain shows it): a backup copies whole images only")
    targets = [d.target for d in copied]
    if len(set(targets)) != len(targets):
        raise Refused(f"{name}: two disks share a target name")
    return copied




def create(conn: Any, dom: Any, opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """Back one domain up into ``opts.dest``; the summary of the published archive.

    On any failure (an error, SIGINT, SIGTERM, SIGHUP, any exception, the commit included)
    everything is undone before raising; when the undo fails too, NotUndone says what is left and
    the journal keeps it. After a SIGKILL the journal lets the next run (or ``recover``) undo it.
    """
    name = dom.name()
    uuid = dom.UUIDString()
    started = time.time()
    clock = time.monotonic()
    journal = Journal(opts.state_dir, uuid)
    journal.acquire()
    try:
        journal.data = journal.load()
        if journal.data:
            for line in recover(conn, journal, log):
                log(line)
        try:
            xml = dom.XMLDesc(api.VIR_DOMAIN_XML_INACTIVE | api.VIR_DOMAIN_XML_SECURE)
            state = dom.state()[0]
        except api.Error as err:
            raise _fail(err, f"{name}: cannot read the domain") from err
        disks = disks_of(xml)
        running = state not in (api.VIR_DOMAIN_SHUTOFF, api.VIR_DOMAIN_CRASHED)
        mode = (opts.mode or "live") if running else "offline"
        engine, why_engine = choose_engine(opts, conn, dom, mode, disks)
        if why_engine:
            log(f"{name}: {why_engine}")
        if engine == "api":
            return _create_api(conn, dom, opts, log, journal, xml, disks, started, clock)
        copied = check_disks(name, disks)
        place = destination(opts, log)
        problems = plan_space(copied, mode == "live", place.local)
        if problems:
            raise Refused(f"{name}: " + "; ".join(problems))
        base = archive_name(name, free_name(place, name, started, opts.compress, ("full",)), opts.compress)
        partial = place.where(partial_name(base))
        consistency = "shut off" if mode == "offline" else "crash-consistent"
        overlays: dict[str, dict[str, str]] = {}
        writer: ArchiveWriter | None = None
        out: Output | None = None
        files: list[dict[str, Any]] = []
        undone = False
        try:
            journal.save(domain=name, uuid=uuid, pid=os.getpid(), started=started, mode=mode, partial=partial,
                         overlays={}, stopped=False, suspended=False, phase="start")
            if mode == "live":
                quiesce = opts.quiesce == "auto" and agent_answers(dom, dom.XMLDesc(0))
                unfrozen = "--no-quiesce" if opts.quiesce != "auto" else "no guest agent answered"
                overlays = {d.target: {"overlay": overlay_path(d.source, started), "base": d.source} for d in copied}
                for pair in overlays.values():
                    if os.path.exists(pair["overlay"]):
                        raise Refused(f"{name}: {pair['overlay']} exists already")
                journal.save(overlays=overlays, phase="snapshot")
                consistency = _snapshot(dom, disks, overlays, quiesce, log, unfrozen)
            elif mode == "stop":
                journal.save(stopped=True, phase="stop", stop_deadline=time.time() + opts.shutdown_timeout)
                consistency = _stop(dom, opts, journal, log)
            elif mode == "suspend":
                journal.save(suspended=True, phase="suspend")
                try:
                    dom.suspend()
                except api.Error as err:
                    raise _fail(err, f"{name}: cannot suspend") from err
                consistency = "crash-consistent (suspended)"
            header = {"format": FORMAT, "domain": name, "uuid": uuid, "created": int(started),
                      "created_text": time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(started)),
                      "mode": mode, "consistency": consistency, "host": os.uname().nodename,
                      "versions": versions(conn),
                      "disks": [{"target": d.target, "device": d.device, "source": d.source, "format": d.format,
                                 "copied": d.copy, **({"member": f"disks/{d.target}.img"} if d.copy else {}),
                                 **({"why": d.why} if d.why else {})} for d in disks]}
            journal.save(phase="copy")
            out = place.output(base)
            writer = ArchiveWriter(out, opts.compress)
            hraw = header_json(header)
            writer.member(HEADER, hraw, started)
            xraw = xml.encode()
            files.append({"member": XML_MEMBER, "size": len(xraw), "stored": len(xraw),
                          "sha256": writer.member(XML_MEMBER, xraw, started)})
            total = sum(data_bytes(d.source) for d in copied)
            progress = Progress(total, opts.progress, opts.bwlimit)
            for d in copied:
                progress.label = f"{name} {d.target}"
                member = f"disks/{d.target}.img"
                info = writer.image(member, d.source, progress)
                files.append({"member": member, "target": d.target, "source": d.source, "format": d.format,
                              "size": info["size"], "data": info["data"], "sha256": info["sha256"]})
            progress.finish()
            mraw = manifest_json(header, files)
            writer.member(MANIFEST, mraw, started)
            writer.close()
            writer = None
            with shielded():  # a signal here waits for the guest to be back on its images
                _undo(dom, overlays, journal, log, opts.commit_bwlimit)
                undone = True
        except BaseException as failure:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.abort()
            elif out is not None:  # written whole, then the undo failed: never published
                out.abort()
            if not undone:
                try:
                    with shielded(raise_pending=False):
                        _undo(dom, overlays, journal, log)
                except BaseException as err:
                    raise NotUndone(_not_undone(name, failure, err, journal),
                                    isinstance(failure, (Interrupted, KeyboardInterrupt))) from failure
            journal.remove()  # undone: nothing left for a later run
            raise
        copied_at = time.monotonic()
        try:
            final, digest = _verify_publish(place, journal, out, base, lambda path: verify(path)[1])
        except BaseException:
            journal.remove()
            raise
        journal.remove()
        size = _size(place, base)
        return {"domain": name, "uuid": uuid, "archive": final, "size": size,
                "sha256": digest, "mode": mode,
                "consistency": consistency, "created": int(started),
                "disks": {f["target"]: {"size": f["size"], "data": f["data"]} for f in files if "target" in f},
                "skipped": {d.target: d.why for d in disks if not d.copy},
                "seconds": round(time.monotonic() - clock, 3), "verify_seconds": round(time.monotonic() - copied_at, 3),
                "engine": engine, "level": "full",
                "why_full": f"the {engine} engine writes full backups only" if opts.level != "full" else "",
                "checkpoint": None, "parent": None, "whole": {}}
    finally:
        journal.release()


def _verify_publish(place: Destination, journal: Journal, out: Output, name: str,
                    check: Callable[[str], str]) -> tuple[str, str]:
    """Check the written archive and publish it as ``name`` (never over an archive of that name):
    a local one is read back whole by ``check`` (its sha256), a remote one is synced there and its
    sha256 compared with what was sent. (where it is, its sha256); on any failure the partial
    archive is gone before this raises (the caller undoes the rest)."""
    try:
        journal.save(phase="verify", final=place.where(name))
        journal.save(phase="publish")
        return place.publish(out, name, check)
    except BaseException:  # a signal, too, between the steps
        out.abort()
        raise


def _size(place: Destination, name: str) -> int:
    found = place.stat(name)
    return found[0] if found else 0


def choose_engine(opts: Options, conn: Any, dom: Any, mode: str, disks: list[Disk] | None = None) -> tuple[str, str]:
    """(engine, what to tell): ``api`` (libvirt's backup API, kvm-backup/2), ``overlay`` (overlay +
    copy + commit, kvm-backup/1) or ``files`` (stop, suspend, shut off: the image files, kvm-backup/1).
    --engine auto takes api for a live backup when ``pull.unusable`` and ``pull.unusable_disks`` (of
    ``disks``) say nothing; an explicit --engine api that cannot be used is Refused (one line: why)."""
    if mode != "live":
        said = f"--engine {opts.engine} applies to live backups; a {mode} backup copies the image files" \
            if opts.engine == "api" else ""
        return "files", said
    if opts.engine == "overlay":
        return "overlay", ""
    why = pull.unusable(conn, dom) or pull.unusable_disks(disks or [])
    if not why:
        return "api", ""
    if opts.engine == "api":
        raise Refused(f"{dom.name()}: the backup API cannot be used: {why}")
    return "overlay", f"overlay engine: the backup API cannot be used: {why}"


def _disks_now(dom: Any, disks: list[Disk]) -> list[pull.DiskNow]:
    found = []
    for d in disks:
        if not d.copy:
            continue
        try:
            capacity = int(dom.blockInfo(d.target, 0)[0])
        except api.Error as err:
            raise _fail(err, f"{dom.name()}: {d.target}: cannot read its size") from err
        found.append(pull.DiskNow(d.target, d.source, d.format, capacity))
    return found


def _create_api(conn: Any, dom: Any, opts: Options, log: Callable[[str], None], journal: Journal, xml: str,
                disks: list[Disk], started: float, clock: float) -> dict[str, Any]:
    """A live backup through libvirt's backup API (pull mode, kvm-backup/2): plan the level, begin the
    job (frozen around backupBegin when the agent answers), read each disk's extents then its data
    over NBD into the archive, end the job, verify, publish, then save the chain record and delete
    the checkpoints it no longer needs. The journal has each step before it is done."""
    name, uuid = dom.name(), dom.UUIDString()
    now = _disks_now(dom, disks)
    targets = [d.target for d in now]
    if len(set(targets)) != len(targets):
        raise Refused(f"{name}: two disks share a target name")
    if not now:
        raise Refused(f"{name}: no disk to copy")
    place = destination(opts, log)
    if opts.scratch_dir is not None and not os.path.isdir(opts.scratch_dir):
        raise BadRequest(f"the scratch folder {opts.scratch_dir} does not exist or is not a folder")
    run = pull.names(uuid, started, {d.target: d.source for d in now}, opts.scratch_dir)
    needs = [(place.local, sum(data_bytes(d.source) for d in now), "archive")] if place.local else []
    needs += [(os.path.dirname(run.scratch[d.target]), overlay_need(d.virtual_size), "scratch files") for d in now]
    problems = space_problems(needs, statvfs_free)
    if problems:
        raise Refused(f"{name}: " + "; ".join(problems))
    record = pull.load_record(opts.state_dir, uuid)
    p = pull.plan(dom, now, record, place, opts.level, opts.max_chain)
    if p.why_full and opts.level != "full":
        log(f"{name}: a full backup instead of {opts.level}: {p.why_full}")
    skip = [d.target for d in disks if not d.copy and d.device == "disk" and d.source]
    # two runs within a second: never replace an archive nor reuse a checkpoint's name (libvirt
    # refuses "domain moment ... already exists"), whichever level the run ends up at
    taken = set(pull.checkpoint_names(dom))
    sources = {d.target: d.source for d in now}
    named = free_name(place, name, started, opts.compress, tuple(dict.fromkeys((p.level, "full"))),
                      lambda when: pull.names(uuid, when, sources, opts.scratch_dir).checkpoint in taken)
    base = archive_name(name, named, opts.compress, p.level)
    run = pull.names(uuid, named, sources, opts.scratch_dir)
    for path in run.scratch.values():
        if os.path.exists(path):
            raise Refused(f"{name}: {path} exists already")
    partial = place.where(partial_name(base))
    writer: ArchiveWriter | None = None
    out: Output | None = None
    files: list[dict[str, Any]] = []
    began = False
    try:
        journal.save(domain=name, uuid=uuid, pid=os.getpid(), started=started, mode="live", engine="api",
                     partial=partial, overlays={}, stopped=False, suspended=False, phase="start")
        quiesce = opts.quiesce == "auto" and agent_answers(dom, dom.XMLDesc(0))
        unfrozen = "--no-quiesce" if opts.quiesce != "auto" else "no guest agent answered"
        journal.save(phase="begin", socket=run.socket, socket_dir=run.socket_dir, scratch=run.scratch,
                     checkpoint=run.checkpoint, frozen=False)
        frozen = False
        try:
            if quiesce:
                journal.save(frozen=True)
                why = pull.freeze(dom, log)
                frozen = not why
                unfrozen = why or unfrozen
            try:
                pull.begin(dom, run, now, skip, p)
            except KvmError as err:
                if p.level == "full":
                    raise
                words = " ".join(str(err).split())
                p = pull.full(f"libvirt could not begin the {p.level} ({words})")
                log(f"{name}: a full backup instead of {opts.level}: {p.why_full}")
                base = archive_name(name, named, opts.compress, "full")
                partial = place.where(partial_name(base))
                journal.save(partial=partial)
                pull.begin(dom, run, now, skip, p)
        finally:
            if quiesce:
                pull.thaw(dom)
                journal.save(frozen=False)
        began = True
        consistency = "quiesced" if frozen else f"crash-consistent ({unfrozen})"
        journal.save(phase="copy")
        exports: dict[str, nbd.Export] = {}
        extents: dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
        watch = scratchwatch.Watch(dom, run.scratch).start()  # ends the job before a scratch fills up
        try:
            for d in now:
                bitmap = f"backup-{d.target}" if d.target in p.bitmaps else None
                exports[d.target] = nbd.Export(run.socket, d.target, bitmap)
                data, zeroed = exports[d.target].extents()
                if len(zeroed) > MAX_ZEROED:  # stored as data: zstd makes the zeros nearly free
                    data, zeroed = sorted(data + zeroed), []
                extents[d.target] = (data, zeroed)
            levels = {d.target: ("inc" if d.target in p.bitmaps else "full") for d in now}
            whole = {t: pull.why_whole(next(d for d in now if d.target == t)) for t in p.whole}
            by_target = {d.target: d for d in now}
            header = {"format": FORMAT_V2, "domain": name, "uuid": uuid, "created": int(started),
                      "created_text": time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(started)),
                      "mode": "live", "consistency": consistency, "host": os.uname().nodename,
                      "versions": versions(conn),
                      "chain": chain_record(p.level, run.checkpoint, p.since, p.parent, p.parent_sha256,
                                            p.root or base, p.depth),
                      "disks": [{"target": d.target, "device": d.device, "source": d.source, "format": d.format,
                                 "copied": d.copy,
                                 **({"member": f"disks/{d.target}.img", "stored": "raw-sparse",
                                     "level": levels[d.target], "virtual_size": by_target[d.target].virtual_size,
                                     "zeroed": [list(z) for z in extents[d.target][1]]} if d.copy else {}),
                                 **({"why": d.why} if d.why else {})} for d in disks]}
            out = place.output(base)
            writer = ArchiveWriter(out, opts.compress)
            writer.member(HEADER, header_json(header), started)
            xraw = xml.encode()
            files.append({"member": XML_MEMBER, "size": len(xraw), "stored": len(xraw),
                          "sha256": writer.member(XML_MEMBER, xraw, started)})
            progress = Progress(sum(n for data, _z in extents.values() for _o, n in data), opts.progress, opts.bwlimit)
            for d in now:
                progress.label = f"{name} {d.target}"
                export = exports[d.target]

                def read(view: memoryview, offset: int, export: nbd.Export = export) -> int:
                    got = export.read(len(view), offset)
                    view[:len(got)] = got
                    return len(got)

                member = f"disks/{d.target}.img"
                info = writer.extents_member(member, export.size, extents[d.target][0], read, progress)
                files.append({"member": member, "target": d.target, "source": d.source, "format": d.format,
                              "size": info["size"], "data": info["data"], "sha256": info["sha256"]})
            progress.finish()
            writer.member(MANIFEST, manifest_json(header, files), started)
            writer.close()
            writer = None
        finally:
            for export in exports.values():
                export.close()
            watch.stop()  # raises ScratchFull when the watch ended the job
        with shielded():  # the guest must not keep a scratch growing while we verify
            pull.end(dom, pull.marks(journal.data))
            pull.remove_files(journal.data)
            journal.save(phase="ended")
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()
        elif out is not None:  # written whole, then ending the job failed: never published
            out.abort()
        with shielded(raise_pending=False):
            if journal.data.get("frozen"):
                pull.thaw(dom)
            with contextlib.suppress(KvmError):
                pull.end(dom, pull.marks(journal.data))
            pull.remove_files(journal.data)
            if began or run.checkpoint in _checkpoints(dom):
                with contextlib.suppress(KvmError):
                    pull.delete_checkpoint(dom, run.checkpoint)
        journal.remove()
        raise
    copied_at = time.monotonic()
    try:
        # the new archive alone: its parent's sha256 is in the record, checked when the chain is read
        final, digest = _verify_publish(place, journal, out, base,
                                           lambda path: scan_archive(path, formats=(FORMAT_V2,))[2])
    except BaseException:
        with shielded(raise_pending=False), contextlib.suppress(KvmError):
            pull.delete_checkpoint(dom, run.checkpoint)
        journal.remove()
        raise
    size, mtime = place.stat(base) or (0, 0.0)
    root = p.root or base
    root_sha = digest if p.level == "full" else str((record.get(place.key) or {})
                                                     .get("root_sha256") or "")
    root_cp = p.root_checkpoint or run.checkpoint
    entry = pull.link(base, digest, size, mtime, p.level, run.checkpoint, root, root_sha, root_cp,
                      p.depth, now, levels)
    with shielded():
        journal.save(phase="published", record=entry, dest=place.key)
        pull.save_record(opts.state_dir, uuid, place.key, entry)
        pull.prune_checkpoints(dom, {run.checkpoint, root_cp}, log)
        journal.remove()
    return {"domain": name, "uuid": uuid, "archive": final, "size": size,
            "sha256": digest, "mode": "live", "consistency": consistency, "created": int(started),
            "disks": {f["target"]: {"size": f["size"], "data": f["data"]} for f in files if "target" in f},
            "skipped": {d.target: d.why for d in disks if not d.copy},
            "seconds": round(time.monotonic() - clock, 3), "verify_seconds": round(time.monotonic() - copied_at, 3),
            "engine": "api", "level": p.level, "why_full": p.why_full, "checkpoint": run.checkpoint,
            "parent": p.parent, "whole": whole}


def _checkpoints(dom: Any) -> list[str]:
    try:
        return pull.checkpoint_names(dom)
    except KvmError:
        return []




def _snapshot(dom: Any, disks: list[Disk], overlays: dict[str, dict[str, str]], quiesce: bool,
              log: Callable[[str], None], unfrozen: str) -> str:
    """External disk-only snapshot, no metadata, atomic; quiesced when the agent answers. The
    consistency it reached: ``quiesced``, or ``crash-consistent (WHY)`` (``unfrozen`` when no freeze
    was asked for, or the agent's failure to freeze)."""
    parts = []
    for d in disks:
        if d.target in overlays:
            parts.append(f"<disk name='{d.target}' snapshot='external'><driver type='qcow2'/>"
                         f"<source file='{_attr(overlays[d.target]['overlay'])}'/></disk>")
        elif d.device == "disk" and d.source:
            parts.append(f"<disk name='{d.target}' snapshot='no'/>")
    xml = f"<domainsnapshot><name>kvm-backup-{stamp(time.time())}</name><disks>{''.join(parts)}</disks></domainsnapshot>"
    flags = (api.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | api.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
             | api.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
    if quiesce:
        try:
            dom.snapshotCreateXML(xml, flags | api.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
            return "quiesced"
        except api.Error as err:
            log(f"{dom.name()}: the guest agent could not freeze the file systems ({' '.join(str(err).split())}); "
                "the backup is crash-consistent")
            unfrozen = "the guest agent could not freeze"
    try:
        dom.snapshotCreateXML(xml, flags)
    except api.Error as err:
        raise _fail(err, f"{dom.name()}: cannot create the temporary overlays") from err
    return f"crash-consistent ({unfrozen})"


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


def _stop(dom: Any, opts: Options, journal: Journal, log: Callable[[str], None]) -> str:
    """Shut the guest down (destroy it after the timeout with --force); the consistency that gives:
    ``shut down`` when the guest shut itself down, else ``crash-consistent (forced off after Ns)``."""
    try:
        dom.shutdown()
    except api.Error as err:
        if dom.isActive():
            raise _fail(err, f"{dom.name()}: cannot shut down") from err
    deadline = time.monotonic() + opts.shutdown_timeout
    while dom.isActive():
        if time.monotonic() > deadline:
            if not opts.force:
                raise Refused(f"{dom.name()} did not shut down within {opts.shutdown_timeout:g}s "
                              "(use --force to destroy it, or a longer --shutdown-timeout)")
            log(f"{dom.name()} did not shut down within {opts.shutdown_timeout:g}s: destroying it (--force)")
            journal.save(phase="destroy")
            try:
                dom.destroy()
            except api.Error as err:
                if dom.isActive():
                    raise _fail(err, f"{dom.name()}: cannot destroy") from err
            return f"crash-consistent (forced off after {opts.shutdown_timeout:g}s)"
        time.sleep(0.2)
    return "shut down"


def _undo(dom: Any, overlays: dict[str, dict[str, str]], journal: Journal, log: Callable[[str], None],
          bandwidth: int = 0) -> None:
    """Put the domain back as it was: overlays committed, started or resumed again. The journal
    keeps what could not be undone for the next run."""
    data = journal.data
    remaining = dict(data.get("overlays") or {})
    if remaining:
        journal.save(phase="commit")
        for target, pair in sorted(dict(remaining).items()):
            if dom.isActive():
                commit_back(dom, target, pair["overlay"], pair["base"], log, bandwidth)
            else:
                commit_offline(dom, target, pair["overlay"], pair["base"])
            remaining.pop(target, None)
            journal.save(overlays=remaining)
        journal.save(phase="committed")
    if data.get("suspended"):
        try:
            if dom.state()[0] == api.VIR_DOMAIN_PAUSED:
                dom.resume()
        except api.Error as err:
            raise _fail(err, f"{dom.name()}: cannot resume") from err
        journal.save(suspended=False)
    if data.get("stopped"):
        try:
            if not dom.isActive():
                dom.create()
        except api.Error as err:
            raise _fail(err, f"{dom.name()}: cannot start it again") from err
        journal.save(stopped=False)


def _not_undone(name: str, failure: BaseException, err: BaseException, journal: Journal) -> str:
    """The one line for a run whose undo failed too: what failed, what is left, where it is kept."""
    first = str(failure) or type(failure).__name__
    if not isinstance(failure, (KvmError, KeyboardInterrupt)):
        first = f"internal error: {type(failure).__name__}: {failure}"
    why = str(err) if isinstance(err, KvmError) else f"{type(err).__name__}: {err}"
    left = [f"{t} still on {p['overlay']}" for t, p in sorted((journal.data.get("overlays") or {}).items())]
    if journal.data.get("suspended"):
        left.append("still suspended")
    if journal.data.get("stopped"):
        left.append("still shut off")
    return (f"{first}; putting {name} back failed too ({why}): {', '.join(left) or 'see the journal'}, recorded in "
            f"{journal.path}; run kvm-backup recover {name}")
