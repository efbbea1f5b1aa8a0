"""Where an archive goes: a local folder, or a folder of a remote host reached over ssh
(``backup.remote``). Both give the writer an output to write the compressed archive into, and
publish it under its final name only once it is checked; the local one reads it back."""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Callable
from typing import Protocol

from sensu_kvm.atomic import sync_dir
from sensu_kvm.errors import BadRequest, KvmError


class Output(Protocol):
    """The end of the pipeline an ArchiveWriter writes the compressed archive into."""

    fd: int  # the compressor's stdout (or where the writer writes without one)
    where: str  # for messages: the partial archive's path (HOST:PATH when remote)

    def done(self, sync: bool) -> None:
        """Everything is written (the writer has closed its side): make it whole, or raise KvmError."""

    def abort(self) -> None:
        """Drop what was written (best effort, never raises)."""


class Destination(Protocol):
    key: str  # the chain record's name of this destination: a realpath, or HOST:DIR
    shown: str  # as the operator wrote it
    local: str | None  # the folder when it is on this host (its free space is checked here)

    def names(self) -> set[str]:
        """The names in the folder now (archives, partial archives)."""

    def stat(self, name: str) -> tuple[int, float] | None:
        """(size, mtime) of an archive of the folder, None when there is none."""

    def output(self, name: str) -> Output:
        """A new partial archive ``.NAME.partial`` (never over an existing file)."""

    def publish(self, out: Output, name: str, check: Callable[[str], str]) -> tuple[str, str]:
        """Give the partial archive its final ``name`` once checked: (where it is, its sha256).
        ``check(path)`` reads a local archive back and returns its sha256 (a remote one is checked
        against the sha256 of what was sent). The partial archive is gone afterwards, whatever happens."""

    def where(self, name: str) -> str:
        """The full location of a name of the folder: a path, or HOST:PATH."""


def partial_name(name: str) -> str:
    return "." + name + ".partial"


def split_remote(dest: str) -> tuple[str, str] | None:
    """(host, folder) of HOST:DIR, None for a local folder (a path with a slash before any colon)."""
    if ":" not in dest:
        return None
    host, _, folder = dest.partition(":")
    if not host or "/" in host:
        return None
    return host, folder or "."


def dest_key(dest: str) -> str:
    """The name a chain record keeps a destination under: ``HOST:DIR`` (normalized) for a remote
    folder, the realpath of a local one. Given a key, returns it unchanged."""
    remote = split_remote(dest)
    if remote is None:
        return os.path.realpath(dest)
    return f"{remote[0]}:{posixpath.normpath(remote[1])}"


class LocalFile:
    """A partial archive in a local folder (created 0600, never over a file)."""

    def __init__(self, path: str) -> None:
        self.where = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            raise KvmError(f"cannot create {path}: {err.strerror}") from err
        self._open = True

    def _close(self) -> None:
        if self._open:  # once: the number may belong to another file afterwards
            self._open = False
            os.close(self.fd)

    def done(self, sync: bool) -> None:
        try:
            if sync:
                os.fsync(self.fd)
        except OSError as err:
            raise KvmError(f"writing {self.where}: {err.strerror}") from err
        finally:
            self._close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(OSError):
            os.unlink(self.where)


class LocalFolder:
    def __init__(self, folder: str) -> None:
        if not os.path.isdir(folder):
            raise BadRequest(f"the destination {folder} does not exist or is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadRequest(f"the destination {folder} is not writable")
        self.folder = folder
        self.local: str | None = folder
        self.shown = folder
        self.key = dest_key(folder)

    def names(self) -> set[str]:
        try:
            return set(os.listdir(self.folder))
        except OSError as err:
            raise KvmError(f"cannot read the destination {self.folder}: {err.strerror}") from err

    def stat(self, name: str) -> tuple[int, float] | None:
        try:
            st = os.stat(os.path.join(self.folder, name))
        except OSError:
            return None
        return st.st_size, st.st_mtime

    def where(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def output(self, name: str) -> Output:
        return LocalFile(self.where(partial_name(name)))

    def publish(self, out: Output, name: str, check: Callable[[str], str]) -> tuple[str, str]:
        final = os.path.join(self.folder, name)
        try:
            digest = check(out.where)
            try:
                os.link(out.where, final)  # fails rather than replace an archive of the same name
                os.unlink(out.where)
            except OSError as err:
                raise KvmError(f"cannot publish {final}: {err.strerror}") from err
            sync_dir(self.folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(out.where)
            raise
        return final, digest
