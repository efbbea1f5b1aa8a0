"""Restore of an archive: where images may go, what the host vouches for, the write of every image."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, NamedTuple

from sensu_kvm.backup import policy
from sensu_kvm.backup.catalog import FORMAT, FORMAT_V2
from sensu_kvm.backup.disks import disks_of
from sensu_kvm.backup.hostinfo import _fail
from sensu_kvm.backup.progress import Progress
from sensu_kvm.backup.reader import (
    ImageSink,
    Link,
    Member,
    _realsize,
    check_xml,
    data_total,
    read_header,
    read_xml,
    resolve_chain,
    scan_archive,
    scan_link,
)
from sensu_kvm.domxml import rewrite_xml
from sensu_kvm.errors import BadRequest, Corrupt, KvmError, Refused
from sensu_kvm.virt import api

# --- restore ---------------------------------------------------------------------------------------


def restore_paths(header: dict[str, Any], image_dir: str | None, new_name: str | None) -> dict[str, str]:
    """target -> where each copied image goes (pure): its original path, or under ``image_dir``;
    with a new name the file is named after it, so that the copy can live beside the original."""
    paths = {}
    for disk in header.get("disks", []):
        if not disk.get("copied"):
            continue
        source = disk["source"]
        folder = image_dir or os.path.dirname(source)
        base = os.path.basename(source)
        if new_name:
            base = f"{new_name}-{disk['target']}{os.path.splitext(source)[1]}"
        paths[disk["target"]] = os.path.join(folder, base)
    return paths


class HostView(NamedTuple):
    """What this host allows a restore (read with a read-only connection)."""

    image_dirs: list[str]  # resolved folders images may be written to
    vouched: policy.Vouched
    overwritable: frozenset[str]  # resolved images of the domain being replaced (--force)
    replaced: str | None  # the name of the domain being replaced


def host_view(ro: Any, header: dict[str, Any], name: str, new_name: str | None, image_dir: str | None,
              allow_dirs: list[str], force: bool) -> HostView:
    """The folders images may go to: ``--image-dir``, every ``--allow-dir``, the target folders of the
    dir, fs and netfs storage pools, and the folders of the images of the domain with the archive's
    UUID and of the domain being replaced; what those two domains vouch for; what may be overwritten.
    Refuses to replace a running domain, or one that is not the archive's (another UUID)."""

    def lookup(how: Callable[[str], Any], value: str) -> Any:
        try:
            return how(value)
        except api.Error as err:
            if err.get_error_code() == api.VIR_ERR_NO_DOMAIN:
                return None
            raise _fail(err, f"{value}: lookup") from err

    replaced = lookup(ro.lookupByName, name)
    original = lookup(ro.lookupByUUIDString, header["uuid"])
    if not new_name and original is not None and original.name() != name:
        raise BadRequest(f"the archive's UUID is that of the domain {original.name()} here (use --name NEW to restore "
                         "a copy beside it)")
    if not new_name and replaced is not None and replaced.UUIDString().lower() != header["uuid"].lower():
        raise BadRequest(f"a different domain named {name} exists (UUID {replaced.UUIDString()}, the archive's is "
                         f"{header['uuid']}): use --name NEW")
    if replaced is not None:
        if not force:
            raise BadRequest(f"a domain named {name} exists already (use --force to replace it, or --name NEW to "
                             "restore a copy beside it)")
        if replaced.isActive():
            raise Refused(f"{name} is running: shut it down before replacing it")
    dirs = [os.path.realpath(d) for d in ([image_dir] if image_dir else []) + list(allow_dirs)]
    pools: list[Any] = []
    with contextlib.suppress(api.Error):  # no storage driver: no pools
        pools = ro.listAllStoragePools(0)
    for pool in pools:
        with contextlib.suppress(api.Error, ET.ParseError):
            root = ET.fromstring(pool.XMLDesc(0))
            folder = root.findtext("target/path") or ""
            if root.get("type") in ("dir", "fs", "netfs") and folder.startswith("/"):
                dirs.append(os.path.realpath(folder))
    mine: dict[str, list[tuple[Any, list[str]]]] = {"original": [], "replaced": []}
    overwritable: set[str] = set()
    for role, dom in (("original", original), ("replaced", replaced)):
        if dom is None:
            continue
        try:
            xml = dom.XMLDesc(api.VIR_DOMAIN_XML_INACTIVE)
        except api.Error as err:
            raise _fail(err, f"{dom.name()}: cannot read the domain") from err
        images = [d for d in disks_of(xml) if d.copy]
        dirs += [os.path.realpath(os.path.dirname(d.source)) for d in images]
        mine[role].append((ET.fromstring(xml), [d.target for d in images]))
        if role == "replaced":
            overwritable.update(os.path.realpath(d.source) for d in images)
    return HostView(list(dict.fromkeys(dirs)), policy.vouched_by(mine["original"], mine["replaced"]),
                    frozenset(overwritable), replaced.name() if replaced is not None else None)


