"""Reading an archive: the decompressing stream, tar members, header and manifest, image sinks, and
the scan that verifies an archive against its manifest and the policy."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable
from typing import IO, Any, NamedTuple

from sensu_kvm.backup import policy
from sensu_kvm.backup.archive import parse_sparse_map, widen
from sensu_kvm.backup.catalog import BLOCK, CHUNK, FORMAT, FORMAT_V2, HEADER, MANIFEST, MIB, XML_MEMBER
from sensu_kvm.backup.disks import disks_of
from sensu_kvm.backup.progress import Progress
from sensu_kvm.errors import BadRequest, Corrupt, KvmError, Refused

# --- reading an archive ----------------------------------------------------------------------------


def detect(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(BLOCK)
    except OSError as err:
        raise BadRequest(f"cannot read {path}: {err.strerror}") from err
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh":
        return "bzip2"
    if len(head) == BLOCK and head[257:262] == b"ustar":
        return "none"
    raise Corrupt(f"{path} is not a kvm-backup archive (neither zstd, bzip2 nor tar)")


class Stream:
    """The decompressed tar stream of an archive, read forward; also hashes the archive file."""

    def __init__(self, path: str, hash_archive: bool = True) -> None:
        self.kind = detect(path)
        self.file = open(path, "rb")  # noqa: SIM115 (closed in close())
        self.archive_sha = hashlib.sha256()
        self.proc: subprocess.Popen[bytes] | None = None
        self.feeder: threading.Thread | None = None
        self.pending = b""
        if self.kind == "none":
            self.out: IO[bytes] = self.file
        else:
            command = ["zstd", "-dcq"] if self.kind == "zstd" else ["bzip2", "-dc"]
            # the decompressor reads the file itself; a thread hashes the same file (from the page cache)
            self.proc = subprocess.Popen(command, stdin=self.file, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert self.proc.stdout is not None
            widen(self.proc.stdout)
            self.out = self.proc.stdout
            if hash_archive:
                self.feeder = threading.Thread(target=self._feed, daemon=True)
                self.feeder.start()

    def _feed(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos = 0
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(self.file.name, os.O_RDONLY)
            try:
                while True:
                    got = os.preadv(fd, [view], pos)
                    if got <= 0:
                        break
                    self.archive_sha.update(view[:got])
                    pos += got
            finally:
                os.close(fd)

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer only at the end of the stream)."""
        parts = []
        left = size
        while left:
            chunk = self.out.read(left)
            if not chunk:
                break
            if self.proc is None:
                self.archive_sha.update(chunk)
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise Corrupt(f"the archive is truncated (in {what})")
        return data

    def finish(self) -> None:
        """Drain the rest and check the decompressor's verdict."""
        while self.read(CHUNK):
            pass
        if self.proc is not None:
            self.proc.wait()
            if self.feeder is not None:
                self.feeder.join()
            if self.proc.returncode:
                err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
                raise Corrupt(f"the archive does not decompress: {err.splitlines()[-1] if err else 'damaged'}")

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.file.close()


class Member(NamedTuple):
    name: str
    size: int  # bytes of payload in the archive
    pax: dict[str, str]


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text or b"0", 8)
    except ValueError as err:
        raise Corrupt("a tar header is damaged") from err


def _pax_records(data: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] not in (b"", b"\0"):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1:pos + length - 1].decode("utf-8", "surrogateescape")
        key, _, value = record.partition("=")
        found[key] = value
        pos += length
    return found


