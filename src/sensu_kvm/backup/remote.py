"""Archives streamed to a remote host over ssh: multiplexed ssh, free space, the resumable stream,
the remote folder as a destination (publish once the sha256 matches), cleanup."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import os
import posixpath
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from sensu_kvm.backup.catalog import MIB
from sensu_kvm.backup.dest import Output, dest_key, partial_name
from sensu_kvm.errors import BadRequest, KvmError

# --- remote destinations (ssh) ---------------------------------------------------------------------


def multiplexed(rsh: str) -> tuple[str, str | None]:
    """The ssh command with one shared connection for all the calls of a run (each new ssh
    connection costs ~0.35 s), and the private folder of its socket; other --rsh commands are
    left as they are. A link that goes silent is noticed within a minute (ServerAlive)."""
    words = shlex.split(rsh)
    if not words or os.path.basename(words[0]) != "ssh" or "ControlPath" in rsh:
        return rsh, None
    folder = tempfile.mkdtemp(prefix="kvm-backup-ssh-")  # short: a socket path has at most 107 bytes
    path = os.path.join(folder, "%C")
    return (rsh + " -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o ControlMaster=auto -o ControlPersist=60"
            f" -o ControlPath={shlex.quote(path)}", folder)


def close_multiplexed(rsh: str, host: str, folder: str | None) -> None:
    if folder is None:
        return
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([*shlex.split(rsh), "-O", "exit", host], capture_output=True, timeout=10, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def _ssh(rsh: str, host: str, command: str, timeout: float = 120) -> str:

    argv = [*shlex.split(rsh), host, command]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KvmError(f"{host}: {command.split(maxsplit=1)[0]}: {err}") from err
    if result.returncode:
        text = result.stderr.strip().splitlines()
        raise KvmError(f"{host}: {text[-1] if text else f'ssh exited with {result.returncode}'}")
    return result.stdout


def remote_free(rsh: str, host: str, folder: str) -> int:
    """Free bytes in ``folder`` on ``host`` (which must exist and be writable there)."""

    q = shlex.quote(folder)
    out = _ssh(rsh, host, f"test -d {q} && test -w {q} && df -Pk {q} | tail -1 || echo missing", 60)
    fields = out.split()
    if not fields or fields[0] == "missing":
        raise BadRequest(f"the destination {host}:{folder} does not exist or is not writable")
    return int(fields[3]) * 1024


SPOOL = 64 * MIB  # what is kept of the stream to resend after a cut: far more than ssh has in flight
TRIES = 3  # connections cut in one run before it gives up
BLOCK_OUT = MIB  # what the pump reads from the compressor at a time


class RemoteStream:
    """A byte stream written to ``path`` on ``host`` by ``ssh HOST dd`` as it comes. The last
    SPOOL bytes are kept: when the connection is cut (ssh exits, or dies), a new one asks how much
    reached the file there and sends the rest from that offset, at most ``tries`` times in a run.

    Resending bytes that a lingering receiver of the cut connection may still write is harmless:
    every offset gets the same bytes. The whole file's sha256 is checked before it is published."""

    def __init__(self, rsh: str, host: str, path: str, log: Callable[[str], None],
                 spool: int = SPOOL, tries: int = TRIES, pause: float = 1.0) -> None:
        self.rsh, self.host, self.path, self.log = rsh, host, path, log
        self.limit, self.tries, self.pause = spool, tries, pause
        self.kept: collections.deque[bytes] = collections.deque()
        self.kept_from = 0  # the stream offset of the first byte kept
        self.kept_bytes = 0
        self.total = 0  # bytes the stream has been given
        self.cuts = 0
        self.stopped = False  # abort(): a cut from now on is ours, never resumed
        q = shlex.quote(path)
        # first created on its own (set -C: the shell refuses a file that exists, never over another
        # run's partial), so that every connection after it, the first too, may be resumed
        _ssh(rsh, host, f"set -C && umask 077 && : > {q}", 60)
        self.proc = self._start(f"exec dd of={q} bs=1M conv=notrunc status=none")

    def _start(self, command: str) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen([*shlex.split(self.rsh), self.host, command], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile())
        except OSError as err:
            raise KvmError(f"cannot run {shlex.split(self.rsh)[0]}: {err.strerror}") from err

    def write(self, data: bytes) -> None:
        self.kept.append(data)
        self.kept_bytes += len(data)
        self.total += len(data)
        while self.kept_bytes - len(self.kept[0]) >= self.limit:
            self.kept_from += len(self.kept[0])
            self.kept_bytes -= len(self.kept.popleft())
        try:
            self._send(data)
        except OSError:
            self._resume()

    def _send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def finish(self) -> None:
        """Everything is given: wait for the receiver to end well (resuming a cut at the very end)."""
        while True:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            if self.proc.wait() == 0:
                return
            self._resume()

    def abort(self) -> None:
        """End the stream for good (the run is failing or interrupted)."""
        self.stopped = True
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait()

    def _why(self) -> str:
        err = self.proc.stderr
        if not hasattr(err, "seek"):
            return f"ssh exited with {self.proc.returncode}"
        err.seek(0)  # type: ignore[union-attr]
        lines = err.read().decode(errors="replace").strip().splitlines()  # type: ignore[union-attr]
        return lines[-1] if lines else f"ssh exited with {self.proc.returncode}"

    def _resume(self) -> None:
        """A new connection that sends the rest from what reached the file there."""
        while True:
            self.kill()
            if self.stopped:
                raise KvmError(f"sending to {self.host}: stopped")
            why = self._why()
            self.cuts += 1
            if self.cuts > self.tries:
                raise KvmError(f"sending to {self.host}: the connection was cut {self.cuts} times ({why})")
            time.sleep(self.pause * 2 ** (self.cuts - 1))  # 1, 2, 4 s: a restarting sshd or a flapping link
            q = shlex.quote(self.path)
            try:
                answer = _ssh(self.rsh, self.host, f"stat -c %s -- {q} 2>/dev/null || echo gone", 60).split()
            except KvmError as err:  # no connection yet: another try
                self.log(f"sending to {self.host}: the connection was cut ({why}); {err}")
                continue
            if answer[:1] == ["gone"]:
                raise KvmError(f"sending to {self.host}: the connection was cut ({why}) and the partial archive "
                               f"{self.path} is gone there: cannot resume")
            if len(answer) != 1 or not answer[0].isdigit():
                raise KvmError(f"sending to {self.host}: the size of the partial archive there is {answer!r:.40}")
            there = int(answer[0])
            if not self.kept_from <= there <= self.total:
                raise KvmError(f"sending to {self.host}: the connection was cut ({why}) and the partial archive "
                               f"there has {there} bytes, not between {self.kept_from} and {self.total}: cannot resume")
            self.log(f"sending to {self.host}: the connection was cut ({why}); resuming at "
                     f"{there / MIB:,.1f} MiB ({self.cuts} of {self.tries})")
            self.proc = self._start(f"exec dd of={q} bs=1M seek={there} oflag=seek_bytes conv=notrunc status=none")
            try:
                skip = there - self.kept_from
                for chunk in list(self.kept):
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    self._send(chunk[skip:])
                    skip = 0
                return
            except OSError:
                continue