def _destination(target: str, dest: str, dir_fd: int, force: bool, overwritable: frozenset[str]) -> bool:
    """Whether an image may be written to ``dest`` (in the open folder ``dir_fd``), and whether it
    replaces a file there: never a symlink or anything but a regular file; an existing file only
    with --force and only an image of the domain being replaced."""
    try:
        st = os.stat(os.path.basename(dest), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise Refused(f"{target}: cannot look at {dest}: {err.strerror}") from err
    if stat.S_ISLNK(st.st_mode):
        raise policy.Unsafe(f"{target}: {policy.show(dest)} is a symlink: a restore never writes through one")
    if not stat.S_ISREG(st.st_mode):
        raise policy.Unsafe(f"{target}: {policy.show(dest)} exists and is not a regular file")
    if not force:
        raise BadRequest(f"{target}: {dest} exists already (use --force to overwrite it, or --image-dir)")
    if dest not in overwritable:
        raise policy.Unsafe(f"{target}: {policy.show(dest)} exists and is not an image of the domain being replaced "
                            "(--force overwrites only those)")
    return True


def restore(conn: Any, path: str, image_dir: str | None, new_name: str | None, force: bool, start: bool,
            progress: bool = False, allow_dirs: tuple[str, ...] = (), allow_readonly: tuple[str, ...] = (),
            ro: Any = None, edit: Callable[[ET.Element, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Check an archive against the archive policy (policy.py) and this host (``ro``: a read-only connection), then
    write its images under temporary names while checking every checksum; only when all is well,
    move them into place, define the domain (and start it).

    kvm-backup/1 and kvm-backup/2 share every check (the header, --name, the host's view, where the
    images go, the domain XML against this host) and differ only in the writing: a kvm-backup/1
    archive's members are written beside their destinations (``_write_v1``); a kvm-backup/2 archive
    (a full, or an inc/diff: the point in time it was made) is rebuilt from its chain in a private
    work folder on the destination's file system and converted back to qcow2 where the disk was one
    (``_write_v2``). The host checks always run on the restored archive's own XML (the chain's last).

    ``edit(root, header)`` changes the checked domain XML in place (after ``policy.beside``, before
    the host rules are checked, which then apply to what it left): ``kvm-backup test-restore``
    removes the network and every shared host file there."""
    header = read_header(path, (FORMAT, FORMAT_V2))
    chain: list[Link] | None = None
    if header.get("format") == FORMAT_V2:
        chain = resolve_chain(path)  # every header checked, every parent's sha256
        header = chain[-1].header
    else:
        policy.check_header(header)
    if new_name is not None and policy.name_problem(new_name):
        raise BadRequest(f"--name {policy.show(new_name)} {policy.name_problem(new_name)}")
    name = new_name or header["domain"]
    given = [("--allow-dir", d) for d in allow_dirs] + ([("--image-dir", image_dir)] if image_dir is not None else [])
    for option, folder in given:
        if not os.path.isdir(folder):
            raise BadRequest(f"{option} {folder} does not exist or is not a folder")
    if image_dir is not None:
        image_dir = os.path.abspath(image_dir)
    view = host_view(ro if ro is not None else conn, header, name, new_name, image_dir,
                     [os.path.abspath(d) for d in allow_dirs], force)
    readonly_ok = [os.path.realpath(os.path.abspath(p)) for p in allow_readonly]
    paths = policy.place(restore_paths(header, image_dir, new_name), view.image_dirs)
    # the logs and sockets of a copy go beside its first image (a folder the restore may write to)
    chardev_dir = os.path.dirname(sorted(paths.values())[0]) if paths else (image_dir or "")
    folders: dict[str, int] = {}
    checked: dict[str, Any] = {}

    def on_xml(hdr: dict[str, Any], xml: str) -> None:
        if hdr != header:  # the paths come from the header read first: it must be the one checked now
            raise Corrupt(f"{path}: the archive changed while it was read")
        root, refs = check_xml(hdr, xml)
        chosen: list[str] = []
        if new_name:  # beside the original: host state of its own, in paths this restore chooses
            chosen = policy.beside(root, new_name, chardev_dir)
            refs = [r for r in policy.references(root, policy.copied_targets(hdr))
                    if not (r.kind == "log" and r.path in chosen)]
            for file in chosen:
                _fresh(file, force)
        if edit is not None:
            edit(root, hdr)
            refs = [r for r in policy.references(root, policy.copied_targets(hdr))
                    if not (r.kind == "log" and r.path in chosen)]
        policy.check_host(refs, readonly_ok, view.vouched)
        checked["root"] = root
        checked["xml"] = xml

    def move(target: str, source: str, src_fd: int | None) -> None:
        """One finished image into place, as --force and the folder allow (the new XML is made
        before the first one moves: a failure there leaves nothing in place)."""
        if "new_xml" not in checked:
            checked["new_xml"] = rewrite_xml(ET.tostring(checked["root"], encoding="unicode"), paths, new_name)
        dest = paths[target]
        fd = folders[os.path.dirname(dest)]
        src = os.path.basename(source) if src_fd is not None else source
        try:
            if _destination(target, dest, fd, force, view.overwritable):
                os.replace(src, os.path.basename(dest), src_dir_fd=src_fd, dst_dir_fd=fd)
            else:  # a link never replaces a file that appeared meanwhile
                os.link(src, os.path.basename(dest), src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
                os.unlink(src, dir_fd=src_fd)
        except OSError as err:
            raise KvmError(f"{target}: cannot move the image into place at {dest}: {err.strerror}") from err

    shown = Progress(sum(data_total(link.header) for link in chain) if chain else data_total(header), progress) \
        if progress else None
    try:
        for target, dest in paths.items():
            folder = os.path.dirname(dest)
            if folder not in folders:
                try:
                    folders[folder] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                except OSError as err:
                    raise BadRequest(f"{target}: the folder {folder} does not exist (use --image-dir)") from err
            _destination(target, dest, folders[folder], force, view.overwritable)
        if chain is None:
            _write_v1(path, header, paths, folders, on_xml, move, shown)
        else:
            _write_v2(chain, paths, folders, on_xml, move, shown)
        new_xml = checked.get("new_xml") or rewrite_xml(ET.tostring(checked["root"], encoding="unicode"), paths,
                                                         new_name)
    finally:
        for fd in folders.values():
            os.close(fd)
    try:
        if view.replaced is not None and new_name:
            # its NVRAM goes too (plain undefine refuses a UEFI domain); the copy gets a fresh one
            conn.lookupByName(view.replaced).undefineFlags(api.VIR_DOMAIN_UNDEFINE_NVRAM)
        dom = conn.defineXML(new_xml)
        if start:
            dom.create()
    except api.Error as err:
        raise _fail(err, f"{name}: images restored to {', '.join(paths.values())}, but the domain") from err
    return {"domain": name, "images": paths, "started": start, "from": header["domain"], "archive": path,
            "format": header["format"], "chain": [link.path for link in chain] if chain else [path]}


Move = Callable[[str, str, "int | None"], None]


def _write_v1(path: str, header: dict[str, Any], paths: dict[str, str], folders: dict[str, int],
              on_xml: Callable[[dict[str, Any], str], None], move: Move, progress: Progress | None) -> None:
    """kvm-backup/1: each member into a temporary file beside its destination while every checksum
    is checked (the XML checked before the first image), then moved into place; on any failure the
    temporaries are removed."""
    temps: dict[str, str] = {}

    def sink(member: Member, hdr: dict[str, Any]) -> ImageSink:
        target = policy.check_member(member.name, hdr, [policy.member_name(t) for t in temps])
        dest = paths[target]
        tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}.kvm-restore-partial")
        image = ImageSink(tmp, _realsize(member), folders[os.path.dirname(dest)])
        temps[target] = tmp
        return image

    try:
        manifest, _xml, _digest = scan_archive(path, sink, progress, on_xml)
        policy.check_manifest(header, manifest)
        if set(temps) != set(paths):
            raise Corrupt(f"{path}: images missing from the archive: {sorted(set(paths) - set(temps))}")
        for target, tmp in temps.items():
            problem = policy.image_problem(_head(tmp, folders[os.path.dirname(tmp)]))
            if problem:
                raise policy.Unsafe(f"{target}: the image {problem}")
        for target, tmp in temps.items():
            move(target, tmp, folders[os.path.dirname(tmp)])
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(os.path.basename(tmp), dir_fd=folders[os.path.dirname(tmp)])
        raise


def _write_v2(chain: list[Link], paths: dict[str, str], folders: dict[str, int],
              on_xml: Callable[[dict[str, Any], str], None], move: Move, progress: Progress | None) -> None:
    """kvm-backup/2: the last archive's domain XML checked first (read from the start of the file,
    then confirmed to be the one its manifest vouches for while the chain is read), the disks
    rebuilt in a private ``.kvm-restore-*`` folder beside the first destination (the same file
    system: every destination must be on it, so that each image is renamed into place, never
    copied), then moved into place; the work folder is always removed."""
    last = chain[-1]
    early = read_xml(last.path)
    on_xml(last.header, early)
    devices = {os.fstat(fd).st_dev for fd in folders.values()}
    if len(devices) > 1:
        raise BadRequest("a kvm-backup/2 restore puts every image on one file system (the images' folders "
                         f"{', '.join(sorted(folders))} are on several): use --image-dir")
    # no copied disk: nothing is written, the chain is still read whole (every checksum)
    workdir = tempfile.mkdtemp(prefix=".kvm-restore-", dir=sorted(folders)[0]) if folders else ""
    try:
        def confirm(hdr: dict[str, Any], xml: str) -> None:
            if hdr != last.header or xml != early:
                raise Corrupt(f"{last.path}: the archive changed while it was read")

        files = rebuild(chain, workdir, progress, confirm)
        for target in paths:
            move(target, files[target], None)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _fresh(path: str, force: bool) -> None:
    """A log or socket file chosen for a copy (``policy.beside``) may be created there: nothing is
    there yet, or (``--force``, replacing the copy) a regular file, never a symlink."""
    if not os.path.isabs(path):  # no image to put them beside, and no --image-dir
        raise BadRequest("--name: the copy's log files need a folder: give --image-dir")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise Refused(f"cannot look at {path}: {err.strerror}") from err
    if stat.S_ISLNK(st.st_mode):
        raise policy.Unsafe(f"{policy.show(path)} is a symlink: a restore never writes through one")
    if not force:
        raise BadRequest(f"{path} exists already (use --force to reuse it, or --image-dir)")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        raise policy.Unsafe(f"{policy.show(path)} exists and is not a regular file")


def _head(path: str, dir_fd: int, size: int = 512) -> bytes:
    fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


# --- kvm-backup/2: rebuilding a disk from its chain ------------------------------------------------


def _copied(header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["target"]: d for d in header.get("disks", []) if isinstance(d, dict) and d.get("copied")}


def chain_starts(chain: list[Link]) -> dict[str, int]:
    """target -> the index in ``chain`` of the archive each disk of the last one is rebuilt from: the
    newest one where the disk is a full copy (a raw disk, a disk added since, or the chain's full);
    every archive after it must hold the disk as an incremental."""
    starts = {}
    for target in _copied(chain[-1].header):
        for index in range(len(chain) - 1, -1, -1):
            disk = _copied(chain[index].header).get(target)
            if disk is None:
                raise policy.Unsafe(f"{target}: {os.path.basename(chain[index + 1].path)} builds on "
                                    f"{os.path.basename(chain[index].path)}, which does not hold the disk")
            if disk["level"] == "full":
                starts[target] = index
                break
    return starts


def rebuild(chain: list[Link], workdir: str, progress: Progress | None = None,
            on_xml: Callable[[dict[str, Any], str], object] | None = None) -> dict[str, str]:
    """Rebuild every copied disk of the chain's last archive as of that backup, in ``workdir`` (a
    private folder the caller made, on the file system of the images' destination, and removes):
    target -> the finished image there (``TARGET.raw`` or ``TARGET.qcow2``, mode 0600).

    Per disk: the full's member into a sparse raw file, then each incremental in order (its data
    extents written over it, its ``zeroed`` ranges punched, the file cut or extended to that
    archive's virtual size), then ``qemu-img convert`` to a standalone qcow2 when the disk was one.
    Each archive is read whole and must match its manifest and the sha256 ``resolve_chain`` saw;
    whatever is refused raises (policy.Unsafe, Corrupt) and leaves only files in ``workdir``.

    ``chain`` is ``reader.resolve_chain(path)``. A caller (``kvm-backup restore``) checks the last
    archive's domain XML and places the images (policy.place) as for kvm-backup/1, then moves the
    files returned here into place; ``on_xml`` is called with the last archive's XML as it is read."""
    starts = chain_starts(chain)
    wanted = _copied(chain[-1].header)
    raws = {t: os.path.join(workdir, f"{t}.raw") for t in wanted}
    for index, link in enumerate(chain):
        active = {t for t, start in starts.items() if start <= index}
        opened: dict[str, ImageSink] = {}

        def sink(member: Member, hdr: dict[str, Any], link: Link = link, index: int = index,
                 active: set[str] = active, opened: dict[str, ImageSink] = opened) -> ImageSink | None:
            if hdr != link.header:
                raise Corrupt(f"{link.path}: the archive changed while it was read")
            target = policy.check_member(member.name, hdr, [policy.member_name(t) for t in opened])
            if target not in active:
                return None  # a disk the restored point no longer has: its checksum is still checked
            disk = _copied(hdr)[target]
            image = ImageSink(raws[target], _realsize(member), overlay=starts[target] < index,
                              virtual_size=disk["virtual_size"], zeroed=disk.get("zeroed", []),
                              what=f"{os.path.basename(link.path)}: {target}")
            opened[target] = image
            return image

        scan_link(link, sink, progress, on_xml if index == len(chain) - 1 else None)
        if active - set(opened):
            raise Corrupt(f"{link.path}: images missing from the archive: {sorted(active - set(opened))}")
    return {t: convert_image(raws[t], disk["format"]) for t, disk in wanted.items()}


def convert_image(raw: str, fmt: str) -> str:
    """The rebuilt raw file as an image of ``fmt``: itself for raw, else a standalone qcow2 (no
    backing file; zeros left out) beside it, the raw file removed. Mode 0600."""
    if fmt == "raw":
        return raw
    out = os.path.splitext(raw)[0] + ".qcow2"
    command = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", "-S", "64k", raw, out]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise Refused(f"cannot run qemu-img: {err.strerror}") from err
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise KvmError(f"qemu-img convert to {fmt}: {lines[-1] if lines else f'exit {done.returncode}'}")
    os.chmod(out, 0o600)
    os.unlink(raw)
    return out


def restore_files(path: str, folder: str, progress: Progress | None = None) -> dict[str, str]:
    """The images of a kvm-backup/2 archive as of that backup, rebuilt from its chain into ``folder``
    (no libvirt, no domain defined): target -> the new image, named as the disk's source was. An
    image that exists there already is never replaced; when anything is refused or fails, nothing
    is left in ``folder`` (the work happens in a private ``.kvm-restore-*`` folder inside it)."""
    chain = resolve_chain(path)
    header = chain[-1].header
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise BadRequest(f"the folder {folder} cannot be used: {err.strerror}") from err
    made: list[str] = []
    workdir = ""
    try:
        dests = restore_paths(header, folder, None)
        for target, dest in dests.items():
            with contextlib.suppress(FileNotFoundError):
                os.stat(os.path.basename(dest), dir_fd=fd, follow_symlinks=False)
                raise BadRequest(f"{target}: {dest} exists already")
        workdir = tempfile.mkdtemp(prefix=".kvm-restore-", dir=os.path.realpath(folder))
        made_st, seen_st = os.stat(workdir), os.stat(os.path.basename(workdir), dir_fd=fd, follow_symlinks=False)
        if (made_st.st_dev, made_st.st_ino) != (seen_st.st_dev, seen_st.st_ino):
            raise Refused(f"the folder {folder} changed while it was used")
        try:
            files = rebuild(chain, workdir, progress)
            for target, image in files.items():
                name = os.path.basename(dests[target])
                try:
                    os.link(image, name, dst_dir_fd=fd, follow_symlinks=False)
                except FileExistsError as err:
                    raise BadRequest(f"{target}: {dests[target]} appeared meanwhile") from err
                made.append(name)
        except BaseException:
            for name in made:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
            raise
        return dests
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        os.close(fd)