def next_member(stream: Stream) -> Member | None:
    """The next member's header (pax records applied); None at the end of the archive."""
    pax: dict[str, str] = {}
    while True:
        block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise Corrupt("the archive is truncated (no end marker)")
        if block == b"\0" * BLOCK:
            return None
        stored = _octal(block[148:156])
        if stored != sum(block[:148]) + 256 + sum(block[156:]):
            raise Corrupt("a tar header checksum does not match")
        size = _octal(block[124:136])
        kind = block[156:157]
        name = block[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
        prefix = block[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape")
        if prefix:
            name = f"{prefix}/{name}"
        if kind in (b"x", b"g"):
            data = stream.exact(size + (-size % BLOCK), "a pax header")[:size]
            try:
                records = _pax_records(data)
            except ValueError as err:
                raise Corrupt("a pax header is damaged") from err
            if kind == b"x":
                pax.update(records)
            continue
        if kind not in (b"0", b"\0"):
            raise Corrupt(f"unexpected member type {kind!r} ({name})")
        name = pax.get("GNU.sparse.name") or pax.get("path") or name
        return Member(name, size, pax)


def read_payload(stream: Stream, member: Member, sink: Callable[[bytes], None] | None = None) -> str:
    """Read a member's payload (and its padding); its sha256. ``sink`` gets every chunk."""
    digest = hashlib.sha256()
    left = member.size
    while left:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            raise Corrupt(f"the archive is truncated (in {member.name})")
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
        left -= len(chunk)
    stream.exact(-member.size % BLOCK, member.name)
    return digest.hexdigest()


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise Corrupt(f"{what} is not valid JSON") from err
    if not isinstance(value, dict):
        raise Corrupt(f"{what} is not a JSON object")
    return value


def read_header(path: str, formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """The header of an archive (its first member), without reading the rest. Only kvm-backup/1
    unless ``formats`` says more: the tool's verify, list and restore read kvm-backup/2 archives only
    once they are wired to resolve_chain and restore.rebuild."""
    stream = Stream(path, hash_archive=False)
    try:
        member = next_member(stream)
        if member is None or member.name != HEADER or member.size > 4 * MIB:
            raise Corrupt(f"{path} is not a kvm-backup archive (no {HEADER} first)")
        header = _json(stream.exact(member.size, HEADER), HEADER)
    finally:
        stream.close()
    if header.get("format") not in formats:
        raise Corrupt(f"{path} is not a kvm-backup archive (format {header.get('format')!r})")
    return header


def read_xml(path: str) -> str:
    """The domain XML of a kvm-backup/2 archive (its second member), read from the start of the file
    without the rest: restore checks it before anything is written, and ``scan_archive`` then confirms
    it against the manifest (the caller compares what it reads there with this)."""
    stream = Stream(path, hash_archive=False)
    try:
        member = next_member(stream)
        if member is None or member.name != HEADER or member.size > 4 * MIB:
            raise Corrupt(f"{path} is not a kvm-backup archive (no {HEADER} first)")
        stream.exact(member.size + (-member.size % BLOCK), HEADER)
        member = next_member(stream)
        if member is None or member.name != XML_MEMBER or member.size > 4 * MIB:
            raise Corrupt(f"{path}: {XML_MEMBER} does not follow the header")
        return stream.exact(member.size, XML_MEMBER).decode("utf-8", "replace")
    finally:
        stream.close()


class ImageSink:
    """Writes a sparse member's payload into a new image file (never an existing file, never through
    a symlink; in the folder ``dir_fd`` when given): the map, then the data at its offsets.

    The sparse map is checked before a byte is written (policy.check_extents: in order, not
    overlapping, within the member's size; with ``virtual_size`` that size must be it, and no data
    extent may lie on a ``zeroed`` range). ``overlay``: write onto the existing file instead (a
    kvm-backup/2 incremental onto the image rebuilt so far); ``close()`` then punches the ``zeroed``
    ranges and cuts or extends the file to ``realsize``."""

    def __init__(self, path: str, realsize: int, dir_fd: int | None = None, overlay: bool = False,
                 virtual_size: int | None = None, zeroed: list[list[int]] | None = None, what: str = "") -> None:
        self.path = path
        self.realsize = realsize
        self.overlay = overlay
        self.virtual_size = virtual_size
        self.zeroed = zeroed or []
        self.what = what or policy.show(path)
        self.fd = self._open(path, dir_fd)
        self.head = b""
        self.parts: list[tuple[int, int]] | None = None
        self.skip = 0
        self.index = 0
        self.within = 0

    def __call__(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        if self.parts is None:
            self.head += bytes(view)
            if b"\n" not in self.head or len(self.head) < BLOCK:
                return
            try:
                self.parts, self.skip = parse_sparse_map(self.head)
            except Corrupt:
                if len(self.head) < 64 * 1024:
                    return
                raise
            policy.check_extents(self.what, self.parts, self.realsize, self.virtual_size, self.zeroed)
            view = memoryview(self.head)[self.skip:]
            self.head = b""
        while len(view):
            if self.index >= len(self.parts):
                raise Corrupt(f"{self.path}: more data than its sparse map says")
            offset, length = self.parts[self.index]
            take = min(length - self.within, len(view))
            self._put(view[:take], offset + self.within)
            self.within += take
            view = view[take:]
            if self.within == length:
                self.index += 1
                self.within = 0

    def _open(self, path: str, dir_fd: int | None) -> int:
        flags = os.O_WRONLY | os.O_NOFOLLOW | (0 if self.overlay else os.O_CREAT | os.O_EXCL)
        try:
            return os.open(os.path.basename(path) if dir_fd is not None else path, flags, 0o600, dir_fd=dir_fd)
        except OSError as err:
            raise Refused(f"cannot create {path}: {err.strerror}") from err

    def _put(self, data: memoryview, offset: int) -> None:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as err:
            raise KvmError(f"writing {self.path}: {err.strerror}") from err

    def close(self) -> None:
        if self.parts is None or self.within or any(n for _o, n in self.parts[self.index:]):
            os.close(self.fd)
            raise Corrupt(f"{self.what}: less data than its sparse map says")
        try:
            for offset, length in self.zeroed:
                punch(self.fd, offset, length)
            os.ftruncate(self.fd, self.realsize)
            os.fsync(self.fd)
        except OSError as err:
            raise KvmError(f"writing {self.path}: {err.strerror}") from err
        finally:
            os.close(self.fd)


_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@functools.cache
def _fallocate() -> Any:
    """libc's fallocate(2) (Python's os has posix_fallocate only, which cannot punch)."""
    import ctypes  # noqa: PLC0415

    call = ctypes.CDLL(None, use_errno=True).fallocate
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


def punch(fd: int, offset: int, length: int) -> None:
    """Make ``length`` bytes at ``offset`` read as zeros, as a hole where the file system can
    (fallocate PUNCH_HOLE), else by writing zeros. Never changes the file's size."""
    size = os.fstat(fd).st_size
    length = min(length, size - offset)
    if length <= 0:
        return
    if _fallocate()(fd, _PUNCH, offset, length) == 0:
        return
    zeros = bytes(min(length, CHUNK))
    while length:
        step = min(length, len(zeros))
        os.pwrite(fd, zeros[:step], offset)
        offset += step
        length -= step


class HeadSink(ImageSink):
    """Keeps the first ``size`` bytes of a sparse member's image in memory (holes as zeros), so that
    ``verify`` can look at an image's header without writing it anywhere."""

    def __init__(self, name: str, realsize: int, size: int = 512, **checks: Any) -> None:
        self.data = bytearray(min(size, realsize))
        super().__init__(name, realsize, **checks)

    def _open(self, path: str, dir_fd: int | None) -> int:
        return -1

    def _put(self, data: memoryview, offset: int) -> None:
        if offset < len(self.data):
            end = min(len(self.data), offset + len(data))
            self.data[offset:end] = data[:end - offset]

    def close(self) -> None:
        pass


def scan_archive(path: str, sinks: Callable[[Member, dict[str, Any]], Any] | None = None,
                 progress: Progress | None = None,
                 on_xml: Callable[[dict[str, Any], str], object] | None = None,
                 formats: tuple[str, ...] = (FORMAT,)) -> tuple[dict[str, Any], str, str]:
    """Read the whole archive and check every member against the manifest (nothing is written to
    disk unless ``sinks`` gives a sink for a member). (manifest, domain XML, archive sha256).

    ``on_xml(header, xml)`` is called once the domain XML is read, before any image member: an
    archive with an image before its domain XML is then refused, so that a check of the XML comes
    before anything is written."""
    stream = Stream(path)
    try:
        member = next_member(stream)
        if member is None or member.name != HEADER or member.size > 4 * MIB:
            raise Corrupt(f"{path} is not a kvm-backup archive (no {HEADER} first)")
        header_raw = stream.exact(member.size + (-member.size % BLOCK), HEADER)[:member.size]
        header = _json(header_raw, HEADER)
        if header.get("format") not in formats:
            raise Corrupt(f"{path} is not a kvm-backup archive (format {header.get('format')!r})")
        seen: dict[str, str] = {}
        sizes: dict[str, int] = {}
        xml = ""
        manifest: dict[str, Any] | None = None
        opened: list[Any] = []
        while True:
            member = next_member(stream)
            if member is None:
                break
            if member.name in seen or member.name == HEADER or (member.name == MANIFEST and manifest is not None):
                raise Corrupt(f"{path}: the member {policy.show(member.name)} is there twice")
            if member.name in (MANIFEST, XML_MEMBER) and member.size > 4 * MIB:
                raise Corrupt(f"{path}: {member.name} is larger than 4 MiB")
            if member.name == MANIFEST:
                manifest = _json(stream.exact(member.size + (-member.size % BLOCK), MANIFEST)[:member.size],
                                 MANIFEST)
                continue
            if manifest is not None:
                raise Corrupt(f"{path}: a member after the manifest ({policy.show(member.name)})")
            if member.name == XML_MEMBER:
                data = stream.exact(member.size + (-member.size % BLOCK), XML_MEMBER)[:member.size]
                xml = data.decode("utf-8", "replace")
                seen[member.name] = hashlib.sha256(data).hexdigest()
                sizes[member.name] = member.size
                if on_xml is not None:
                    on_xml(header, xml)
                continue
            if on_xml is not None and XML_MEMBER not in seen:
                raise Corrupt(f"{path}: the image {policy.show(member.name)} comes before {XML_MEMBER}")
            sink = sinks(member, header) if sinks is not None else None
            if sink is not None:
                opened.append(sink)
            chain: Callable[[bytes], None] | None = None
            if sink is not None or progress is not None:
                def chain(chunk: bytes, sink: Any = sink) -> None:
                    if sink is not None:
                        sink(chunk)
                    if progress is not None:
                        progress.add(len(chunk))
            seen[member.name] = read_payload(stream, member, chain)
            sizes[member.name] = member.size
        stream.finish()
        for sink in opened:
            sink.close()
    finally:
        stream.close()
    if manifest is None:
        raise Corrupt(f"{path} has no manifest (truncated?)")
    files = {f["member"]: f for f in manifest.get("files", []) if isinstance(f, dict) and "member" in f}
    if set(files) != set(seen):
        raise Corrupt(f"{path}: the members do not match the manifest "
                      f"(missing {sorted(set(files) - set(seen))}, extra {sorted(set(seen) - set(files))})")
    for name, digest in seen.items():
        if files[name].get("sha256") != digest:
            raise Corrupt(f"{path}: {name} does not match its checksum in the manifest")
        if files[name].get("stored", sizes[name]) != sizes[name]:
            raise Corrupt(f"{path}: {name} does not have the size the manifest says")
    if manifest.get("header") != header:
        raise Corrupt(f"{path}: the header does not match the manifest")
    return manifest, xml, stream.archive_sha.hexdigest()


def verify(path: str, progress: Progress | None = None, trust: bool = False) -> tuple[dict[str, Any], str]:
    """Every checksum of an archive, without extracting; (manifest, archive sha256). With ``trust``
    also every structural rule of ``policy`` (what a restore would refuse whatever the host):
    an archive that breaks one is Corrupt."""
    if not trust:
        manifest, _xml, digest = scan_archive(path, progress=progress)
        return manifest, digest
    heads: dict[str, HeadSink] = {}

    def sink(member: Member, header: dict[str, Any]) -> HeadSink:
        target = policy.check_member(member.name, header, [policy.member_name(t) for t in heads])
        heads[target] = HeadSink(member.name, _realsize(member))
        return heads[target]

    try:
        header = read_header(path)
        policy.check_header(header)

        def on_xml(hdr: dict[str, Any], xml: str) -> None:
            if hdr != header:
                raise Corrupt(f"{path}: the archive changed while it was read")
            check_xml(hdr, xml)

        manifest, _xml, digest = scan_archive(path, sink, progress, on_xml)
        policy.check_manifest(header, manifest)
        for target, head in heads.items():
            problem = policy.image_problem(bytes(head.data))
            if problem:
                raise policy.Unsafe(f"{target}: the image {problem}")
    except policy.Unsafe as err:
        raise Corrupt(f"{path}: refused: {err}") from err
    return manifest, digest


# --- kvm-backup/2 chains ----------------------------------------------------------------------------


class Link(NamedTuple):
    """One archive of a chain: its path, its header (checked by policy.check_header and check_v2)
    and the sha256 of the file as its child expects it."""

    path: str
    header: dict[str, Any]
    sha256: str


MAX_CHAIN = 1000  # archives in one chain: a full and at most 999 incrementals


def file_sha256(path: str) -> str:
    """The sha256 of an archive file, as a child's ``chain.parent_sha256`` gives it."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as err:
        raise BadRequest(f"cannot read {path}: {err.strerror}") from err
    return digest.hexdigest()


def resolve_chain(path: str) -> list[Link]:
    """The chain a kvm-backup/2 archive needs, its full first and ``path`` last: each parent found by
    name in the same folder, its header checked, its file's sha256 the one its child names; every
    archive of the same domain (UUID). Reads headers and hashes files; writes nothing. A missing
    parent is BadRequest, anything else that does not hold is policy.Unsafe (both exit 2)."""
    links: list[Link] = []
    current = path
    expected: str | None = None
    while True:
        if not os.path.isfile(current):
            child = os.path.basename(links[-1].path) if links else ""
            raise BadRequest(f"{child}: its parent {current} is missing" if child else f"{current} is not a file")
        try:
            header = read_header(current, (FORMAT_V2,))
        except Corrupt as err:  # a chain's error names the archive that is bad
            raise Corrupt(f"{os.path.basename(current)}: {err}" if current not in str(err) else str(err)) from err
        try:
            policy.check_header(header)
            chain = policy.check_v2(header)
        except policy.Unsafe as err:
            raise policy.Unsafe(f"{os.path.basename(current)}: {err}") from err
        digest = file_sha256(current)
        if expected is not None and digest != expected:
            raise policy.Unsafe(f"{os.path.basename(links[-1].path)}: its parent {os.path.basename(current)} is not "
                                f"the archive it was made from (sha256 {digest[:16]}..., expected {expected[:16]}...)")
        if links and str(header["uuid"]).lower() != str(links[0].header["uuid"]).lower():
            raise policy.Unsafe(f"{os.path.basename(links[-1].path)}: its parent {os.path.basename(current)} is a "
                                f"backup of another domain (UUID {policy.show(header['uuid'])})")
        links.append(Link(current, header, digest))
        if chain["level"] == "full":
            break
        if len(links) >= MAX_CHAIN:
            raise policy.Unsafe(f"{os.path.basename(path)}: its chain is longer than {MAX_CHAIN} archives")
        expected = chain["parent_sha256"]
        current = os.path.join(os.path.dirname(current), chain["parent"])
    links.reverse()
    return links


def verify_chain(path: str, progress: Progress | None = None,
                 on_xml: Callable[[dict[str, Any], str], object] | None = None,
                 ) -> list[tuple[str, dict[str, Any], str]]:
    """Every archive a kvm-backup/2 archive needs, full first, read whole without writing anything:
    the links of ``resolve_chain``, each member's checksum, each sparse map against its disk's
    virtual size and zeroed ranges, each manifest against its header; [(path, manifest, sha256)].
    For ``verify`` of an incremental and for prune's "newest archive whose chain verifies"."""
    found = []
    for link in resolve_chain(path):
        disks = {d["target"]: d for d in link.header.get("disks", []) if d.get("copied")}
        seen: list[str] = []

        def sink(member: Member, header: dict[str, Any], link: Link = link, disks: dict[str, Any] = disks,
                 seen: list[str] = seen) -> HeadSink:
            if header != link.header:
                raise Corrupt(f"{link.path}: the archive changed while it was read")
            target = policy.check_member(member.name, header, seen)
            seen.append(member.name)
            return HeadSink(member.name, _realsize(member), virtual_size=disks[target]["virtual_size"],
                            zeroed=disks[target].get("zeroed", []), what=f"{os.path.basename(link.path)}: {target}")

        manifest, digest = scan_link(link, sink, progress, on_xml)
        found.append((link.path, manifest, digest))
    return found


class Verified(NamedTuple):
    """What ``verify_any`` found: the archive's header and manifest, its file's sha256, and the
    archives it was checked with (itself alone for kvm-backup/1 and a full, else its chain, full first)."""

    header: dict[str, Any]
    manifest: dict[str, Any]
    sha256: str
    chain: list[str]


def verify_any(path: str, progress: Progress | None = None) -> Verified:
    """``verify`` of an archive of either format, as the tool's verify, list --verify and prune use
    it: a kvm-backup/1 archive with every rule of ``verify(trust=True)``; a kvm-backup/2 archive with
    its whole chain (``verify_chain``), every link's domain XML held to the structural rules
    (``check_xml``). A bad link is named; a refusal by the rules and a missing parent are Corrupt
    (exit 1: the backup cannot be restored), an archive that cannot be read at all BadRequest."""
    header = read_header(path, (FORMAT, FORMAT_V2))
    if header.get("format") == FORMAT:
        manifest, digest = verify(path, progress, trust=True)
        return Verified(header, manifest, digest, [path])

    def on_xml(hdr: dict[str, Any], xml: str) -> None:
        check_xml(hdr, xml)

    try:
        found = verify_chain(path, progress, on_xml)
    except policy.Unsafe as err:
        raise Corrupt(f"refused: {err}") from err
    except BadRequest as err:  # the archive was read: a parent missing or unreadable breaks its chain
        raise Corrupt(f"its chain is broken: {err}") from err
    _last, manifest, digest = found[-1]
    return Verified(header, manifest, digest, [p for p, _m, _d in found])


def chain_total(path: str) -> int:
    """The bytes of image data ``verify_any`` of ``path`` reads (for progress; 0 when unknown)."""
    try:
        header = read_header(path, (FORMAT, FORMAT_V2))
        if header.get("format") == FORMAT:
            return data_total(header)
        return sum(data_total(link.header) for link in resolve_chain(path))
    except KvmError:
        return 0


def scan_link(link: Link, sink: Callable[[Member, dict[str, Any]], Any],
              progress: Progress | None = None,
              on_xml: Callable[[dict[str, Any], str], object] | None = None) -> tuple[dict[str, Any], str]:
    """One link of a chain read whole through ``sink`` (as scan_archive), checked to be the
    archive resolve_chain found (its sha256) and its manifest against its header; (manifest, sha256).
    Whatever is wrong with it names the link (a chain's error must say which archive is bad)."""
    name = os.path.basename(link.path)
    try:
        manifest, _xml, digest = scan_archive(link.path, sink, progress, on_xml, formats=(FORMAT_V2,))
    except KvmError as err:
        if name in str(err):
            raise
        raise type(err)(f"{name}: {err}") from err
    if digest != link.sha256:
        raise Corrupt(f"{link.path}: the archive changed while it was read")
    try:
        policy.check_manifest(link.header, manifest)
    except policy.Unsafe as err:
        raise policy.Unsafe(f"{os.path.basename(link.path)}: {err}") from err
    return manifest, digest


def check_xml(header: dict[str, Any], xml: str) -> tuple[Any, list[policy.Ref]]:
    """The structural rules of an archive's domain XML (policy.py); (the sanitized XML tree,
    what it uses on the host beyond its restored images)."""
    root = policy.parse(xml)
    policy.check_xml(root, header, [(d.target, d.device, d.source, d.format, d.copy) for d in disks_of(xml)])
    copied = policy.copied_targets(header)
    policy.sanitize(root, copied)
    refs = policy.references(root, copied)
    policy.check_references(refs)
    return root, refs


def _realsize(member: Member) -> int:
    try:
        size = int(member.pax.get("GNU.sparse.realsize", "0"))
    except ValueError as err:
        raise Corrupt(f"{member.name}: its size is not a number") from err
    if size < 0 or size > 1 << 60:
        raise Corrupt(f"{member.name}: its size {size} is out of range")
    return size


def data_total(header: dict[str, Any]) -> int:
    """The bytes of image data an archive's header announces, for progress (0 when it says nothing
    usable: a header is input)."""
    disks = header.get("disks")
    if not isinstance(disks, list):
        return 0
    return sum(d["data"] for d in disks if isinstance(d, dict) and type(d.get("data")) is int and d["data"] > 0)
