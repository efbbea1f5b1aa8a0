"""A private Icinga 2 that runs the installed checks through the shipped CheckCommands, for tests.

:func:`running` writes a configuration into a fresh temp dir: it includes
packaging/icinga2/sensu-plugins-kvm.conf as shipped (by its path in the checkout, never a copy),
defines one host whose ``vars.kvm_plugin_dir`` is the venv's bin, one Service per entry given
(a CheckCommand and the custom variables it sets), a PerfdataWriter whose files record each
check result (state, perfdata) and a GraphiteWriter that sends to a TCP listener of the test
(:class:`LineSink`, which keeps every line it receives). Every path Icinga 2 uses (cache, state,
log, spool, run directory) is moved into the temp dir with ``-DConfiguration.<Dir>=``, so
nothing of /etc/icinga2 or /var is read or written. ``icinga2 daemon -C`` validates, then
``icinga2 daemon`` runs under the subreaper of tests/services/rabbitmq.py until the ``with``
ends (or :meth:`Icinga2.stop`); it is stopped (TERM, then KILL) and the dir removed, even when a
test fails.

Started as root, Icinga 2 runs as user ``nagios`` (Debian's ICINGA2_USER) and so do the checks:
the read-only libvirt relay and the traversable venv of tests/services/nagios.py serve it too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.nagios import (
    BIN,
    USER,
    read_only_libvirt,
    tagged_lines,
    traversable,
)
from tests.services.rabbitmq import finish, kill_tree, reap_stale, spawn_reaped

ICINGA2 = "icinga2"
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ROOT / "packaging" / "icinga2" / "sensu-plugins-kvm.conf"
SERVICES = ROOT / "packaging" / "icinga2" / "sensu-plugins-kvm-services.conf"
HOST = "spk-icinga2-host"
GRAPHITE_PORT = 18100  # this suite's port range: 18100-18149
PREFIX = "spk-icinga2-"
# The fields of each PerfdataWriter line, tab-separated as in Icinga's default template.
FIELDS = ("TIMET", "SERVICEDESC", "SERVICESTATEID", "SERVICEPERFDATA")
DIRS = ("CacheDir", "DataDir", "LogDir", "InitRunDir", "SpoolDir")


def string(text: str) -> str:
    """An Icinga 2 string literal (a `$` is a macro in custom variables that reach a command)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def value(item: object) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, (list, tuple)):
        return "[ " + ", ".join(string(str(v)) for v in item) + " ]"
    return string(str(item))


@dataclass(frozen=True)
class Service:
    """A Service of the test host: a CheckCommand of the shipped file and the variables it sets."""

    check_command: str
    vars: Mapping[str, object] = field(default_factory=dict)


def config(root: Path, services: Mapping[str, Service], check_interval: int, graphite_port: int,
           includes: Sequence[Path], extra: str = "") -> str:
    parts = [f"include {string(str(path))}" for path in includes]
    if extra:
        parts.append(extra)
    parts += [
        'object CheckerComponent "checker" { }',
        f'object FileLogger "log" {{\n  severity = "notice"\n  path = {string(str(root / "icinga2.log"))}\n}}',
        "object PerfdataWriter \"perfdata\" {\n"
        f"  service_perfdata_path = {string(str(root / 'perfdata' / 'service-perfdata'))}\n"
        f"  service_temp_path = {string(str(root / 'tmp' / 'service-perfdata'))}\n"
        f"  host_perfdata_path = {string(str(root / 'perfdata' / 'host-perfdata'))}\n"
        f"  host_temp_path = {string(str(root / 'tmp' / 'host-perfdata'))}\n"
        "  service_format_template = \"TIMET::$service.last_check$\\tSERVICEDESC::$service.name$"
        "\\tSERVICESTATEID::$service.state_id$\\tSERVICEPERFDATA::$service.perfdata$\"\n"
        "  rotation_interval = 1s\n}",
        f'object GraphiteWriter "graphite" {{\n  host = "127.0.0.1"\n  port = {graphite_port}\n}}',
        'object CheckCommand "spk-host-up" {\n  command = [ "/bin/true" ]\n}',
        f'object Host {string(HOST)} {{\n  check_command = "spk-host-up"\n  address = "127.0.0.1"\n'
        f"  check_interval = 1h\n  vars.kvm_plugin_dir = {string(str(BIN))}\n}}",
    ]
    for name, service in services.items():
        lines = [f"object Service {string(name)} {{", f"  host_name = {string(HOST)}",
                 f"  check_command = {string(service.check_command)}", f"  check_interval = {check_interval}s",
                 f"  retry_interval = {check_interval}s", "  max_check_attempts = 1"]
        lines += [f"  vars.{key} = {value(item)}" for key, item in service.vars.items()]
        parts.append("\n".join([*lines, "}"]))
    return "\n\n".join(parts) + "\n"


