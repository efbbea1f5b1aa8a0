"""A private libvirtd that a test may stop, restart and freeze: never the shared one.

Debian's libvirtd (the one qemu:///system runs on) started once more, as the unprivileged user
``nobody`` in session mode, with HOME and XDG_RUNTIME_DIR in a temp dir of its own: its sockets
(``DIR/run/libvirt/libvirt-sock`` and ``libvirt-admin-sock``), pid file, configuration and state
are all there. Unprivileged, it cannot touch the shared daemon's state (/run/libvirt, /var/lib/libvirt
are root's). The tests need only its test driver: :meth:`PrivateLibvirtd.uri` is
``test+unix:///DIR/node.xml?socket=DIR/run/libvirt/libvirt-sock``, a node file the daemon itself
opens (so a scrape through it is one RPC over a real socket, and stopping the daemon is a real outage).

:meth:`PrivateLibvirtd.stop` (SIGTERM, wait), :meth:`start` again, :meth:`freeze`/:meth:`thaw`
(SIGSTOP/SIGCONT: a hung libvirtd that accepts connections and never answers) and
:meth:`clients` (the client connections it serves, from ``virt-admin srv-clients-list``, run as
the daemon's user: a session daemon's admin socket serves only its own user). It runs under the
subreaper of tests/services/rabbitmq.py, and :meth:`close` removes the temp dir.

By hand: ``python -m tests.services.libvirtd`` starts it, prints its URI and stops it on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from tests import nodes
from tests.services.rabbitmq import ServiceError, finish, kill_tree, reap_stale, serve_by_hand, spawn_reaped, tail

LIBVIRTD = "/usr/sbin/libvirtd"
USER = "nobody"
PREFIX = "spk-lvd-"  # short: a socket path has at most 107 bytes


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is registered."""


@dataclass
class PrivateLibvirtd:
    tmpdir: Path
    reaper: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def runtime(self) -> Path:
        return self.tmpdir / "run"

    @property
    def socket(self) -> Path:
        return self.runtime / "libvirt" / "libvirt-sock"

    @property
    def log(self) -> Path:
        return self.tmpdir / "libvirtd.log"

    def env(self) -> dict[str, str]:
        home = self.tmpdir / "home"
        return {"PATH": "/usr/sbin:/usr/bin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(self.runtime),
                "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"), "LANG": "C.UTF-8"}

    def as_user(self, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={USER}", f"--regid={pwd.getpwnam(USER).pw_gid}", "--clear-groups", *argv]

    def node_file(self, name: str, text: str) -> Path:
        """A node file the daemon (user nobody) can read, in its directory."""
        path = self.tmpdir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        return path

    def uri(self, node: Path) -> str:
        return f"test+unix://{node}?socket={self.socket}"

    @property
    def pid(self) -> int:
        return int((self.runtime / "libvirt" / "libvirtd.pid").read_text().strip())

    def start(self, timeout: float = 30) -> None:
        """Start the daemon and wait until it answers on its socket."""
        began = time.monotonic()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a stale one would pass for the new daemon's
        self.reaper = spawn_reaped(self.as_user(LIBVIRTD), env=self.env(), tmpdir=self.tmpdir, log=self.log)
        probe = self.node_file("probe.xml", "")
        nodes.write(probe, {"probe": nodes.RUNNING})
        deadline = began + timeout
        while True:
            if self.reaper.poll() is not None:
                raise ServiceError(f"libvirtd exited ({self.reaper.returncode})\n{tail(self.log)}")
            if self.socket.exists():
                with contextlib.suppress(libvirt.libvirtError):
                    libvirt.openReadOnly(self.uri(probe)).close()
                    break
            if time.monotonic() > deadline:
                raise ServiceError(f"libvirtd not answering on {self.socket}\n{tail(self.log)}")
            time.sleep(0.05)
        self.timings.setdefault("start", time.monotonic() - began)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to libvirtd and wait until it is gone (its socket too); safe to call twice."""
        if self.reaper is None:
            return
        self.thaw()
        if self.reaper.poll() is None:
            kill_tree(self.reaper.pid, signal.SIGTERM)
        finish(self.reaper, timeout=timeout)
        self.reaper = None

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(self.pid, signal.SIGCONT)

    def clients(self) -> list[str]:
        """The ids of the client connections the daemon serves now (virt-admin srv-clients-list)."""
        result = subprocess.run(self.as_user("virt-admin", "srv-clients-list", "libvirtd"), env=self.env(),
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise ServiceError(f"virt-admin srv-clients-list: {result.stderr.strip()}")
        rows = [line.split() for line in result.stdout.splitlines()[2:] if line.strip()]
        return [row[0] for row in rows]

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def start() -> PrivateLibvirtd:
    """A started private libvirtd; on failure, cleaned up and ServiceError raised."""
    if not os.access(LIBVIRTD, os.X_OK):
        raise ServiceError(f"{LIBVIRTD} not found: run `bash tests/services/setup.sh` (installs Debian's libvirt)")
    libvirt.registerErrorHandler(_quiet, None)
    reap_stale(PREFIX)
    tmpdir = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
    tmpdir.chmod(0o755)
    user = pwd.getpwnam(USER)
    for sub in ("home", "run"):
        (tmpdir / sub).mkdir()
        os.chown(tmpdir / sub, user.pw_uid, user.pw_gid)
    (tmpdir / "run").chmod(0o700)
    daemon = PrivateLibvirtd(tmpdir)
    try:
        daemon.start()
    except BaseException:
        daemon.close()
        raise
    return daemon


def main() -> int:
    daemon = start()
    node = daemon.node_file("default.xml", "")
    nodes.write(node, nodes.HOSTILE)
    try:
        return serve_by_hand(daemon, f"private libvirtd pid {daemon.pid}, {daemon.uri(node)}")
    finally:
        daemon.close()


if __name__ == "__main__":
    sys.exit(main())
