"""Reading one disk export of a pull backup over NBD with libnbd (Debian's python3-libnbd).

``Export(socket, name, bitmap)``: the export's size, its extents and its data. For a full backup
the data extents are those ``base:allocation`` does not report as zero; for an incremental, those
the dirty bitmap ``qemu:dirty-bitmap:BITMAP`` (libvirt names it ``backup-TARGET``) marks dirty,
split into data and zeroed (dirty and reading as zero: a hole in an incremental means unchanged,
so a changed-to-zero range must be recorded as such). ``nbd`` is imported here only: the module
loads where python3-libnbd is missing, and ``available()`` says why it cannot be used.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sensu_kvm.errors import KvmError

ALLOCATION = "base:allocation"
STATE_HOLE = 1  # base:allocation flags
STATE_ZERO = 2
STATE_DIRTY = 1  # qemu:dirty-bitmap:* flag
# One block status request covers at most this much (the NBD protocol counts in 32 bits).
STATUS_CHUNK = 1 << 30
READ_CHUNK = 4 << 20

Range = tuple[int, int]  # (offset, length)


class NbdError(KvmError):
    """Reading a disk export over NBD failed (the message names the socket and the export)."""


def _module() -> Any:
    try:
        import nbd  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415 (python3-libnbd is a Debian package, optional for everything else)
    except ImportError as err:
        raise NbdError(f"libnbd's Python binding is missing ({err}): install Debian's python3-libnbd") from err
    return nbd


def available() -> str:
    """'' when the NBD reader can be used, else why not (one line)."""
    try:
        _module()
    except NbdError as err:
        return str(err)
    return ""


def merge(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Join adjacent (start, end, flags) ranges with the same flags."""
    out: list[tuple[int, int, int]] = []
    for start, end, flags in ranges:
        if out and out[-1][1] == start and out[-1][2] == flags:
            out[-1] = (out[-1][0], end, flags)
        elif end > start:
            out.append((start, end, flags))
    return out


def classify(allocation: list[tuple[int, int, int]], dirty: list[tuple[int, int, int]] | None) -> tuple[list[Range], list[Range]]:
    """(data, zeroed) from the (start, end, flags) ranges of base:allocation and, for an
    incremental, of the dirty bitmap (both covering the same span, in order). Full: data = not
    zero, zeroed = []. Incremental: data = dirty and not zero, zeroed = dirty and zero."""
    kinds: list[tuple[int, int, int]] = []  # flags: 1 data, 2 zeroed, 0 neither
    if dirty is None:
        kinds = [(s, e, 0 if f & STATE_ZERO else 1) for s, e, f in allocation]
    else:
        i = j = 0
        while i < len(allocation) and j < len(dirty):
            a_start, a_end, a_flags = allocation[i]
            d_start, d_end, d_flags = dirty[j]
            start, end = max(a_start, d_start), min(a_end, d_end)
            if end > start and d_flags & STATE_DIRTY:
                kinds.append((start, end, 2 if a_flags & STATE_ZERO else 1))
            if a_end <= d_end:
                i += 1
            if d_end <= a_end:
                j += 1
    data = [(s, e - s) for s, e, k in merge(kinds) if k == 1]
    zeroed = [(s, e - s) for s, e, k in merge(kinds) if k == 2]
    return data, zeroed


class Export:
    """One export of an NBD server on a unix socket, read-only; ``bitmap``: the dirty bitmap of an
    incremental (``backup-vda``), None for a full."""

    def __init__(self, socket: str | os.PathLike[str], name: str, bitmap: str | None = None) -> None:
        nbd = _module()
        self._nbd = nbd
        self.where = f"NBD export {name} on {socket}"
        self.bitmap_context = f"qemu:dirty-bitmap:{bitmap}" if bitmap else None
        self._h = nbd.NBD()
        try:
            self._h.add_meta_context(ALLOCATION)
            if self.bitmap_context:
                self._h.add_meta_context(self.bitmap_context)
            self._h.set_export_name(name)
            self._h.connect_unix(str(socket))
            self.size = int(self._h.get_size())
            for context in filter(None, (ALLOCATION, self.bitmap_context)):
                if not self._h.can_meta_context(context):
                    raise NbdError(f"{self.where}: the server does not offer {context}")
        except nbd.Error as err:
            raise NbdError(f"{self.where}: {err.string}") from err

    def status(self, offset: int = 0, length: int | None = None) -> dict[str, list[tuple[int, int, int]]]:
        """The (start, end, flags) ranges of each meta context over [offset, offset+length),
        cut to the span every context covered (servers may answer short)."""
        end = self.size if length is None else min(self.size, offset + length)
        contexts = [c for c in (ALLOCATION, self.bitmap_context) if c]
        out: dict[str, list[tuple[int, int, int]]] = {c: [] for c in contexts}
        while offset < end:
            got: dict[str, list[tuple[int, int, int]]] = {c: [] for c in contexts}

            def collect(context: str, start: int, entries: list[int], _err: Any, got: Any = got) -> int:
                pos = start
                for k in range(0, len(entries) - 1, 2):
                    got.setdefault(context, []).append((pos, pos + entries[k], entries[k + 1]))
                    pos += entries[k]
                return 0

            try:
                self._h.block_status(min(STATUS_CHUNK, end - offset), offset, collect)
            except self._nbd.Error as err:
                raise NbdError(f"{self.where}: block status at {offset}: {err.string}") from err
            covered = min((got[c][-1][1] if got[c] else offset) for c in contexts)
            covered = min(covered, end)
            if covered <= offset:
                raise NbdError(f"{self.where}: block status at {offset} answered nothing")
            for c in contexts:
                out[c].extend((s, min(e, covered), f) for s, e, f in got[c] if s < covered)
            offset = covered
        return {c: merge(r) for c, r in out.items()}

    def extents(self) -> tuple[list[Range], list[Range]]:
        """(data, zeroed) ranges of the whole export (see ``classify``)."""
        ranges = self.status()
        dirty = ranges[self.bitmap_context] if self.bitmap_context else None
        return classify(ranges[ALLOCATION], dirty)

    def read(self, length: int, offset: int) -> bytes:
        """``length`` bytes at ``offset`` (at most the server's maximum request, 32 MiB in QEMU)."""
        try:
            return bytes(self._h.pread(length, offset))
        except self._nbd.Error as err:
            raise NbdError(f"{self.where}: read of {length} bytes at {offset}: {err.string}") from err

    def copy(self, ranges: list[Range], fd: int, chunk: int = READ_CHUNK) -> int:
        """Write the data of ``ranges`` to ``fd`` at the same offsets (a sparse copy); the bytes copied."""
        done = 0
        for start, length in ranges:
            pos = start
            while pos < start + length:
                n = min(chunk, start + length - pos)
                data = self.read(n, pos)
                os.pwrite(fd, data, pos)
                pos += n
                done += n
        return done

    def close(self) -> None:
        """Disconnect (best effort: the server may be gone already); libnbd 1.14's handle has no
        close(): the connection goes with the handle."""
        with contextlib.suppress(self._nbd.Error):
            self._h.shutdown()

    def __enter__(self) -> Export:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