class LineSink:
    """A TCP listener on 127.0.0.1:port that keeps every line it receives (a stand-in for carbon:
    what matters here is what Icinga 2 sends, and what it logs)."""

    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.2)
        self._lock = threading.Lock()
        self._data = bytearray()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connected_at: float | None = None  # time.time() of the first connection
        self._accepting = threading.Thread(target=self._accept, name="graphite-sink", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.connected_at is None:
                self.connected_at = time.time()
            thread = threading.Thread(target=self._read, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, client: socket.socket) -> None:
        client.settimeout(0.2)
        with client:
            while not self._stop.is_set():
                try:
                    chunk = client.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    self._data += chunk

    def lines(self) -> list[str]:
        with self._lock:
            text = self._data.decode("utf-8", errors="replace")
        return text.splitlines()

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass(frozen=True)
class Result:
    """One check result as the PerfdataWriter recorded it."""

    time: float
    state: int
    perfdata: str


def parse_perfdata_lines(text: str) -> list[tuple[str, Result]]:
    """(service, result) of each line of PerfdataWriter files written with the template above."""
    return [(v["SERVICEDESC"], Result(float(v["TIMET"]), int(v["SERVICESTATEID"]), v["SERVICEPERFDATA"]))
            for v in tagged_lines(text, FIELDS, "PerfdataWriter")]


@dataclass
class Icinga2:
    root: Path
    sink: LineSink
    services_defined: tuple[str, ...]
    stop: Callable[[], None]  # stop Icinga 2 now (it writes out what its writers hold); the dir stays
    seen: dict[tuple[str, Result], None] = field(default_factory=dict)  # every result read, in order

    def log(self) -> str:
        try:
            return (self.root / "icinga2.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def results(self) -> dict[str, list[Result]]:
        """Every result the PerfdataWriter wrote so far, per service, oldest first.

        It writes each second's results to a file named after the second; when it stops it writes
        one more, and if that falls in the same second it replaces the last one. So what was read
        once is kept here: call this while Icinga 2 runs to keep what a later rename may lose."""
        paths = [*sorted((self.root / "perfdata").glob("service-perfdata*")), self.root / "tmp" / "service-perfdata"]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                for record in parse_perfdata_lines(path.read_text(encoding="utf-8", errors="replace")):
                    self.seen.setdefault(record, None)
        found: dict[str, list[Result]] = {}
        for service, result in sorted(self.seen, key=lambda record: record[1].time):
            found.setdefault(service, []).append(result)
        return found


@dataclass(frozen=True)
class Execution:
    """A check command Icinga 2 ran, from its notice log: argv and exit code."""

    argv: tuple[str, ...]
    exit_code: int


# (an argument may hold a newline: the entry then spans lines)
EXECUTION = re.compile(r"notice/Process: PID \d+ \('(.*?)'\) terminated with exit code (-?\d+)$", re.MULTILINE | re.DOTALL)


def executions(log: str) -> list[Execution]:
    """Every command Icinga 2 logged as terminated, in order (its log quotes each argument in '...')."""
    return [Execution(tuple(match[1].split("' '")), int(match[2])) for match in EXECUTION.finditer(log)]


def check_config(text: str) -> tuple[str, str]:
    """Validate a configuration (``icinga2 daemon -C``) in a temp dir of its own; Icinga's output
    and ``icinga2 object list`` of what it made. Raises when it is refused."""
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        cfg = root / "icinga2.conf"
        cfg.write_text(text, encoding="utf-8")
        prepare(root)
        env = environment(root)
        with traversable([COMMANDS, SERVICES]):
            output = validate(cfg, root, env)
            listed = subprocess.run([ICINGA2, "object", "list", *defines(root)], capture_output=True, text=True,
                                    timeout=120, env=env)
        if listed.returncode != 0:
            raise RuntimeError(f"icinga2 object list failed:\n{listed.stdout}{listed.stderr}")
        return output, listed.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


def validate(cfg: Path, root: Path, env: Mapping[str, str]) -> str:
    """``icinga2 daemon -C``; raises with Icinga's own words when the configuration is refused."""
    result = subprocess.run([ICINGA2, "daemon", "-C", "-c", str(cfg), *defines(root)], capture_output=True,
                            text=True, timeout=120, env=dict(env))
    if result.returncode != 0:
        raise RuntimeError(f"icinga2 daemon -C refused {cfg}:\n{result.stdout}{result.stderr}")
    return result.stdout


def defines(root: Path) -> list[str]:
    return [f"-DConfiguration.{name}={root / name.lower()}" for name in DIRS] + [
        f"-DConfiguration.ConfigDir={root}", f"-DConfiguration.ZonesDir={root / 'zones.d'}"]


def prepare(root: Path) -> None:
    """The temp dir's folders, owned by user nagios (Icinga 2 drops root for it)."""
    entry = pwd.getpwnam(USER)
    for sub in (*(name.lower() for name in DIRS), "perfdata", "tmp", "home", "zones.d"):
        (root / sub).mkdir(exist_ok=True)
    for path in [root, *root.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    root.chmod(0o755)


def environment(root: Path) -> dict[str, str]:
    """Icinga 2 passes its environment on to the checks: keep it small and predictable."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(root / "home")}


@contextlib.contextmanager
def running(services: Mapping[str, Service], check_interval: int = 5, graphite_port: int = GRAPHITE_PORT,
            extra_paths: Sequence[str | os.PathLike[str]] = (), extra: str = "") -> Iterator[Icinga2]:
    """Run a private Icinga 2 with these Services on one host (see the module's docstring);
    ``extra`` is more configuration (objects of a test's own)."""
    if shutil.which(ICINGA2) is None:
        raise RuntimeError(f"{ICINGA2} not found: run tests/services/setup.sh")
    reap_stale(PREFIX)
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix=PREFIX))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        cfg = root / "icinga2.conf"
        cfg.write_text(config(root, services, check_interval, graphite_port, [COMMANDS], extra), encoding="utf-8")
        prepare(root)
        env = environment(root)
        stack.enter_context(traversable([COMMANDS, *extra_paths]))
        validate(cfg, root, env)
        sink = LineSink(graphite_port)
        stack.callback(sink.stop)
        argv = read_only_libvirt([ICINGA2, "daemon", "-c", str(cfg), *defines(root)], root, stack)
        reaper = spawn_reaped(argv, env=env, tmpdir=root, log=root / "daemon.out")

        instance = Icinga2(root=root, sink=sink, services_defined=tuple(services), stop=lambda: None)

        def stop() -> None:
            if reaper.poll() is None:
                instance.results()  # what the PerfdataWriter's last rename may replace
                kill_tree(reaper.pid, signal.SIGTERM)
            finish(reaper, 15)

        instance.stop = stop

        stack.callback(stop)
        deadline = time.monotonic() + 30
        while "Icinga application loader" not in (root / "daemon.out").read_text(errors="replace"):
            if reaper.poll() is not None or time.monotonic() >= deadline:
                raise RuntimeError(f"icinga2 did not start:\n{(root / 'daemon.out').read_text(errors='replace')}")
            time.sleep(0.1)
        yield instance
