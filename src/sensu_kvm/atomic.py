"""One atomic write of a small file (journals, failure markers, remote receipts).

The data goes to a new temporary ``PATH.PID.tmp`` (O_EXCL|O_NOFOLLOW: never through a symlink nor
into a file someone planted), is synced, renamed over PATH, and the folder is synced so that the
rename survives a crash. A reader sees the old file or the new one, never a part."""

from __future__ import annotations

import contextlib
import os

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name(path: str) -> str:
    return f"{path}.{os.getpid()}.tmp"


def sync_dir(folder: str) -> None:
    """Make the renames and creations in ``folder`` durable (best effort where the file system
    cannot sync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str, text: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` by ``text`` with ``mode`` (whatever the umask); raises OSError."""
    data = text.encode() if isinstance(text, str) else text
    tmp = temp_name(path)
    try:
        try:
            fd = os.open(tmp, FLAGS, mode)
        except FileExistsError:  # left by a killed run with the same pid (or planted): not ours to follow
            os.unlink(tmp)
            fd = os.open(tmp, FLAGS, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_dir(os.path.dirname(path))