class RemoteFile:
    """The output of an ArchiveWriter for a remote folder: a pipe whose bytes a thread hashes and
    streams to ``path`` on ``host``; nothing is kept on this host but the spool in memory."""

    def __init__(self, rsh: str, host: str, path: str, log: Callable[[str], None]) -> None:
        self.where = f"{host}:{path}"
        self.rsh, self.host, self.path = rsh, host, path
        self.stream = RemoteStream(rsh, host, path, log)
        self._read, self.fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), MIB)
        self.sha = hashlib.sha256()
        self.size = 0
        self.failure: KvmError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while data := os.read(self._read, BLOCK_OUT):
                self.sha.update(data)
                self.size += len(data)
                self.stream.write(data)
        except KvmError as err:
            self.failure = err
        except Exception as err:  # raised again by done()
            self.failure = KvmError(f"sending to {self.host}: {type(err).__name__}: {err}")
        finally:
            os.close(self._read)  # the compressor gets EPIPE at once instead of blocking

    def _close_fd(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def done(self, sync: bool) -> None:  # the remote copy is synced when it is published
        self._close_fd()
        self._thread.join()
        if self.failure is not None:
            self.stream.kill()
            raise self.failure
        self.stream.finish()

    def abort(self) -> None:
        self._close_fd()
        self.stream.abort()
        self._thread.join(timeout=30)
        with contextlib.suppress(KvmError):
            _ssh(self.rsh, self.host, f"rm -f -- {shlex.quote(self.path)}", 60)


class RemoteFolder:
    """A folder on a remote host as a destination (every call over the run's one ssh connection)."""

    def __init__(self, rsh: str, host: str, folder: str, log: Callable[[str], None]) -> None:
        self.rsh, self.host, self.folder, self.log = rsh, host, folder.rstrip("/") or "/", log
        self.shown = f"{host}:{folder}"
        self.key = dest_key(self.shown)
        self.local: str | None = None

    def _path(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def names(self) -> set[str]:
        q = shlex.quote(self.folder)
        try:
            result = subprocess.run([*shlex.split(self.rsh), self.host,
                                     f"find {q}/ -mindepth 1 -maxdepth 1 -printf '%f\\0'"],
                                    capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KvmError(f"{self.host}: find: {err}") from err
        if result.returncode:
            text = result.stderr.decode(errors="replace").strip().splitlines()
            raise KvmError(f"{self.host}: {text[-1] if text else f'ssh exited with {result.returncode}'}")
        return {n.decode(errors="surrogateescape") for n in result.stdout.split(b"\0") if n}

    def stat(self, name: str) -> tuple[int, float] | None:
        out = _ssh(self.rsh, self.host, f"stat -c '%s %Y' -- {shlex.quote(self._path(name))} 2>/dev/null || echo none",
                   60).split()
        if len(out) != 2 or not all(v.isdigit() for v in out):
            return None
        return int(out[0]), float(out[1])

    def where(self, name: str) -> str:
        return f"{self.host}:{self._path(name)}"

    def output(self, name: str) -> RemoteFile:
        return RemoteFile(self.rsh, self.host, self._path(partial_name(name)), self.log)

    def publish(self, out: Output, name: str, check: Callable[[str], str]) -> tuple[str, str]:
        """Sync the sent archive to disk there and check its sha256 against what was sent, then give
        it its name (and sync the folder): a crash of the remote host never leaves a published
        archive that is not whole."""
        assert isinstance(out, RemoteFile)
        tmp, final = out.path, self._path(name)
        digest = out.sha.hexdigest()
        q = shlex.quote(tmp)
        try:
            # openssl uses the CPU's SHA instructions (coreutils' sha256sum does not: 6x slower here)
            there = _ssh(self.rsh, self.host,
                         f"sync -- {q} && {{ openssl dgst -sha256 -r {q} 2>/dev/null || sha256sum -- {q}; }}").split()
            if not there or there[0] != digest:
                raise KvmError(f"the copy on {self.host} does not match what was sent (sha256); removed")
            folder = shlex.quote(self.folder)
            _ssh(self.rsh, self.host, f"ln -- {q} {shlex.quote(final)} && rm -f -- {q} && sync -- {folder}")
        except BaseException:
            with contextlib.suppress(KvmError):
                _ssh(self.rsh, self.host, f"rm -f -- {q}", 60)
            raise
        return self.where(name), digest


def remote_cleanup(rsh: str, host: str, folder: str, domain: str) -> None:
    """Remove the partial archives of ``domain`` that runs never published (a failed or killed one:
    the run on this host holds the domain's journal lock, so none of them is still being written
    from here). Only names of this domain's archives: ``web`` leaves the partials of ``web-2`` alone."""
    digits = "[0-9]" * 8 + "T" + "[0-9]" * 6 + "Z"
    prefix = f"{folder.rstrip('/')}/{partial_name(domain + '-')[:-len('.partial')]}"
    with contextlib.suppress(KvmError):
        _ssh(rsh, host, f"rm -f -- {shlex.quote(prefix)}{digits}.*kvmbak.tar*.partial", 60)
