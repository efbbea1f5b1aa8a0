"""Copies to a remote host over rsync/ssh: multiplexed ssh, free space, upload, publish, cleanup."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from sensu_kvm.errors import BadRequest, KvmError

# --- remote destinations (rsync over ssh) ----------------------------------------------------------


def multiplexed(rsh: str) -> tuple[str, str | None]:
    """The ssh command with one shared connection for all the calls of a run (each new ssh
    connection costs ~0.35 s), and the private folder of its socket; other --rsh commands are
    left as they are."""
    import shlex  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    words = shlex.split(rsh)
    if not words or os.path.basename(words[0]) != "ssh" or "ControlPath" in rsh:
        return rsh, None
    folder = tempfile.mkdtemp(prefix="kvm-backup-ssh-")  # short: a socket path has at most 107 bytes
    path = os.path.join(folder, "%C")
    return rsh + f" -o ControlMaster=auto -o ControlPersist=60 -o ControlPath={shlex.quote(path)}", folder


def close_multiplexed(rsh: str, host: str, folder: str | None) -> None:
    import shlex  # noqa: PLC0415

    if folder is None:
        return
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([*shlex.split(rsh), "-O", "exit", host], capture_output=True, timeout=10, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def split_remote(dest: str) -> tuple[str, str] | None:
    """(host, folder) of HOST:DIR, None for a local folder (a path with a slash before any colon)."""
    if ":" not in dest:
        return None
    host, _, folder = dest.partition(":")
    if not host or "/" in host:
        return None
    return host, folder or "."


def _ssh(rsh: str, host: str, command: str, timeout: float = 120) -> str:
    import shlex  # noqa: PLC0415

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
    import shlex  # noqa: PLC0415

    q = shlex.quote(folder)
    out = _ssh(rsh, host, f"test -d {q} && test -w {q} && df -Pk {q} | tail -1 || echo missing", 60)
    fields = out.split()
    if not fields or fields[0] == "missing":
        raise BadRequest(f"the destination {host}:{folder} does not exist or is not writable")
    return int(fields[3]) * 1024


def upload(local: str, name: str, rsh: str, host: str, folder: str, log: Callable[[str], None],
           progress: bool = False, tries: int = 3) -> tuple[str, str]:
    """rsync the archive to ``host:folder`` under a temporary name (resumable with --partial; the
    archive has no holes to keep); (temporary path, final path) there. With ``progress``, rsync's
    progress goes to stderr."""
    import shlex  # noqa: PLC0415

    tmp = f"{folder.rstrip('/')}/.{name}.partial"
    final = f"{folder.rstrip('/')}/{name}"
    # no --sparse: the archive holds no holes (the images' holes never enter it), and rsync's hole
    # search costs a third more time. The first try sends the whole file (-W: there is nothing to
    # compare with); --partial keeps what arrived, and each later try resumes from it with
    # --append-verify: only the rest is sent, then the whole file's checksum is compared (a
    # mismatch is sent again), instead of checksumming the partial file block by block
    argv = ["rsync", "-t", "--chmod=F600", "--partial", "-e", rsh, local, f"{host}:{tmp}"]
    if progress:
        argv.insert(1, "--info=progress2")
    why = ""
    for attempt in range(1, tries + 1):
        result = subprocess.run([*argv[:1], "-W" if attempt == 1 else "--append-verify", *argv[1:]],
                                stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, check=False)
        if result.returncode == 0:
            break
        lines = result.stderr.strip().splitlines()
        why = lines[0] if lines else f"rsync exited with {result.returncode}"
        if attempt < tries and result.returncode not in (1, 2, 3, 4, 11):
            log(f"rsync to {host} failed ({why}); trying again ({attempt + 1} of {tries})")
            time.sleep(2)
            continue
        with contextlib.suppress(KvmError):
            _ssh(rsh, host, f"rm -f -- {shlex.quote(tmp)}")
        raise KvmError(f"copying {name} to {host}:{folder} failed: {why}")
    return tmp, final


def publish(rsh: str, host: str, tmp: str, final: str, digest: str) -> str:
    """Sync the sent archive to disk there and check its sha256 against the verified local one,
    then give it its name (and sync the folder): a crash of the remote host never leaves a
    published archive that is not whole."""
    import shlex  # noqa: PLC0415

    q = shlex.quote(tmp)
    # openssl uses the CPU's SHA instructions (coreutils' sha256sum does not: 6x slower here)
    there = _ssh(rsh, host, f"sync -- {q} && {{ openssl dgst -sha256 -r {q} 2>/dev/null || sha256sum -- {q}; }}").split()
    if not there or there[0] != digest:
        with contextlib.suppress(KvmError):
            _ssh(rsh, host, f"rm -f -- {shlex.quote(tmp)}")
        raise KvmError(f"the copy on {host} does not match the verified archive (sha256); removed")
    folder = shlex.quote(os.path.dirname(final) or ".")
    _ssh(rsh, host, f"ln -- {q} {shlex.quote(final)} && rm -f -- {q} && sync -- {folder}")  # ln never replaces
    return f"{host}:{final}"


def remote_cleanup(rsh: str, host: str, folder: str, domain: str) -> None:
    """Remove what a failed run of ``domain`` sent but never published."""
    import shlex  # noqa: PLC0415

    pattern = f"{folder.rstrip('/')}/.{domain}-"
    with contextlib.suppress(KvmError):
        _ssh(rsh, host, f"rm -f -- {shlex.quote(pattern)}*.kvmbak.tar*.partial", 60)
