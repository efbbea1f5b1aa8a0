"""A private RabbitMQ node for the tests, set up the way the classic Sensu Core 1.x guide does.

Debian's rabbitmq-server (3.10), started by hand (no systemd), with all of its state in a temp dir:

* RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE, RABBITMQ_PID_FILE and HOME (hence the Erlang cookie)
  point into the temp dir, and the config, env and enabled-plugins files into it too (they do
  not exist there: built-in defaults), so nothing is read from or written to /etc/rabbitmq or
  /var/lib/rabbitmq and a second run starts from scratch;
* the node is spk-test-<pid>@localhost and listens for AMQP on the host and port of the shipped
  conf.d/rabbitmq.json only (RABBITMQ_NODE_IP_ADDRESS), for distribution on a free port of
  127.0.0.1, and registers with a private epmd on another free port of 127.0.0.1 (ERL_EPMD_PORT),
  so that the machine's epmd on 4369, and any other node there, is never touched;
* then `rabbitmqctl add_vhost /sensu`, `add_user sensu <password>`, `set_permissions -p /sensu
  sensu ".*" ".*" ".*"`;
* stopped with `rabbitmqctl stop PIDFILE` and `epmd -kill` (the private epmd), temp dir removed.

The scripts under /usr/lib/rabbitmq/bin are run directly: Debian's wrappers in /usr/sbin switch to
the rabbitmq user through `su`, which resets HOME, and send the output to /var/log/rabbitmq.

Every daemon runs under a small subreaper (see REAPER): when it exits, the whole process tree
(beam.smp, erl_child_setup, inet_gethost, a daemonized redis-server...) is gone and reaped, so no
zombie is left for the init of this machine to collect. The subreaper carries the pid of the test
process that started it, so a later run can clean up after a run that was killed.

This module also holds the helpers that tests/services/redis.py uses.

By hand: `python -m tests.services.rabbitmq` starts a node, prints it and stops it on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONF_D = Path(__file__).resolve().parents[2] / "conf.d"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
VHOST_PERMISSIONS = (".*", ".*", ".*")  # configure, write, read: the classic Sensu setup
REAPER_TAG = "spk-services-reaper"


class ServiceError(RuntimeError):
    """A test service could not be started (or stopped); the message says why."""


class PortInUseError(ServiceError):
    """The port of the shipped configuration is taken by some other process."""


# -- helpers shared with redis.py --------------------------------------------------------------

def shipped_settings(name: str, key: str | None = None, conf_d: Path = CONF_D) -> dict[str, Any]:
    """The settings of a shipped conf.d file, e.g. shipped_settings("rabbitmq.json")."""
    path = conf_d / name
    data = json.loads(path.read_text())
    section: dict[str, Any] = data[key or Path(name).stem]
    return section


def require_loopback(host: str, source: str) -> None:
    """The tests only ever talk to this machine: refuse a configuration that points elsewhere."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ServiceError(f"{source}: host {host!r} is not a loopback address; the tests only talk to 127.0.0.1")


