"""A private nagios4 instance that runs the installed checks, for tests.

:func:`running` writes a complete configuration to a fresh temp dir (one host, one service per
command, ``interval_length=1`` so intervals are in seconds, no notifications, no external
commands, every file Nagios writes kept in that dir), validates it with ``nagios4 -v``, starts
``nagios4 -d`` and yields a :class:`Nagios` whose :meth:`Nagios.services` reads back what the
scheduler recorded in status.dat, and :meth:`Nagios.perfdata` what it wrote to its service perfdata
file (process_performance_data: one line per check result, with the state and the perfdata).
Afterwards Nagios and its workers are stopped by pid and the dir is removed.

A service is either an argv (a command of its own is defined for it) or a ``check_command`` string
for a command of the files given as ``cfg_files``, e.g. the shipped
packaging/nagios/sensu-plugins-kvm.cfg, whose ``$USER5$`` the ``resources`` set (by default to the
venv's bin).

What the checks need, run as user ``nagios``:

* the venv's commands and their interpreter: the checkout or the interpreter may sit under a
  0700 directory (``/root``); :func:`traversable` adds o+x to the directories on the way while
  Nagios runs and puts the modes back afterwards;
* a read-only libvirt connection to ``qemu:///system``. The socket ``/run/libvirt/libvirt-sock-ro``
  is mode 0777, but libvirtd authenticates read-only clients with polkit (``auth_unix_ro``),
  which needs the system D-Bus and polkitd; without systemd neither runs here, so any user but
  root gets ``Unable to get system bus connection``. Unless user nagios can already connect,
  :func:`running` relays a private socket to the read-only socket (libvirtd sees the relay, which
  runs as root, and skips polkit; the connection stays read-only) and starts Nagios in a private
  mount namespace where that socket is bind-mounted over ``/run/libvirt/libvirt-sock-ro``. The
  checks keep ``-u qemu:///system`` exactly as on a production host, and nothing changes for
  anyone else.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NAGIOS = "nagios4"
USER = "nagios"
HOST = "spk-nagios-host"
BIN = Path(sys.executable).parent
SHIPPED_COMMANDS = Path(__file__).resolve().parents[2] / "packaging" / "nagios" / "sensu-plugins-kvm.cfg"
# The service perfdata file: one line per check result, these fields, tab-separated.
PERFDATA_TEMPLATE = ("TIMET::$LASTSERVICECHECK$\\tSERVICEDESC::$SERVICEDESC$\\tSERVICESTATEID::$SERVICESTATEID$"
                     "\\tSERVICEPERFDATA::$SERVICEPERFDATA$")
PERFDATA_FIELDS = ("TIMET", "SERVICEDESC", "SERVICESTATEID", "SERVICEPERFDATA")
LIBVIRT_RO_SOCKET = Path("/run/libvirt/libvirt-sock-ro")
SYSTEM_URI = "qemu:///system"


# --- what user nagios needs ----------------------------------------------------------------------


@contextlib.contextmanager
def traversable(paths: Sequence[str | os.PathLike[str]] = ()) -> Iterator[list[Path]]:
    """Let other users reach the venv's commands, their interpreter and ``paths``.

    Adds o+x to every directory on the way that lacks it and restores each mode afterwards, only
    where nobody changed it meanwhile. Yields the directories changed.
    """
    interpreter = Path(os.path.realpath(sys.executable))
    folders = {BIN, *BIN.parents, *interpreter.parents, *Path(sys.base_prefix).parents,
               *Path(os.path.realpath(BIN)).parents}
    for path in paths:
        folders.update(Path(os.path.realpath(path)).parents)
    changed: list[tuple[Path, int]] = []
    try:
        for folder in sorted(folders):
            mode = stat.S_IMODE(folder.stat().st_mode)
            if not mode & stat.S_IXOTH:
                folder.chmod(mode | stat.S_IXOTH)
                changed.append((folder, mode))
        yield [folder for folder, _ in changed]
    finally:
        for folder, mode in reversed(changed):
            with contextlib.suppress(OSError):
                if stat.S_IMODE(folder.stat().st_mode) == mode | stat.S_IXOTH:
                    folder.chmod(mode)


def owned_dir(parent: str | os.PathLike[str], name: str, user: str = USER) -> Path:
    """A directory ``parent/name`` owned by ``user`` (mode 0755), e.g. a check's --state-dir."""
    entry = pwd.getpwnam(user)
    path = Path(parent, name)
    path.mkdir(mode=0o755, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def can_connect_read_only(user: str = USER, uri: str = SYSTEM_URI) -> bool:
    """Whether ``user`` can open a read-only libvirt connection to ``uri`` (asks virsh)."""
    result = subprocess.run(["runuser", "-u", user, "--", "virsh", "-r", "-c", uri, "uri"],
                            capture_output=True, text=True, timeout=60, env=_clean_env(Path("/")))
    return result.returncode == 0


class SocketRelay:
    """Accept connections on a unix socket and pipe each to ``target`` (run by root, in threads)."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path = path
        self.target = target
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        path.chmod(0o777)
        self._server.listen(64)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, name="libvirt-ro-relay", daemon=True)
        self._thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping:
                sock.close()
                return False
            self._open.add(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.target))
            except OSError:
                client.close()
                upstream.close()
                continue
            if not (self._track(client) and self._track(upstream)):
                client.close()
                upstream.close()
                return
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            for sock in (src, dst):
                if sock in self._open:
                    self._open.discard(sock)
                    sock.close()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            sockets = list(self._open)
            self._open.clear()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


# --- configuration -------------------------------------------------------------------------------


def _clean_env(home: Path) -> dict[str, str]:
    """Nagios passes its environment on to the checks: keep it small and predictable."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(home)}


def command_line(argv: Sequence[str | os.PathLike[str]]) -> str:
    """A Nagios command_line for ``argv``; a bare command name means the venv's installed command."""
    first, *rest = (str(a) for a in argv)
    if "/" not in first:
        first = str(BIN / first)
    text = shlex.join([first, *rest])
    # '$' starts a macro and ';' a comment in object definitions.
    return text.replace("$", "$$").replace(";", "\\;")


def _define(kind: str, fields: Mapping[str, object]) -> str:
    lines = [f"define {kind} {{"]
    for key, value in fields.items():
        text = str(value)
        if "\n" in text:
            raise ValueError(f"{kind} {key}: newline in {text!r}")
        lines.append(f"    {key:<24} {text}")
    lines.append("}")
    return "\n".join(lines) + "\n"


Services = Mapping[str, "Sequence[str | os.PathLike[str]] | str"]


def objects_cfg(services: Services, check_interval: int, retry_interval: int, max_check_attempts: int,
                timeout: int) -> str:
    parts = [
        _define("timeperiod", {"timeperiod_name": "always", "alias": "always",
                               **{day: "00:00-24:00" for day in ("sunday", "monday", "tuesday", "wednesday",
                                                                  "thursday", "friday", "saturday")}}),
        _define("command", {"command_name": "spk-host-up", "command_line": "/bin/true"}),
        # Nagios insists on a contact; it never hears anything (notifications are off everywhere).
        _define("command", {"command_name": "spk-notify-nobody", "command_line": "/bin/true"}),
        _define("contact", {
            "contact_name": "spk-nobody", "alias": "nobody", "host_notifications_enabled": 0,
            "service_notifications_enabled": 0, "host_notification_period": "always",
            "service_notification_period": "always", "host_notification_options": "n",
            "service_notification_options": "n", "host_notification_commands": "spk-notify-nobody",
            "service_notification_commands": "spk-notify-nobody",
        }),
        _define("host", {
            "host_name": HOST, "alias": HOST, "address": "127.0.0.1", "check_command": "spk-host-up",
            "check_interval": 60, "retry_interval": 60, "max_check_attempts": 1, "check_period": "always",
            "notification_period": "always", "notification_interval": 0, "notifications_enabled": 0,
            "contacts": "spk-nobody", "active_checks_enabled": 1,
        }),
    ]
    for name, argv in services.items():
        if not name or any(c in name for c in ";\n!$"):
            raise ValueError(f"bad service name {name!r}")
        if isinstance(argv, str):
            check_command = argv
        else:
            check_command = f"spk-{name}"
            parts.append(_define("command", {"command_name": check_command, "command_line": command_line(argv)}))
        parts.append(_define("service", {
            "host_name": HOST, "service_description": name, "check_command": check_command,
            "check_interval": check_interval, "retry_interval": retry_interval,
            "max_check_attempts": max_check_attempts, "check_period": "always", "active_checks_enabled": 1,
            "passive_checks_enabled": 0, "check_freshness": 0, "notification_period": "always",
            "notification_interval": 0, "notifications_enabled": 0, "contacts": "spk-nobody",
            "event_handler_enabled": 0,
            "flap_detection_enabled": 0, "process_perf_data": 1,
        }))
    return "\n".join(parts)


def main_cfg(root: Path, timeout: int, cfg_files: Sequence[Path] = ()) -> str:
    settings: dict[str, object] = {
        "log_file": root / "nagios.log",
        "resource_file": root / "resource.cfg",
        "cfg_file": root / "objects.cfg",
        "object_cache_file": root / "objects.cache",
        "precached_object_file": root / "objects.precache",
        "status_file": root / "status.dat",
        "status_update_interval": 1,
        "state_retention_file": root / "retention.dat",
        "retain_state_information": 0,
        "use_retained_program_state": 0,
        "use_retained_scheduling_info": 0,
        "lock_file": root / "nagios.pid",
        "temp_file": root / "nagios.tmp",
        "temp_path": root / "tmp",
        "check_result_path": root / "checkresults",
        "check_result_reaper_frequency": 1,
        "max_check_result_reaper_time": 5,
        "command_file": root / "rw" / "nagios.cmd",
        "check_external_commands": 0,
        "query_socket": root / "rw" / "nagios.qh",
        "debug_file": root / "debug.log",
        "debug_level": 0,
        "nagios_user": USER,
        "nagios_group": USER,
        "interval_length": 1,
        "service_inter_check_delay_method": "n",
        "host_inter_check_delay_method": "n",
        "max_service_check_spread": 1,
        "max_host_check_spread": 1,
        "service_interleave_factor": 1,
        "max_concurrent_checks": 0,
        "service_check_timeout": timeout,
        "host_check_timeout": timeout,
        "service_check_timeout_state": "u",
        "enable_notifications": 0,
        "enable_event_handlers": 0,
        "enable_flap_detection": 0,
        "process_performance_data": 1,
        "service_perfdata_file": root / "service-perfdata",
        "service_perfdata_file_template": PERFDATA_TEMPLATE,
        "service_perfdata_file_mode": "a",
        "service_perfdata_file_processing_interval": 0,
        "check_service_freshness": 0,
        "check_host_freshness": 0,
        "enable_predictive_host_dependency_checks": 0,
        "enable_predictive_service_dependency_checks": 0,
        "cached_host_check_horizon": 0,
        "cached_service_check_horizon": 0,
        "auto_reschedule_checks": 0,
        "enable_environment_macros": 0,
        "use_syslog": 0,
        "log_notifications": 0,
        "log_passive_checks": 0,
        "log_initial_states": 1,
        "log_rotation_method": "n",
        "check_for_updates": 0,
        "bare_update_check": 1,
        "daemon_dumps_core": 0,
        "illegal_macro_output_chars": "`~$&|'\"<>",
    }
    lines = [f"{key}={value}\n" for key, value in settings.items()]
    return "".join(lines + [f"cfg_file={path}\n" for path in cfg_files])


@dataclass(frozen=True)
class PerfdataRecord:
    """One line of the service perfdata file."""

    time: int
    state: int
    perfdata: str


def tagged_lines(text: str, fields: Sequence[str], what: str) -> list[dict[str, str]]:
    """The ``KEY::value`` fields of each tab-separated line of a perfdata file, the form of both
    nagios4's service perfdata file and Icinga 2's PerfdataWriter; every line must hold ``fields``."""
    found = []
    for line in text.splitlines():
        values = dict(part.split("::", 1) for part in line.split("\t") if "::" in part)
        if set(fields) - set(values):
            raise ValueError(f"a {what} line without its fields (a tab in the perfdata?): {line!r}")
        found.append(values)
    return found


def parse_perfdata_file(text: str) -> list[tuple[str, PerfdataRecord]]:
    """(service, record) of each line written with PERFDATA_TEMPLATE."""
    return [(v["SERVICEDESC"], PerfdataRecord(int(v["TIMET"]), int(v["SERVICESTATEID"]), v["SERVICEPERFDATA"]))
            for v in tagged_lines(text, PERFDATA_FIELDS, "service perfdata")]


# --- reading status.dat --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """One service as status.dat has it (``fields`` holds every key Nagios wrote)."""

    current_state: int
    plugin_output: str
    performance_data: str
    last_check: int
    fields: Mapping[str, str] = field(repr=False, default_factory=dict)


def parse_status(text: str) -> list[tuple[str, dict[str, str]]]:
    """The blocks of a status.dat: ``[(kind, {key: value})]`` (``servicestatus``, ``hoststatus``, ...)."""
    blocks: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if current is None:
            if line.endswith("{"):
                current = {}
                blocks.append((line[:-1].strip(), current))
        elif line == "}":
            current = None
        elif "=" in line:
            key, value = raw.lstrip().split("=", 1)
            current[key] = value
    return blocks


def service_statuses(status_file: str | os.PathLike[str]) -> dict[str, ServiceStatus]:
    """Per service description: current_state, plugin_output, performance_data, last_check.

    Empty while Nagios has not written the file yet (it replaces the file by a rename, so a read
    never sees half of it).
    """
    try:
        text = Path(status_file).read_text(errors="replace")
    except FileNotFoundError:
        return {}
    found: dict[str, ServiceStatus] = {}
    for kind, values in parse_status(text):
        if kind != "servicestatus":
            continue
        found[values.get("service_description", "")] = ServiceStatus(
            current_state=int(values.get("current_state", "3")),
            plugin_output=values.get("plugin_output", ""),
            performance_data=values.get("performance_data", ""),
            last_check=int(values.get("last_check", "0")),
            fields=values,
        )
    return found


# --- the instance --------------------------------------------------------------------------------


@dataclass
class Nagios:
    root: Path
    pid: int
    services_defined: tuple[str, ...]

    @property
    def status_file(self) -> Path:
        return self.root / "status.dat"

    @property
    def log_file(self) -> Path:
        return self.root / "nagios.log"

    def services(self) -> dict[str, ServiceStatus]:
        return service_statuses(self.status_file)

    def service(self, name: str) -> ServiceStatus | None:
        return self.services().get(name)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def perfdata(self) -> dict[str, list[PerfdataRecord]]:
        """What Nagios wrote to its service perfdata file so far, per service, oldest first."""
        try:
            text = (self.root / "service-perfdata").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        found: dict[str, list[PerfdataRecord]] = {}
        for service, record in parse_perfdata_file(text):
            found.setdefault(service, []).append(record)
        return found

    def alive(self) -> bool:
        return _alive(self.pid)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Nagios's workers and the checks they run)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(pid: int, timeout: float = 15) -> None:
    """SIGTERM Nagios, wait for it and its workers; SIGKILL whatever of them is left."""
    tree = [pid, *_descendants(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    for p in tree:
        if _alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)


def _read_pid(lock_file: Path) -> int | None:
    try:
        text = lock_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and _alive(int(text)) else None


def validate(cfg: Path, env: Mapping[str, str]) -> str:
    """``nagios4 -v cfg``; raises with Nagios's own words when the configuration is refused."""
    result = subprocess.run([NAGIOS, "-v", str(cfg)], capture_output=True, text=True, timeout=60, env=dict(env))
    if result.returncode != 0:
        raise RuntimeError(f"{NAGIOS} -v {cfg} refused the configuration:\n{result.stdout}{result.stderr}")
    return result.stdout


def check_config(cfg_files: Sequence[Path], objects: str) -> str:
    """``nagios4 -v`` of a configuration made of ``cfg_files`` and ``objects`` (more definitions),
    in a temp dir of its own; Nagios's output. Raises when it is refused."""
    root = Path(tempfile.mkdtemp(prefix="spk-nagios-"))
    try:
        for sub in ("tmp", "checkresults", "rw"):
            (root / sub).mkdir()
        (root / "objects.cfg").write_text(objects)
        (root / "resource.cfg").write_text(f"$USER5$={BIN}\n")
        cfg = root / "nagios.cfg"
        cfg.write_text(main_cfg(root, 30, cfg_files))
        entry = pwd.getpwnam(USER)
        for path in [root, *root.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        root.chmod(0o755)
        with traversable(cfg_files):
            return validate(cfg, _clean_env(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pids_running(cfg: Path) -> list[int]:
    """Nagios processes started with ``cfg`` (the main one and its workers), by /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(cfg).encode() in argv and Path(argv[0].decode(errors="replace")).name == NAGIOS:
                found.append(int(entry.name))
    return found



def read_only_libvirt(argv: list[str], root: Path, stack: contextlib.ExitStack) -> list[str]:
    """``argv`` run so that its checks reach qemu:///system read-only: unless user nagios can
    already connect, through a relay of the read-only socket bind-mounted over it in a private
    mount namespace (see the module's docstring); the relay stops with ``stack``."""
    if not LIBVIRT_RO_SOCKET.is_socket() or can_connect_read_only():
        return argv
    relay = SocketRelay(root / "libvirt-sock-ro", LIBVIRT_RO_SOCKET)
    stack.callback(relay.stop)
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-ec", 'mount --bind "$1" "$2"; shift 2; exec "$@"', "sh",
            str(relay.path), str(LIBVIRT_RO_SOCKET), *argv]

@contextlib.contextmanager
def running(services: Services, check_interval: int = 2, retry_interval: int = 1, max_check_attempts: int = 1,
            timeout: int = 30, extra_paths: Sequence[str | os.PathLike[str]] = (), cfg_files: Sequence[Path] = (),
            resources: Mapping[str, str | os.PathLike[str]] | None = None) -> Iterator[Nagios]:
    """Run a private nagios4 with one service per ``services`` entry (name -> argv, or a
    check_command of ``cfg_files``) on one host. ``resources`` are the $USERn$ macros of its
    resource file (default: $USER5$, the shipped commands' folder, is the venv's bin).

    Intervals are in seconds (``interval_length=1``); with one check attempt a state change is
    recorded (HARD) on the first check that sees it. ``extra_paths`` are files the checks use
    (state dirs, ...): their directories are made traversable too. Nagios is stopped first on the
    way out, then the relay, then the directory modes are restored and the temp dir removed.
    """
    if shutil.which(NAGIOS) is None:
        raise RuntimeError(f"{NAGIOS} not found: run tests/services/setup.sh")
    nagios_user = pwd.getpwnam(USER)
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="spk-nagios-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        for sub in ("tmp", "checkresults", "rw", "home"):
            (root / sub).mkdir()
        (root / "objects.cfg").write_text(objects_cfg(services, check_interval, retry_interval,
                                                      max_check_attempts, timeout))
        cfg = root / "nagios.cfg"
        cfg.write_text(main_cfg(root, timeout, cfg_files))
        macros = {"USER5": BIN} if resources is None else resources
        (root / "resource.cfg").write_text("".join(f"${name}$={value}\n" for name, value in macros.items()))
        for path in [root, *root.rglob("*")]:
            os.chown(path, nagios_user.pw_uid, nagios_user.pw_gid)
        root.chmod(0o755)
        env = _clean_env(root / "home")
        stack.enter_context(traversable([*extra_paths, *cfg_files]))
        validate(cfg, env)
        argv = read_only_libvirt([NAGIOS, "-d", str(cfg)], root, stack)

        def stop_all() -> None:
            for pid in _pids_running(cfg):
                _stop(pid)

        stack.callback(stop_all)  # also whatever started when the pid never showed up
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}: {result.stdout}{result.stderr}")
        deadline = time.monotonic() + 15
        while (pid := _read_pid(root / "nagios.pid")) is None:
            if time.monotonic() >= deadline:
                log = (root / "nagios.log").read_text(errors="replace") if (root / "nagios.log").exists() else ""
                raise RuntimeError(f"{NAGIOS} wrote no pid to {root / 'nagios.pid'}; log:\n{log}")
            time.sleep(0.05)
        stack.callback(_stop, pid)
        yield Nagios(root=root, pid=pid, services_defined=tuple(services))
