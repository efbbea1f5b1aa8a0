"""kvm-backup: the classic dumpxml + copy + tar + rsync backup recipe as one tool that cron can run
on a host with hundreds of guests, without ever leaving a guest on a temporary overlay or
publishing a half-written archive (decision D4)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sensu_kvm import __version__, space, virt
from sensu_kvm.argtypes import count_arg, domain_arg, number_arg, path_arg, seconds_arg, shown, text_arg
from sensu_kvm.backup import (
    catalog,
    create,
    dest,
    disks,
    policy,
    progress,
    prune,
    reader,
    recover,
    restore,
    signals,
    tested,
    testrestore,
)
from sensu_kvm.backup import remote as remote_copy
from sensu_kvm.durations import format_age
from sensu_kvm.errors import BadRequest, Interrupted, KvmError, NotUndone, Refused
from sensu_kvm.snapshots import operations
from sensu_kvm.tools import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Parser, common_options, run_tool, settle

PROG = "kvm-backup"
T = TypeVar("T")

MAX_MIB_S = 1048576.0  # 1 TiB/s: a bandwidth limit beyond it is a typo, and would overflow libvirt's counter

EXIT_TEXT = ("exit codes: 0 done, 1 failed (a backup, a damaged archive, libvirt or the host; one line on stderr\n"
             "per problem), 2 bad options or input (unknown domain, unusable destination): nothing changed")

EXAMPLES = {
    "": """\
  kvm-backup create web1 --dest /srv/backup
  kvm-backup create --all --dest backup@vault:/srv/backup --json
  kvm-backup list /srv/backup
  kvm-backup verify /srv/backup/web1-20240501T020000Z.kvmbak.tar.zst
  kvm-backup restore /srv/backup/web1-20240501T020000Z.kvmbak.tar.zst --name web1-copy --start
  kvm-backup test-restore /srv/backup/web1-20240501T020000Z.kvmbak.tar.zst
  kvm-backup prune /srv/backup --keep-last 3 --keep-daily 7 --keep-weekly 4
  kvm-backup recover web1""",
    "create": """\
  kvm-backup create web1 --dest /srv/backup                 live if running: the backup API, else overlay
  kvm-backup create web1 --engine overlay --dest /srv/backup   live: overlay, copy, commit back (kvm-backup/1)
  kvm-backup create web1 db1 --mode stop --dest /srv/backup  shut down, copy, start again
  kvm-backup create db1 --mode stop --force --shutdown-timeout 300 --dest /srv/backup
  kvm-backup create web1 --mode suspend --compress bzip2 --dest /srv/backup
  kvm-backup create --all --dest backup@vault:/srv/backup --rsh 'ssh -i /root/.ssh/backup'
                                           streamed over ssh: nothing staged on this host
  kvm-backup create --all --dest /srv/backup --ionice idle   reads only when no one else needs the disk
  kvm-backup create --all --dest /srv/backup --bwlimit 100 --json     (cron: quiet, JSON summary)
  kvm-backup create web1 --engine api --dest /srv/backup   live through libvirt's backup API (kvm-backup/2 full)
  kvm-backup create web1 --engine api --level auto --dest /srv/backup   inc when a usable chain exists, else full
  kvm-backup create web1 --engine api --level inc --max-chain 14 --dest /srv/backup
  kvm-backup create web1 --engine api --level diff --dest /srv/backup   changes since the chain's full
  kvm-backup create web1 --engine api --scratch-dir /var/lib/kvm-scratch --dest /srv/backup""",
    "verify": """\
  kvm-backup verify /srv/backup/web1-20240501T020000Z.kvmbak.tar.zst
  kvm-backup verify /srv/backup/web1-20240503T020000Z.inc.kvmbak.tar.zst   the inc and its chain to the full
  kvm-backup verify /srv/backup/*.kvmbak.tar.zst --json""",
    "list": """\
  kvm-backup list /srv/backup
  kvm-backup list /srv/backup --domain web1 --verify
  kvm-backup list /srv/backup --json""",
    "restore": """\
  kvm-backup restore /srv/backup/web1-20240501T020000Z.kvmbak.tar.zst            (web1 must be gone)
  kvm-backup restore ARCHIVE --force                        replace web1 (shut off) and its images
  kvm-backup restore ARCHIVE --name web1-copy --start       beside the original: new name, UUID, MACs
  kvm-backup restore ARCHIVE --name web1-test --image-dir /srv/scratch
  kvm-backup restore ARCHIVE --allow-dir /srv/images --allow-readonly /srv/iso/debian-12.iso
  kvm-backup restore /srv/backup/web1-20240503T020000Z.inc.kvmbak.tar.zst --name web1-may3
                                           web1 as of that incremental, rebuilt from its chain""",
    "test-restore": """\
  kvm-backup test-restore /srv/backup/web1-20240501T020000Z.kvmbak.tar.zst   agent ping, else 30 s alive
  kvm-backup test-restore ARCHIVE --sign disk --alive 60 --work-dir /srv/scratch
  kvm-backup test-restore ARCHIVE --sign console --console-regex 'login:' --boot-timeout 300
  kvm-backup test-restore ARCHIVE --allow-readonly /srv/kernels --json""",
    "prune": """\
  kvm-backup prune /srv/backup --keep-last 3
  kvm-backup prune /srv/backup --keep-daily 7 --keep-weekly 4 --dry-run
  kvm-backup prune /srv/backup --keep-last 1 --dry-run   newest an inc: keeps it, its full and the incs between""",
    "recover": """\
  kvm-backup recover web1           commit back an overlay a killed run left, start/resume the guest
  kvm-backup recover web1 --wait 300   wait longer for libvirt to finish what the killed run started
  kvm-backup recover --all""",
}


NOTES = {
    "prune": """\
Every archive counts as a backup, a kvm-backup/2 inc or diff too. Keeping an archive keeps every
archive it builds on (its parents back to the full), whatever the policy says of them. An inc or diff
whose chain is broken (a parent missing or unreadable) is no backup: the policy does not count it,
it is named on stderr and goes like anything beyond the policy. The newest kept archive of each
domain must verify, with its chain, before anything older of that domain is deleted. --dry-run
lists every archive with what would be done and why.""",
    "list": """\
Level is full, inc or diff (kvm-backup/2), Parent the archive an inc or diff builds on; JSON also
gives root, the full its chain starts with. An inc or diff whose parent is not in the folder shows
as FAILED (its chain is broken). --verify reads each archive whole, an inc or diff with its chain.""",
    "verify": """\
An inc or diff (kvm-backup/2) is verified with its whole chain back to the full: each parent must be
in the same folder with the sha256 its child names, and every archive is read whole; a failure names
the archive of the chain that is bad (a missing parent too: exit 1).

Besides every sha256, verify refuses (as damaged, exit 1) an archive that no restore would accept:
paths with '..', relative or not in normal form, member names that are not disks/<target>.img of the
header's disks, a domain.xml whose name, UUID or disks differ from the header, a <backingStore> or
<mirror> in it, a qcow2 image with a backing file. What depends on the host (where images may go,
which host files the XML may use) only restore can check.""",
    "restore": """\
Nothing in the archive is trusted. Images go only to --image-dir, an --allow-dir, the target folder
of a dir/fs/netfs storage pool, or the folder of an image of the domain with the archive's UUID (or
of the domain replaced) on this host; symlinks resolved, never through a symlink, never over a file
that is not an image of the domain replaced (--force). Every other host file the domain XML names
must be allowed: read-only files (CD-ROM, kernel, initrd, firmware) by --allow-readonly or by this
host's own definition of the domain (same UUID, or the domain replaced); log files only by that
definition; host devices, sockets, scripts and the like only by the definition of the domain
replaced. <seclabel>, <emulator> and the <nvram> path are never taken from an archive. A refusal
is one line naming the element and the path, exit 2 (1 for a damaged archive), nothing written.

--name NEW runs the copy beside the original: besides a new name, UUID, MACs and images
NEW-<target>.<ext>, every file its serial, console, channel or parallel devices write (a file
device, a <log file>) becomes NEW-<device><index>.log beside its first image (a listening unix
socket NEW-<device><index>.sock), the guest agent's socket is libvirt's own, VNC/SPICE get
autoport, interfaces lose a fixed tap name and a vsock its fixed CID; NVRAM is a fresh one from the
firmware's template (the archive holds none), TPM state is blank (it is per UUID). Whatever paths
the archive named there are dropped, never written to; such a file that exists already is reused
only with --force, never through a symlink.

A kvm-backup/2 archive (a full, an inc or a diff) restores the point in time it was made: the same
checks, on that archive's own domain XML, then its chain (back to the full, each parent by name in
the same folder with the sha256 its child names) is rebuilt in a private .kvm-restore-* folder
beside the first image (every image must then go to one file system), each qcow2 disk converted back
to a standalone qcow2 (no backing file), raw disks raw, and moved into place as above; the work
folder is removed whatever happens.""",
    "test-restore": """\
Verifies the archive (every sha256 and structural rule; a damaged one is refused, nothing defined),
restores it as ktr-<domain>-<hex> into --work-dir the way restore --name does (its own UUID, MACs,
logs, NVRAM, TPM), without any network interface, shared folder, host/USB device, shared memory or
disk not held in the archive (CD-ROMs too), starts it and waits for a sign of life (--sign):
  agent    the guest agent answers guest-ping within --boot-timeout
  disk     the copy stays running for --alive seconds, its disks readable (blockStats, and a read of
           the first sector of a raw disk, blockInfo of a qcow2) and not paused on an I/O error
  console  a line matching --console-regex appears in its serial log within --boot-timeout
  auto     agent when the domain has a guest agent channel, else disk (default)
Then the copy is destroyed, undefined (with its NVRAM) and its files deleted, always; a journal in
STATE-DIR/test-restore lets the next test-restore or recover remove what a killed run left. The
result (passed, failed, refused) goes to ARCHIVE.tested.json, shown by list and judged by
check-kvm-backup-age --require-tested. Exit 0 passed, 1 failed, 2 refused or bad options.""",
}


def _epilog(name: str) -> str:
    note = NOTES[name] + "\n\n" if name in NOTES else ""
    return "examples:\n" + EXAMPLES[name].rstrip() + "\n\n" + note + EXIT_TEXT


def parser() -> Parser:
    top = Parser(prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Back up libvirt domains into verified archives (inactive XML, every disk image, a "
                             "manifest with sha256 sums), locally or streamed to a remote host over ssh; verify, list, "
                             "restore, prune.",
                 epilog=_epilog(""))
    top.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    common = common_options(top, catalog.STATE_DIR, "journals of running backups, for recovery")
    subs = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def sub(name: str, helptext: str, func: Callable[[argparse.Namespace], int],
            libvirt: bool = True) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=helptext, description=helptext, parents=[common] if libvirt else [],
                            allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=_epilog(name))
        p.set_defaults(func=func, uses_libvirt=libvirt)
        return p

    p = sub("create", "back domains up: live (overlay + commit), stop or suspend; shut off ones copied directly",
            cmd_create)
    p.add_argument("domains", type=domain_arg, nargs="*", metavar="DOMAIN")
    p.add_argument("--all", action="store_true", help="every domain of the connection")
    p.add_argument("--dest", type=path_arg, required=True, metavar="DIR|HOST:DIR",
                   help="a local folder, or HOST:DIR (user@host:dir): the archive is streamed there over ssh as "
                        "it is built (no copy on this host), a cut connection resumed, and published there once "
                        "its sha256 matches")
    p.add_argument("--mode", choices=("live", "stop", "suspend"),
                   help="for running domains: live (default) through --engine (the backup API, or an overlay, "
                        "copy, blockcommit); stop: shut down, copy, start again; suspend: pause, copy, resume")
    p.add_argument("--compress", choices=("zstd", "bzip2", "none"), default="zstd", help="default: zstd")
    p.add_argument("--force", action="store_true",
                   help="--mode stop: destroy a guest that does not shut down in time (the backup is then recorded "
                        "as crash-consistent (forced off after Ns), not shut down)")
    p.add_argument("--shutdown-timeout", type=seconds_arg, default=120.0, metavar="SECONDS",
                   help="--mode stop: how long to wait for a graceful shutdown, up to 86400 (default: 120)")
    p.add_argument("--no-quiesce", action="store_true",
                   help="live: do not ask the guest agent to freeze file systems (crash-consistent)")
    p.add_argument("--bwlimit", type=number_arg(MAX_MIB_S, "MiB/s"), metavar="MIB/S",
                   help="limit the reading of the disks to this many MiB/s, for both engines (above 0, at most "
                        "1048576): the archive, and a remote stream, are never faster")
    p.add_argument("--commit-bwlimit", type=number_arg(MAX_MIB_S, "MiB/s"), metavar="MIB/S",
                   help="overlay engine: limit the commit job (a guest writing faster than this keeps it from "
                        "finishing; above 0, at most 1048576)")
    p.add_argument("--engine", choices=("auto", "api", "overlay"), default="auto",
                   help="live backups: api = libvirt's backup API read over NBD (kvm-backup/2, full/inc/diff); "
                        "overlay = overlay + copy + commit (kvm-backup/1); auto = api where usable (libnbd, "
                        "libvirt/QEMU backup support), else overlay, saying why on stderr. Default: auto. Stop, "
                        "suspend and shut off backups always copy the image files (kvm-backup/1)")
    p.add_argument("--level", choices=("full", "inc", "diff", "auto"), default="full",
                   help="api engine: inc = changes since the last backup to this --dest, diff = since the chain's "
                        "full, auto = inc when a usable chain exists; without one a full is done and the summary "
                        "says why (never a failure). Default: full")
    p.add_argument("--max-chain", type=count_arg, default=create.pull.MAX_CHAIN, metavar="N",
                   help="a full instead of an inc once the chain holds N archives (default: %(default)s)")
    p.add_argument("--scratch-dir", type=path_arg, metavar="DIR",
                   help="api engine: the folder of QEMU's scratch files (default: beside each image). It must "
                        "exist and have existed when the domain started: QEMU runs in its own mount namespace "
                        "and does not see a file system mounted after its start. The run watches its free space "
                        "while the job runs and ends the job (failing the run, nothing left) when less than "
                        "max(64 MiB, 2%%, 1 s of the guest's writes) is free, before QEMU would fail a guest write")
    p.add_argument("--rsh", type=text_arg, default="ssh -o BatchMode=yes", metavar="COMMAND",
                   help="remote --dest: the ssh command (default: 'ssh -o BatchMode=yes')")
    p.add_argument("--ionice", type=ionice_arg, default=("best-effort", 7), metavar="CLASS[:LEVEL]",
                   help="I/O priority of the backup's own reads (image files; the backup API's reads are "
                        "QEMU's, use --bwlimit): idle, best-effort[:0-7] or none (leave it). Default: "
                        "best-effort:7, the lowest of the class the guests are in")
    p.add_argument("--json", action="store_true", help="a JSON summary on stdout")

    p = sub("verify", "check every checksum of archives, without extracting to disk", cmd_verify, libvirt=False)
    p.add_argument("archives", type=path_arg, nargs="+", metavar="ARCHIVE")
    p.add_argument("--json", action="store_true", help="JSON on stdout")

    p = sub("list", "the backups in a folder: domain, time, age, size, mode, consistency, verified", cmd_list,
            libvirt=False)
    p.add_argument("folder", type=path_arg, metavar="DIR")
    p.add_argument("--domain", type=domain_arg, action="append", default=[], metavar="NAME",
                   help="only this domain (repeatable)")
    p.add_argument("--verify", action="store_true", help="verify every archive again (reads them whole)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")

    p = sub("restore", "verify an archive, place its images, define the domain (and start it)", cmd_restore)
    p.add_argument("archive", type=path_arg, metavar="ARCHIVE")
    p.add_argument("--image-dir", type=path_arg, metavar="DIR", help="put the images here (default: their original folders)")
    p.add_argument("--name", type=domain_arg, metavar="NEW",
                   help="a copy beside the original: a new name, UUID, MAC addresses, log files, sockets, "
                        "graphics port, NVRAM and TPM state (see below)")
    p.add_argument("--force", action="store_true", help="replace an existing (shut off) domain and its images")
    p.add_argument("--start", action="store_true", help="start the domain afterwards")
    p.add_argument("--allow-dir", type=path_arg, action="append", default=[], metavar="DIR",
                   help="images may also be written to this folder (repeatable)")
    p.add_argument("--allow-readonly", type=path_arg, action="append", default=[], metavar="PATH",
                   help="the domain may read this host file, or files under this folder: a CD-ROM image, a "
                        "kernel, firmware (repeatable)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")

    p = sub("test-restore", "restore an archive under a temporary name, isolated, boot it, look for a sign of life, "
            "remove it; record the result beside the archive", cmd_test_restore)
    p.add_argument("archive", type=path_arg, metavar="ARCHIVE")
    p.add_argument("--sign", choices=testrestore.SIGNS, default="auto",
                   help="the sign of life: auto (default), agent, disk or console (see below)")
    p.add_argument("--boot-timeout", type=seconds_arg, default=120.0, metavar="SECONDS",
                   help="agent, console: how long to wait for the sign (default: 120)")
    p.add_argument("--alive", type=seconds_arg, default=30.0, metavar="SECONDS",
                   help="disk: how long the copy must stay running with readable disks (default: 30)")
    p.add_argument("--console-regex", type=text_arg, metavar="REGEX",
                   help="console: the pattern the serial log must show (needed with --sign console)")
    p.add_argument("--work-dir", type=path_arg, metavar="DIR",
                   help=f"where the copy's images and logs go (default: STATE-DIR/test, {catalog.STATE_DIR}/test)")
    p.add_argument("--allow-readonly", type=path_arg, action="append", default=[], metavar="PATH",
                   help="the copy may read this host file or folder: a kernel, firmware (repeatable)")
    p.add_argument("--json", action="store_true", help="the record as JSON on stdout")

    p = sub("prune", "delete old archives beyond a policy; never the newest verified one of a domain", cmd_prune,
            libvirt=False)
    p.add_argument("folder", type=path_arg, metavar="DIR")
    p.add_argument("--keep-last", type=count_arg, default=0, metavar="N", help="keep the N newest of each domain")
    p.add_argument("--keep-daily", type=count_arg, default=0, metavar="N", help="keep the newest of each of N days")
    p.add_argument("--keep-weekly", type=count_arg, default=0, metavar="N", help="keep the newest of each of N weeks")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="JSON on stdout")

    p = sub("recover", "undo what a killed backup left: commit overlays back, start or resume the guest", cmd_recover)
    p.add_argument("domains", type=domain_arg, nargs="*", metavar="DOMAIN")
    p.add_argument("--all", action="store_true", help="every journal in --state-dir and every domain")
    p.add_argument("--wait", type=seconds_arg, default=recover.RECOVER_WAIT, metavar="SECONDS",
                   help="how long to wait for libvirt to finish what a killed run started (a snapshot, a shutdown) "
                        f"before giving up with nothing changed (default: {recover.RECOVER_WAIT:g})")
    return top


# --- helpers ---------------------------------------------------------------------------------------


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def log(line: str) -> None:
    sys.stderr.write(f"{PROG}: {line}\n")
    sys.stderr.flush()


def when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(seconds))


def size_text(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def domains_for(conn: Any, names: list[str], every: bool) -> list[Any]:
    if every == bool(names):
        raise BadRequest("name the DOMAINs or give --all (one of them)")
    if every:
        return sorted(operations.all_domains(conn), key=lambda d: d.name())
    found = []
    for name in dict.fromkeys(names):
        found.append(operations.lookup_domain(conn, name))
    return found


# --- subcommands -----------------------------------------------------------------------------------


IONICE_CLASSES = ("idle", "best-effort", "none")


def ionice_arg(text: str) -> tuple[str, int]:
    """idle, best-effort[:LEVEL] (0 highest to 7 lowest) or none, as (class, level)."""
    kind, colon, level = text.partition(":")
    if kind not in IONICE_CLASSES or (colon and (kind != "best-effort" or level not in tuple("01234567"))):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not idle, best-effort[:0-7] or none")
    return kind, int(level) if level else 4 if kind == "best-effort" else 0


def set_ionice(choice: tuple[str, int]) -> None:
    """The I/O priority of this process (the threads and programs it starts later inherit it)."""
    import psutil  # noqa: PLC0415

    kind, level = choice
    if kind == "none":
        return
    try:
        if kind == "idle":
            psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
        else:
            psutil.Process().ionice(psutil.IOPRIO_CLASS_BE, level)
    except (OSError, psutil.Error) as err:
        log(f"cannot set the I/O priority {kind}: {err}; going on without")


def cmd_create(o: argparse.Namespace) -> int:
    set_ionice(o.ionice)
    remote = dest.split_remote(o.dest)
    if remote is None and not os.path.isdir(o.dest):
        raise BadRequest(f"the destination {o.dest} does not exist or is not a folder")
    if remote is None and not os.access(o.dest, os.W_OK | os.X_OK):
        raise BadRequest(f"the destination {o.dest} is not writable")
    marker_dir = o.state_dir if remote else o.dest
    control = None
    conn = virt.connect(o.uri, readonly=False)
    results: list[dict[str, Any]] = []
    failed = 0
    try:
        doms = domains_for(conn, o.domains, o.all)
        if remote:
            o.rsh, control = remote_copy.multiplexed(o.rsh)
            remote_copy.remote_free(o.rsh, remote[0], remote[1])  # reachable, exists, writable: else exit 2
        opts = create.Options(mode=o.mode, dest=o.dest, compress=o.compress, state_dir=o.state_dir, force=o.force,
                              shutdown_timeout=o.shutdown_timeout, bwlimit=(o.bwlimit or 0) * catalog.MIB,
                              commit_bwlimit=int((o.commit_bwlimit or 0) * catalog.MIB),
                              progress=sys.stderr.isatty() and not o.json,
                              quiesce="never" if o.no_quiesce else "auto", engine=o.engine, level=o.level,
                              max_chain=max(1, o.max_chain), scratch_dir=o.scratch_dir, rsh=o.rsh)
        with signals.interruptible():
            # what killed runs left, first (a domain that cannot be recovered fails below, with its marker)
            recovered, unrecovered = recover.recover_all(conn, o.state_dir, log)
            for line in recovered + unrecovered:
                log(line)
            for dom in doms:
                name = dom.name()
                try:
                    if remote:
                        # what killed runs of this domain left there (this run holds its journal lock)
                        remote_copy.remote_cleanup(o.rsh, remote[0], remote[1], name)
                        need = sum(space.data_bytes(d.source) for d in disks.disks_of(dom.XMLDesc(0)) if d.copy)
                        free = remote_copy.remote_free(o.rsh, remote[0], remote[1])
                        if free < need:
                            raise Refused(f"not enough free space in {o.dest}: {free // catalog.MIB} MiB free, "
                                                 f"up to {-(-need // catalog.MIB)} MiB needed")
                    result = create.create(conn, dom, opts, log)
                    if remote:
                        catalog.write_receipt(o.state_dir, name, result["archive"], result["created"], result["size"])
                    catalog.clear_marker(marker_dir, name)
                    result["ok"] = True
                    results.append(result)
                    if not o.json:
                        skipped = "".join(f"; {t} not copied ({why})" for t, why in result["skipped"].items())
                        level = result.get("level", "full")
                        if result.get("why_full") and o.level != "full":
                            level += f" instead of {o.level}: {result['why_full']}"
                        whole = "".join(f"; {t} copied whole ({why})" for t, why in (result.get("whole") or {}).items())
                        say(f"{name}: {result['archive']} ({size_text(result['size'])}, {result['mode']}, "
                            f"{result['engine']}, {level}, {result['consistency']}, {result['seconds']:.1f}s)"
                            f"{skipped}{whole}")
                except NotUndone as err:  # says itself what is left, and where
                    catalog.write_marker(marker_dir, name, str(err), time.time())
                    results.append({"domain": name, "ok": False, "error": str(err)})
                    failed += 1
                    log(f"{name}: backup failed: {err}")
                    if err.interrupted:
                        break
                except (Interrupted, KeyboardInterrupt) as err:
                    text = str(err) or "interrupted"
                    catalog.write_marker(marker_dir, name, text, time.time())
                    results.append({"domain": name, "ok": False, "error": text})
                    failed += 1
                    log(f"{name}: {text}; the domain is back on its own images")
                    break
                except KvmError as err:
                    if remote:
                        remote_copy.remote_cleanup(o.rsh, remote[0], remote[1], name)
                    catalog.write_marker(marker_dir, name, str(err), time.time())
                    results.append({"domain": name, "ok": False, "error": str(err)})
                    failed += 1
                    log(f"{name}: backup failed: {err}" if not str(err).startswith(name) else f"backup failed: {err}")
                except Exception as err:  # a bug: create has put the domain back; marked failed, one line
                    text = f"internal error: {type(err).__name__}: {err}"
                    if remote:
                        remote_copy.remote_cleanup(o.rsh, remote[0], remote[1], name)
                    catalog.write_marker(marker_dir, name, text, time.time())
                    results.append({"domain": name, "ok": False, "error": text})
                    failed += 1
                    log(f"{name}: backup failed: {text}")
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        if remote:
            remote_copy.close_multiplexed(o.rsh, remote[0], control)
    if o.json:
        say(json.dumps({"ok": not failed, "backups": results}, indent=1))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_verify(o: argparse.Namespace) -> int:
    failed = 0
    bad_input = 0
    report = []
    show = sys.stderr.isatty() and not o.json
    for path in o.archives:
        try:
            found = reader.verify_any(path, progress.Progress(reader.chain_total(path), show) if show else None)
            header = found.header
            files = found.manifest.get("files", [])
            level = (header.get("chain") or {}).get("level", "full")
            report.append({"archive": path, "ok": True, "domain": header["domain"], "files": len(files),
                           "sha256": found.sha256, "format": header["format"], "level": level,
                           "chain": found.chain})
            if not o.json:
                links = f", its chain of {len(found.chain)} archives back to the full too" if len(found.chain) > 1 \
                    else ""
                say(f"{path}: OK ({header['domain']}, {when(header['created'])}, {level}, {len(files)} files, every "
                    f"sha256 matches{links})")
        except KvmError as err:
            failed += 1
            bad_input += isinstance(err, BadRequest)
            report.append({"archive": path, "ok": False, "error": str(err)})
            log(f"{path}: verification failed: {err}" if path not in str(err) else f"verification failed: {err}")
    if o.json:
        say(json.dumps(report, indent=1))
    if bad_input and bad_input == failed:
        return EXIT_BAD_INPUT
    return EXIT_FAILED if failed else EXIT_OK


def _roots(rows: list[dict[str, Any]]) -> None:
    """Each row's ``root`` (the full its chain starts with), following the parents' names among the
    rows; a chain whose parent is not there is marked FAILED (no restore can rebuild it)."""
    by_name = {os.path.basename(r["archive"]): r for r in rows}
    for row in rows:
        current, seen = row, set()
        while current.get("parent") and current["archive"] not in seen:
            seen.add(current["archive"])
            parent = by_name.get(current["parent"])
            if parent is None:
                if not str(row["verified"]).startswith("FAILED"):
                    row["verified"] = f"FAILED: its chain is broken ({current['parent']} is missing)"
                current = {}
                break
            current = parent
        row["root"] = os.path.basename(current["archive"]) if current.get("level") == "full" else None


def cmd_list(o: argparse.Namespace) -> int:
    if not os.path.isdir(o.folder):
        raise BadRequest(f"{o.folder} does not exist or is not a folder")
    now = time.time()
    entries = [e for e in catalog.scan(o.folder) if not o.domain or e.domain in o.domain]
    markers = catalog.read_markers(o.folder)
    rows = []
    for entry in entries:
        row: dict[str, Any] = {"archive": entry.path, "domain": entry.domain, "created": int(entry.created),
                               "age_seconds": int(now - entry.created), "size": entry.size, "level": entry.level,
                               "parent": None, "root": None}
        try:
            header = reader.read_header(entry.path, (catalog.FORMAT, catalog.FORMAT_V2))
            raw = header.get("chain")
            chain: dict[str, Any] = raw if isinstance(raw, dict) else {}
            row.update(mode=header.get("mode"), consistency=header.get("consistency"),
                       verified="at creation", level=chain.get("level", "full"), parent=chain.get("parent"))
            record = tested.read(entry.path)
            row["tested"] = tested.summary(record)
            row["tested_at"] = int(record.when) if record else None
            if o.verify:
                reader.verify_any(entry.path)
                row["verified"] = "yes, now" if row["level"] == "full" else "yes, now (with its chain)"
        except KvmError as err:
            row.update(mode="?", consistency="?", verified=f"FAILED: {err}", tested="?", tested_at=None)
        rows.append(row)
    _roots(rows)
    failed = sum(1 for r in rows if str(r["verified"]).startswith("FAILED"))
    if o.json:
        say(json.dumps({"backups": rows, "failures": markers}, indent=1))
        return EXIT_FAILED if failed else EXIT_OK
    if not rows:
        say(f"no backups in {o.folder}")
    else:
        lines = [["Domain", "Created", "Age", "Size", "Level", "Mode", "Consistency", "Verified", "Tested", "Archive",
                  "Parent"]]
        for r in rows:
            lines.append([r["domain"], when(r["created"]), format_age(r["age_seconds"]), size_text(r["size"]),
                          str(r["level"]), str(r["mode"]), str(r["consistency"]), str(r["verified"]), str(r["tested"]),
                          os.path.basename(r["archive"]), r["parent"] or "-"])
        for line in table(lines):
            say(line)
    for domain, marker in sorted(markers.items()):
        if not o.domain or domain in o.domain:
            say(f"{domain}: last backup FAILED at {when(marker['time'])}: {marker['error']}")
    return EXIT_FAILED if failed else EXIT_OK


def _restoring(uri: str, work: Callable[[Any, Any], T]) -> T:
    """``work(conn, ro)`` with a read-write connection and a read-only one (what this host allows is
    read through the read-only one), interruptible by SIGINT/SIGTERM/SIGHUP; both closed after."""
    ro = virt.connect(uri, readonly=True)
    try:
        conn = virt.connect(uri, readonly=False)
        try:
            with signals.interruptible():
                return work(conn, ro)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    finally:
        with contextlib.suppress(Exception):
            ro.close()


def cmd_restore(o: argparse.Namespace) -> int:
    if not os.path.isfile(o.archive):
        raise BadRequest(f"{o.archive} does not exist or is not a file")
    reader.read_header(o.archive, (catalog.FORMAT, catalog.FORMAT_V2))  # a foreign archive: refused before connecting
    result = _restoring(o.uri, lambda conn, ro: restore.restore(
        conn, o.archive, o.image_dir, o.name, o.force, o.start, sys.stderr.isatty() and not o.json,
        tuple(o.allow_dir), tuple(o.allow_readonly), ro))
    if o.json:
        say(json.dumps(result, indent=1))
    else:
        where = ", ".join(f"{t} -> {p}" for t, p in result["images"].items())
        say(f"restored {result['domain']} from {o.archive} ({where}); defined"
            + (" and started" if o.start else ""))
    return EXIT_OK


def cmd_test_restore(o: argparse.Namespace) -> int:
    if not os.path.isfile(o.archive):
        raise BadRequest(f"{o.archive} does not exist or is not a file")
    if o.sign == "console":
        if not o.console_regex:
            raise BadRequest("--sign console needs --console-regex")
        try:
            re.compile(o.console_regex)
        except re.error as err:
            raise BadRequest(f"--console-regex {o.console_regex!r}: {err}") from err
    opts = testrestore.Options(work_dir=o.work_dir or os.path.join(o.state_dir, "test"), state_dir=o.state_dir,
                               sign=o.sign, boot_timeout=o.boot_timeout, alive=o.alive,
                               console_regex=o.console_regex, allow_readonly=tuple(o.allow_readonly))
    record = _restoring(o.uri, lambda conn, ro: testrestore.test_restore(conn, ro, o.archive, opts, log))
    if o.json:
        say(json.dumps(record._asdict(), indent=1))
    elif record.result == "passed":
        say(f"{o.archive}: test restore passed ({record.sign}: {record.message}; {record.seconds:.1f}s)")
    else:
        log(f"{o.archive}: test restore {record.result}: {record.message}")
    return {"passed": EXIT_OK, "failed": EXIT_FAILED}.get(record.result, EXIT_BAD_INPUT)


def cmd_prune(o: argparse.Namespace) -> int:
    report = prune.prune(o.folder, o.keep_last, o.keep_daily, o.keep_weekly, o.dry_run, log)
    if o.json:
        say(json.dumps(report, indent=1))
    else:
        for item in report:
            if o.dry_run:  # the whole plan: what stays for a chain shows too
                say(f"{item['action']} {item['archive']} ({item['why']})")
            elif item["action"] == "deleted":
                say(f"deleted {item['archive']}" + (f" (its chain is broken: {item['broken']})"
                                                    if item["broken"] else ""))
        if not any(r["action"] != "keep" for r in report):
            say("nothing to prune")
    return EXIT_FAILED if any(r["action"] == "failed" for r in report) else EXIT_OK


def cmd_recover(o: argparse.Namespace) -> int:
    conn = virt.connect(o.uri, readonly=False)
    done: list[str] = []
    failed: list[str] = []
    try:
        # the copies killed test restores left, first: they are no domains to recover
        done += testrestore.clean_leftovers(conn, o.state_dir, log)
        doms = domains_for(conn, o.domains, o.all)
        with signals.interruptible():
            if o.all:
                lines, problems = recover.recover_all(conn, o.state_dir, log, wait=o.wait)
                done += lines
                failed += problems
            for dom in doms:
                if not o.all:
                    lines, problems = recover.recover_all(conn, o.state_dir, log, only_uuid=dom.UUIDString(),
                                                         wait=o.wait)
                    done += lines
                    failed += problems
                try:
                    done += recover.recover_orphans(conn, dom, o.state_dir, log, wait=o.wait)
                except Interrupted:
                    raise
                except KvmError as err:
                    failed.append(str(err))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        for line in done:  # what was done, even when a signal ends the run
            say(line)
    for line in failed:
        log(line)
    if not done and not failed:
        say("nothing to recover")
    return EXIT_FAILED if failed else EXIT_OK


def run(argv: list[str] | None = None) -> int:
    top = parser()
    options = settle(top, top.parse_args(argv), catalog.STATE_DIR)
    virt.set_default_timeout(options.timeout)
    return run_tool(PROG, lambda: int(options.func(options)),
                    (BadRequest, BadRequest, policy.Unsafe))


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()