def _listeners(port: int) -> str:
    """Who listens on a TCP port, from ss (best effort, for error messages)."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "; ".join(" ".join(line.split()) for line in out.splitlines() if line.strip())


def ensure_port_free(host: str, port: int, service: str, source: str) -> None:
    """Fail with a clear message when host:port cannot be bound (someone else listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            who = _listeners(port)
            raise PortInUseError(
                f"cannot start the test {service} on {host}:{port} (the port of {source}): "
                f"{exc.strerror or exc}; already listening there: {who or 'unknown'}. "
                f"The tests start their own {service} there (from Debian's package, as conf.d says): "
                "stop what listens there and run again."
            ) from exc


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(ready: Callable[[], bool], reaper: subprocess.Popen[bytes], what: str, waiting: str,
               deadline: float, timeout: float, logs: Callable[[], str]) -> None:
    """Poll ``ready`` until it is true; ServiceError when the daemon ``what`` exits first or
    ``deadline`` passes (``waiting`` says for what, e.g. "answering PING on 127.0.0.1:6379")."""
    while not ready():
        if reaper.poll() is not None:
            raise ServiceError(f"{what} exited ({reaper.returncode}) while starting\n{logs()}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not {waiting} after {timeout:.0f} s\n{logs()}")
        time.sleep(0.05)


def serve_by_hand(service: Any, description: str) -> int:
    """``python -m tests.services.X``: keep a started service up until Ctrl-C, then stop it."""
    try:
        print(f"{description}; up in {service.timings['start']:.2f} s. Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        service.stop()
    return 0


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: not written)"
    return f"--- {path} (last {lines} lines)\n" + "\n".join(text.splitlines()[-lines:])


# Runs `argv` as its child, made a child subreaper (PR_SET_CHILD_SUBREAPER = 36) first, so that
# orphaned descendants (a daemon that forked away, erl_child_setup after beam.smp) become its
# children; it reaps everything and exits with the child's status only when no descendant is left.
# argv of the reaper: REAPER_TAG, owner pid, temp dir, "--", command...
REAPER = r"""
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
argv = sys.argv[sys.argv.index("--") + 1:]
child = os.fork()
if child == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
status = 0
while True:
    try:
        pid, raw = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == child:
        status = os.waitstatus_to_exitcode(raw)
sys.exit(status if status >= 0 else 128 - status)
"""


def _reaper_argv(argv: Sequence[str], tmpdir: Path) -> list[str]:
    return [sys.executable, "-c", REAPER, REAPER_TAG, str(os.getpid()), str(tmpdir), "--", *argv]


def spawn_reaped(argv: Sequence[str], *, env: Mapping[str, str], tmpdir: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start argv under the subreaper, in a session of its own, output to log."""
    with open(log, "ab") as out:
        return subprocess.Popen(_reaper_argv(argv, tmpdir), env=dict(env), cwd=tmpdir, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_reaped(argv: Sequence[str], *, env: Mapping[str, str], tmpdir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run(argv) under the subreaper: rabbitmqctl's Erlang VM leaves inet_gethost and
    erl_child_setup behind (and starts an epmd when none answers); they end with it here.
    On timeout the whole tree is killed and TimeoutExpired raised."""
    proc = subprocess.Popen(_reaper_argv(argv, tmpdir), env=dict(env), cwd=tmpdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """All descendants of pid, from /proc."""
    tree = _children()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal every descendant of pid (not pid itself: the subreaper then reaps them and exits)."""
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, sig)


def finish(reaper: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait for a subreaper (= its whole tree) to end; past timeout, TERM then KILL the tree."""
    if reaper is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        kill_tree(reaper.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(5)
            return
    reaper.kill()
    reaper.wait(5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(prefix: str) -> list[str]:
    """Stop what an earlier, killed test run left behind: the subreapers tagged REAPER_TAG whose
    temp dir starts with prefix and whose owner process is gone. Returns what was cleaned."""
    cleaned = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if REAPER_TAG not in argv[:4]:
            continue
        at = argv.index(REAPER_TAG)
        try:
            owner, tmpdir = int(argv[at + 1]), Path(argv[at + 2])
        except (IndexError, ValueError):
            continue
        if not tmpdir.name.startswith(prefix) or _alive(owner):
            continue
        pid = int(entry.name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            kill_tree(pid, sig)
            deadline = time.monotonic() + 5
            while descendants(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(tmpdir, ignore_errors=True)
        cleaned.append(f"pid {pid} (owner {owner} gone), {tmpdir}")
    return cleaned


# -- RabbitMQ ---------------------------------------------------------------------------------

@dataclass
class RabbitMQNode:
    """A running private node; settings are those of the shipped rabbitmq.json."""

    settings: dict[str, Any]
    nodename: str
    tmpdir: Path
    dist_port: int
    epmd_port: int
    env: dict[str, str]
    server: subprocess.Popen[bytes] | None = None
    epmd: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def pidfile(self) -> Path:
        return self.tmpdir / "rabbit.pid"

    @property
    def logs(self) -> str:
        return "\n".join(tail(path) for path in (self.tmpdir / "server.out", self.tmpdir / "log" / f"{self.nodename}.log"))

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl -n NODE args..., with the node's environment (cookie, epmd port)."""
        argv = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args]
        try:
            done = run_reaped(argv, env=self.env, tmpdir=self.tmpdir, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"`rabbitmqctl {' '.join(args)}` did not finish in {timeout:.0f} s\n{self.logs}") from exc
        if check and done.returncode != 0:
            raise ServiceError(f"`rabbitmqctl {' '.join(args)}` exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()}\n{self.logs}")
        return done

    def _wait_started(self, timeout: float) -> None:
        """`rabbitmqctl wait --timeout T PIDFILE`, watching that the server does not die meanwhile;
        then await_startup, retried (it may exit 69 right after the start)."""
        argv = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, "wait", "--timeout", str(int(timeout)), str(self.pidfile)]
        log = self.tmpdir / "wait.out"
        waiter = spawn_reaped(argv, env=self.env, tmpdir=self.tmpdir, log=log)
        deadline = time.monotonic() + timeout + 10
        try:
            while waiter.poll() is None:
                if self.server is not None and self.server.poll() is not None:
                    raise ServiceError(f"rabbitmq-server exited ({self.server.returncode}) while starting\n{self.logs}")
                if time.monotonic() > deadline:
                    raise ServiceError(f"RabbitMQ node {self.nodename} not up after {timeout:.0f} s\n{self.logs}")
                time.sleep(0.1)
        finally:
            finish(waiter, timeout=0)
        if waiter.returncode != 0:
            raise ServiceError(f"`rabbitmqctl wait` exited {waiter.returncode}\n{tail(log)}\n{self.logs}")
        for _attempt in range(20):
            done = self.ctl("await_startup", "--timeout", "30", check=False)
            if done.returncode == 0:
                return
            time.sleep(0.5)
        raise ServiceError(f"`rabbitmqctl await_startup` exited {done.returncode}: {done.stderr.strip()}\n{self.logs}")

    def setup_sensu(self) -> None:
        """The classic setup: vhost, user and its permissions on the vhost."""
        vhost, user = self.settings["vhost"], self.settings["user"]
        self.ctl("add_vhost", vhost)
        self.ctl("add_user", user, self.settings["password"])
        self.ctl("set_permissions", "-p", vhost, user, *VHOST_PERMISSIONS)

    def stop(self) -> None:
        """Stop the node and the private epmd, remove the temp dir; safe to call more than once."""
        started = time.monotonic()
        try:
            graceful = False
            if self.server is not None and self.server.poll() is None and self.pidfile.exists():
                with contextlib.suppress(ServiceError):
                    graceful = self.ctl("stop", str(self.pidfile), timeout=30, check=False).returncode == 0
            finish(self.server, timeout=15 if graceful else 1)
            if self.epmd is not None and self.epmd.poll() is None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], env=self.env,
                                   capture_output=True, timeout=10, check=False)
            finish(self.epmd, timeout=10)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.timings.setdefault("stop", time.monotonic() - started)


def _node_env(tmpdir: Path, nodename: str, host: str, port: int, dist_port: int, epmd_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env.update({
        "HOME": str(tmpdir),
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_NODE_IP_ADDRESS": host,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(tmpdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(tmpdir / "log"),
        "RABBITMQ_PID_FILE": str(tmpdir / "rabbit.pid"),
        "RABBITMQ_CONF_ENV_FILE": str(tmpdir / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(tmpdir / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(tmpdir / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmpdir / "enabled_plugins"),
        # Distribution on 127.0.0.1 only.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    })
    return env


def _start_epmd(node: RabbitMQNode, deadline: float) -> None:
    """A private epmd in the foreground (under the subreaper), until `epmd -names` answers."""
    node.epmd = spawn_reaped(["epmd", "-port", str(node.epmd_port), "-address", "127.0.0.1"],
                             env=node.env, tmpdir=node.tmpdir, log=node.tmpdir / "epmd.out")
    while True:
        names = subprocess.run(["epmd", "-port", str(node.epmd_port), "-names"], env=node.env,
                               capture_output=True, text=True, timeout=5, check=False)
        if names.returncode == 0:
            return
        if node.epmd.poll() is not None or time.monotonic() > deadline:
            raise ServiceError(f"epmd on 127.0.0.1:{node.epmd_port} did not start: {names.stdout.strip()}\n"
                               f"{tail(node.tmpdir / 'epmd.out')}")
        time.sleep(0.05)


def start(settings: Mapping[str, Any] | None = None, *, timeout: float = 60,
          source: str = "conf.d/rabbitmq.json") -> RabbitMQNode:
    """Start a private node on the host/port of settings (default: the shipped rabbitmq.json), set
    up its vhost, user and permissions; on any failure, clean up and raise ServiceError."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        raise ServiceError(f"{RABBITMQ_BIN / 'rabbitmq-server'} not found: run `bash tests/services/setup.sh` "
                           "(installs Debian's rabbitmq-server)")
    conf = dict(settings if settings is not None else shipped_settings("rabbitmq.json"))
    host, port = conf["host"], int(conf["port"])
    require_loopback(host, source)
    reap_stale("spk-rabbitmq-")
    ensure_port_free(host, port, "RabbitMQ", source)
    tmpdir = Path(tempfile.mkdtemp(prefix=f"spk-rabbitmq-{os.getpid()}-"))
    nodename = f"spk-test-{os.getpid()}@localhost"
    epmd_port = free_port()
    dist_port = free_port()
    while dist_port in (epmd_port, port):
        dist_port = free_port()
    node = RabbitMQNode(settings=conf, nodename=nodename, tmpdir=tmpdir, dist_port=dist_port, epmd_port=epmd_port,
                        env=_node_env(tmpdir, nodename, host, port, dist_port, epmd_port))
    began = time.monotonic()
    try:
        _start_epmd(node, began + 10)
        node.server = spawn_reaped([str(RABBITMQ_BIN / "rabbitmq-server")], env=node.env, tmpdir=tmpdir,
                                   log=tmpdir / "server.out")
        node._wait_started(timeout)
        node.timings["start"] = time.monotonic() - began
        node.setup_sensu()
        node.timings["setup"] = time.monotonic() - began - node.timings["start"]
    except BaseException:
        node.stop()
        raise
    return node


def main() -> int:
    node = start()
    return serve_by_hand(node, f"RabbitMQ node {node.nodename} on {node.settings['host']}:{node.settings['port']}, "
                               f"vhost {node.settings['vhost']}, user {node.settings['user']}; dir {node.tmpdir}")


if __name__ == "__main__":
    sys.exit(main())
