"""kvm-backup test-restore: prove that an archive restores and boots (issue 17, docs/decisions.md
"Issue 17: proven restores (test-restore)").

Verify the archive; restore it under a temporary name (``ktr-<domain8>-<hex6>``) into a work folder,
with no network, no shared host files and no host devices; start it; wait for a sign of life; then
destroy and undefine it (with its NVRAM) and delete its files, always. A journal in
``STATE/test-restore/<name>.json``, written before anything is created, lets the next test-restore
(or ``kvm-backup recover``) remove what a killed run left. The result goes to ``ARCHIVE.tested.json``."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, NamedTuple

from sensu_kvm import __version__
from sensu_kvm.atomic import write_atomic
from sensu_kvm.backup import reader, restore, tested
from sensu_kvm.errors import BadRequest, Corrupt, KvmError
from sensu_kvm.guestinfo import AGENT_CHANNEL
from sensu_kvm.statefile import pid_alive
from sensu_kvm.virt import api

PREFIX = "ktr-"
SIGNS = ("auto", "agent", "disk", "console")
# devices that reach beyond the copy's own images: the network, shared folders, host and USB devices
STRIPPED = ("interface", "filesystem", "hostdev", "redirdev", "smartcard", "shmem")


class Options(NamedTuple):
    work_dir: str  # where the copy's images and logs go (made 0711 if missing)
    state_dir: str  # journals in STATE/test-restore
    sign: str  # auto, agent, disk or console
    boot_timeout: float  # agent / console: how long to wait for the sign
    alive: float  # disk: how long the domain must stay running with readable disks
    console_regex: str | None
    allow_readonly: tuple[str, ...] = ()


def temp_name(domain: str) -> str:
    short = re.sub(r"[^A-Za-z0-9_.-]", "_", domain)[:8]
    return f"{PREFIX}{short}-{secrets.token_hex(3)}"


def isolate(root: ET.Element, header: dict[str, Any]) -> None:
    """Strip what a test copy must not use (in place): every network interface, shared folder,
    host/USB device and shared memory; disks that are not restored from the archive (a CD-ROM, a
    shared disk, a network disk); autostart never applies (the copy is transient in purpose)."""
    devices = root.find("devices")
    if devices is None:
        return
    copied = {d["target"] for d in header.get("disks", []) if isinstance(d, dict) and d.get("copied")}
    for child in list(devices):
        target = child.find("target")
        if child.tag in STRIPPED or (child.tag == "disk" and (target is None or target.get("dev") not in copied)):
            devices.remove(child)


# --- journal: what a killed run leaves, and its removal ---------------------------------------------


def journal_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "test-restore")


def remove_copy(conn: Any, name: str, work_dir: str) -> list[str]:
    """Destroy and undefine the domain ``name`` (a test copy: ``ktr-``) with its NVRAM, and delete its
    files in ``work_dir`` (images, logs, partial images); what was removed."""
    if not name.startswith(PREFIX) or "/" in name:
        raise BadRequest(f"{name} is not a test-restore copy")
    done = []
    try:
        dom = conn.lookupByName(name)
    except api.Error as err:
        if err.get_error_code() != api.VIR_ERR_NO_DOMAIN:
            raise
        dom = None
    if dom is not None:
        with contextlib.suppress(api.Error):
            if dom.isActive():
                dom.destroy()
        try:
            dom.undefineFlags(api.VIR_DOMAIN_UNDEFINE_NVRAM)
        except api.Error as err:
            if err.get_error_code() != api.VIR_ERR_NO_DOMAIN:
                try:  # a driver without NVRAM (the test driver refuses the flag)
                    dom.undefine()
                except api.Error:
                    raise err from None
        done.append(f"domain {name}")
    for path in sorted(glob.glob(os.path.join(glob.escape(work_dir), glob.escape(name) + "-*"))
                       + glob.glob(os.path.join(glob.escape(work_dir), "." + glob.escape(name) + "-*"))):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            done.append(path)
    return done


def clean_leftovers(conn: Any, state_dir: str, log: Callable[[str], None]) -> list[str]:
    """Remove the copies of test restores that were killed (their journal's pid is gone)."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(journal_dir(state_dir)), PREFIX + "*.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
            name, work_dir, pid = str(data["name"]), str(data["work_dir"]), int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            log(f"{path}: not a test-restore journal; left alone")
            continue
        if pid_alive(pid) and pid != os.getpid():
            continue
        try:
            done = remove_copy(conn, name, work_dir)
        except (KvmError, api.Error) as err:
            log(f"{name}: the copy a killed test-restore left could not be removed: {err}")
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        removed.append(f"removed what a killed test-restore left: {', '.join(done) or 'nothing'} ({name})")
    return removed


# --- signs of life ----------------------------------------------------------------------------------


def _running(dom: Any) -> str:
    """"" while the domain runs; else why it does not."""
    state, reason = dom.state()
    if state == api.VIR_DOMAIN_RUNNING:
        return ""
    if state == api.VIR_DOMAIN_PAUSED and reason == api.VIR_DOMAIN_PAUSED_IOERROR:
        return "paused on a disk I/O error"
    return {api.VIR_DOMAIN_SHUTOFF: "shut off", api.VIR_DOMAIN_CRASHED: "crashed",
            api.VIR_DOMAIN_PAUSED: "paused"}.get(state, f"in state {state}")


def _disks(xml: str) -> list[tuple[str, str]]:
    """(target, format) of every disk."""
    found = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        target, driver = disk.find("target"), disk.find("driver")
        if target is not None and target.get("dev"):
            found.append((target.get("dev", ""), driver.get("type", "raw") if driver is not None else "raw"))
    return found


def _serial_log(xml: str) -> str | None:
    root = ET.fromstring(xml)
    for serial in root.iterfind("devices/serial"):
        log = serial.find("log")
        if log is not None and log.get("file"):
            return log.get("file")
        source = serial.find("source")
        if serial.get("type") == "file" and source is not None and source.get("path"):
            return source.get("path")
    return None


def choose_sign(sign: str, xml: str) -> str:
    if sign != "auto":
        return sign
    return "agent" if AGENT_CHANNEL in xml else "disk"


def wait_sign(dom: Any, sign: str, opts: Options, sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str]:
    """(passed, message) for the started copy ``dom``."""
    xml = dom.XMLDesc(0)
    start = time.monotonic()
    if sign == "agent":
        while time.monotonic() - start < opts.boot_timeout:
            problem = _running(dom)
            if problem:
                return False, f"the copy is {problem} before its guest agent answered"
            if api.agent_answers(dom, 2):
                return True, f"the guest agent answered guest-ping after {time.monotonic() - start:.1f}s"
            sleep(1)
        return False, f"the guest agent did not answer guest-ping within {opts.boot_timeout:g}s"
    if sign == "console":
        log = _serial_log(xml)
        if log is None:
            raise BadRequest("--sign console: the domain has no serial device writing to a file")
        pattern = re.compile(opts.console_regex or ".")
        while time.monotonic() - start < opts.boot_timeout:
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                if pattern.search(f.read()):
                    return True, f"the serial console matched {pattern.pattern!r} after {time.monotonic() - start:.1f}s"
            problem = _running(dom)
            if problem:
                return False, f"the copy is {problem} before its console matched {pattern.pattern!r}"
            sleep(0.5)
        return False, f"the serial console did not match {pattern.pattern!r} within {opts.boot_timeout:g}s"
    targets = _disks(xml)
    while True:
        problem = _running(dom)
        if problem:
            return False, f"the copy is {problem} after {time.monotonic() - start:.1f}s"
        for target, fmt in targets:
            try:
                dom.blockStats(target)
                if fmt == "raw":  # libvirt peeks into raw disks only; QEMU reads a qcow2's header for blockInfo
                    dom.blockPeek(target, 0, 512, 0)
                else:
                    dom.blockInfo(target, 0)
            except api.Error as err:
                return False, f"{target} is not readable: {err.get_error_message()}"
        if time.monotonic() - start >= opts.alive:
            return True, f"ran {opts.alive:g}s with {', '.join(t for t, _ in targets) or 'no disk'} readable"
        sleep(1)


# --- the test restore -------------------------------------------------------------------------------


def test_restore(conn: Any, ro: Any, path: str, opts: Options, log: Callable[[str], None]) -> tested.Record:
    """Test-restore one archive; the record (also written beside the archive). Raises only for bad
    input found before anything was tried (BadRequest) or a journal that cannot be written."""
    begun = time.time()
    clock = time.monotonic()

    def done(result: str, sign: str, message: str, digest: str = "") -> tested.Record:
        record = tested.Record(os.path.basename(path), digest, result, sign, round(time.monotonic() - clock, 1),
                               time.time(), message, socket.gethostname(), __version__)
        try:
            tested.write(path, record)
        except OSError as err:
            log(f"cannot write {tested.record_path(path)}: {err.strerror}")
        return record

    for line in clean_leftovers(conn, opts.state_dir, log):
        log(line)
    try:
        verified = reader.verify_any(path)  # kvm-backup/2: the whole chain the restore rebuilds
    except Corrupt as err:
        return done("refused", "", f"verify: {err}")
    header, digest = verified.header, verified.sha256
    name = temp_name(str(header.get("domain", "")))
    os.makedirs(opts.work_dir, mode=0o711, exist_ok=True)
    os.makedirs(journal_dir(opts.state_dir), mode=0o700, exist_ok=True)
    journal = os.path.join(journal_dir(opts.state_dir), f"{name}.json")
    write_atomic(journal, json.dumps({"name": name, "work_dir": os.path.abspath(opts.work_dir), "pid": os.getpid(),
                                      "archive": path, "started": begun}))
    sign = ""
    try:
        try:
            restore.restore(conn, path, os.path.abspath(opts.work_dir), name, False, False,
                            allow_readonly=opts.allow_readonly, ro=ro, edit=isolate)
        except Corrupt as err:  # changed since verify
            return done("refused", "", f"restore: {err}", digest)
        except KvmError as err:
            return done("failed", "", f"restore: {err}", digest)
        dom = conn.lookupByName(name)
        sign = choose_sign(opts.sign, dom.XMLDesc(0))
        try:
            dom.create()
        except api.Error as err:
            return done("failed", sign, f"start: {err.get_error_message()}", digest)
        passed, message = wait_sign(dom, sign, opts)
        return done("passed" if passed else "failed", sign, message, digest)
    finally:
        try:
            remove_copy(conn, name, os.path.abspath(opts.work_dir))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(journal)
        except (KvmError, api.Error) as err:
            log(f"{name}: the test copy could not be removed (the next test-restore tries again): {err}")
