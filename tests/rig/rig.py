"""Helpers for tests against a real libvirtd + QEMU (qemu:///system).

Host preparation lives in ``host-setup.sh`` (packages, daemons, qemu.conf) and the
tiny Linux guest in ``build-guest.sh``; this module wraps both and builds domain XML.

Every test domain's name starts with :data:`PREFIX` so that :func:`cleanup` can find
and remove leftovers of earlier (crashed) runs.

Facts behind the defaults are in ``../shared/notes/rig-facts.md``: TCG (``type='qemu'``)
only, 128 MiB per guest, ``destroy`` takes ~1.7 s, the first connection ~8 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from xml.sax.saxutils import escape, quoteattr

import libvirt

PREFIX = "spk-test-"
URI = "qemu:///system"
RIG_DIR = Path(__file__).resolve().parent
HOST_SETUP = RIG_DIR / "host-setup.sh"
BUILD_GUEST = RIG_DIR / "build-guest.sh"
DEFAULT_GUEST_DIR = "/var/cache/sensu-plugins-kvm-rig/guest"
DEFAULT_IMAGE_ROOT = "/var/lib/libvirt/images/spk-test"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
READY_MARKER = "SPK-READY"
MODES = ("write", "cpu", "idle", "agent", "agentfs", "net")

T = TypeVar("T")

_ERROR_HANDLER_SET = False


def _silence_libvirt() -> None:
    """Stop libvirt from printing every error on stderr (we get them as exceptions)."""
    global _ERROR_HANDLER_SET
    if not _ERROR_HANDLER_SET:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _ERROR_HANDLER_SET = True


def connect(uri: str = URI) -> libvirt.virConnect:
    """A read-write connection (the tests create and destroy domains)."""
    _silence_libvirt()
    conn = libvirt.open(uri)
    if conn is None:  # old bindings returned None instead of raising
        raise RuntimeError(f"cannot connect to {uri}")
    return conn


def ensure_host(timeout: float = 900) -> None:
    """Run host-setup.sh: packages, virtlogd/libvirtd, qemu.conf namespaces."""
    subprocess.run(["bash", str(HOST_SETUP)], check=True, timeout=timeout)


# --- the tiny Linux guest ----------------------------------------------------------------------


def guest_build_dir() -> Path:
    """Where build-guest.sh caches vmlinuz and initrd.gz (env SPK_RIG_DIR overrides)."""
    return Path(os.environ.get("SPK_RIG_DIR") or DEFAULT_GUEST_DIR)


def ensure_guest(timeout: float = 600) -> tuple[Path, Path]:
    """Build (or reuse the cached) guest; return the paths of (kernel, initrd)."""
    out = guest_build_dir()
    subprocess.run(["bash", str(BUILD_GUEST), str(out)], check=True, timeout=timeout)
    kernel, initrd = out / "vmlinuz", out / "initrd.gz"
    for path in (kernel, initrd):
        if not path.is_file():
            raise RuntimeError(f"build-guest.sh did not produce {path}")
    return kernel, initrd


# --- images and file systems -------------------------------------------------------------------


@contextlib.contextmanager
def image_dir(root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh directory for disk images and serial logs that QEMU (libvirt-qemu) can reach.

    libvirt's DAC driver chowns the disk, kernel, initrd and log files themselves, but not
    their parent directories, so every directory on the way must be searchable by others
    (a plain ``mkdtemp`` is 0700). Removed afterwards with everything in it, and so is the
    directory above it once no other run uses it.
    """
    base = Path(root or os.environ.get("SPK_RIG_IMAGES") or DEFAULT_IMAGE_ROOT)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another run still has its images there
            base.rmdir()


def make_qcow2(path: str | os.PathLike[str], size: str = "64M") -> Path:
    """Create an empty qcow2 image with ``qemu-img create -f qcow2``."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), size],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(path)


def _mount_tmpfs(path: Path, size_mib: int) -> bool:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "spk-test-tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def _mount_loop_ext4(path: Path, size_mib: int, image: Path) -> None:
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    # -m 0: no blocks reserved for root (QEMU runs as libvirt-qemu).
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True, capture_output=True)
    path.chmod(0o755)


@contextlib.contextmanager
def small_fs(path: str | os.PathLike[str], size_mib: int) -> Iterator[Path]:
    """Mount a tiny file system of ``size_mib`` MiB at ``path`` (created if missing).

    A tmpfs where it can be mounted, else a loop-mounted ext4 image. Unmounted (lazily if
    busy) and the image removed afterwards. Put a qcow2 larger than the file system on it
    and let the guest write to fill it up.
    """
    mnt = Path(path)
    mnt.mkdir(parents=True, exist_ok=True)
    image: Path | None = None
    if not _mount_tmpfs(mnt, size_mib):
        fd, name = tempfile.mkstemp(prefix="spk-test-fs-", suffix=".ext4")
        os.close(fd)
        image = Path(name)
        try:
            _mount_loop_ext4(mnt, size_mib, image)
        except BaseException:
            image.unlink(missing_ok=True)
            raise
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if image is not None:
            image.unlink(missing_ok=True)


# --- waiting -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.2, what: str = "") -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Raises TimeoutError after ``timeout`` seconds (the predicate is tried at least once,
    and once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate!r}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def serial_text(serial_log: str | os.PathLike[str]) -> str:
    """What the guest printed so far on its serial console ('' if nothing yet)."""
    try:
        return Path(serial_log).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_serial(serial_log: str | os.PathLike[str], marker: str = READY_MARKER, timeout: float = 60) -> str:
    """Wait until ``marker`` shows up in the serial log; return the whole log."""

    def seen() -> str:
        text = serial_text(serial_log)
        return text if marker in text else ""

    return wait_for(seen, timeout, what=f"{marker!r} in {serial_log}")


# --- domain XML ----------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    """Test domains are named spk-*: spk-test-* for the main suites; a suite that must not be
    cleaned up by the others (it runs beside them) uses its own spk-<word>- prefix."""
    if not name.startswith("spk-"):
        raise ValueError(f"test domain names must start with 'spk-' (usually {PREFIX!r}): {name!r}")


def _memballoon() -> str:
    return "<memballoon model='virtio'><stats period='2'/></memballoon>"


def _disk(path: str | os.PathLike[str], disk_format: str, policy: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type={quoteattr(disk_format)}{policy}/>"
            f"<source file={quoteattr(str(path))}/><target dev='vda' bus='virtio'/></disk>")


def _domain_xml(name: str, memory_mib: int, os_boot: str, devices: str) -> str:
    """A TCG domain of one vCPU, with the given boot and devices, a USB-less bus and a balloon."""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{memory_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{os_boot}</os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {devices}
    <controller type='usb' model='none'/>
    {_memballoon()}
  </devices>
</domain>
"""


def noos_domain_xml(name: str, disk_path: str | os.PathLike[str], memory_mib: int = 128) -> str:
    """A guest with no OS: SeaBIOS finds nothing to boot and idles (~0.5 % CPU).

    One vCPU, an (empty) qcow2 disk as virtio vda, a virtio balloon with stats every 2 s
    (a no-OS balloon reports only actual and rss), no network, no graphics.
    """
    _check_name(name)
    return _domain_xml(name, memory_mib, "<boot dev='hd'/>", _disk(disk_path, "qcow2", ""))


def linux_guest_xml(
    name: str,
    disk_path: str | os.PathLike[str],
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    mode: str,
    serial_log: str | os.PathLike[str],
    error_policy: str | None = "stop",
    disk_format: str = "qcow2",
    agent_channel: bool = False,
    memory_mib: int = 128,
    extra_cmdline: str = "",
    tap: str | None = None,
) -> str:
    """The tiny Linux guest from build-guest.sh, booted directly from kernel + initrd.

    ``mode`` is ``write``, ``cpu``, ``idle``, ``agent``, ``agentfs`` or ``net``, or several joined by commas
    (``agent,write``); the guest prints ``SPK-READY`` to ``serial_log`` once its modules
    are loaded and never powers off by itself. ``error_policy`` goes on the disk's
    ``<driver>`` (``stop``, ``report``, ``ignore``, ``enospace``; None leaves it out).
    ``agent_channel`` adds the org.qemu.guest_agent.0 channel (the ``agent`` mode needs it).
    ``tap`` adds a virtio NIC on ``<interface type='ethernet'>`` with that existing tap
    (``managed='no'``: the caller makes it); the ``net`` mode brings it up as eth0 with
    ``spk.net.addr=`` and pings ``spk.net.peer=`` (give both in ``extra_cmdline``).
    """
    _check_name(name)
    for part in mode.split(","):
        if part not in MODES:
            raise ValueError(f"unknown guest mode {part!r} (known: {', '.join(MODES)})")
    cmdline = f"console=ttyS0 spk.mode={mode} loglevel=4 {extra_cmdline}".strip()
    policy = f" error_policy={quoteattr(error_policy)}" if error_policy else ""
    log = quoteattr(str(serial_log))
    channel = f"<channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>" if agent_channel else ""
    os_boot = (f"<kernel>{escape(str(kernel))}</kernel><initrd>{escape(str(initrd))}</initrd>"
               f"<cmdline>{escape(cmdline)}</cmdline>")
    devices = (_disk(disk_path, disk_format, policy)
               + f"<serial type='file'><source path={log}/><target port='0'/></serial>"
               + f"<console type='file'><source path={log}/><target type='serial' port='0'/></console>"
               + channel)
    if tap is not None:
        devices += (f"<interface type='ethernet'><target dev={quoteattr(tap)} managed='no'/>"
                    "<model type='virtio'/><rom enabled='no'/></interface>")
    return _domain_xml(name, memory_mib, os_boot, devices)


def start_sshd(keys: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """An sshd on a free loopback port (or ``port``: a suite given a range of ports), with its own
    host key and a generated client key, as a "remote host" for kvm-backup over ssh: the process
    (terminate it afterwards) and the ``ssh`` command line (kvm-backup --rsh) that reaches it as root."""
    keys.mkdir()
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True)
    (keys / "authorized").write_text((keys / "client.pub").read_text())
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    config = keys / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
                      f"AuthorizedKeysFile {keys / 'authorized'}\nPidFile {keys / 'pid'}\nStrictModes no\n"
                      "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=10, what="sshd")
    rsh = (f"ssh -p {port} -i {keys / 'client'} -o BatchMode=yes -o StrictHostKeyChecking=no "
           "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
    return proc, rsh


# --- cleanup -------------------------------------------------------------------------------------

_GONE = (libvirt.VIR_ERR_NO_DOMAIN,)
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
)


def _ignore_gone(call: Callable[[], object]) -> None:
    try:
        call()
    except libvirt.libvirtError as e:
        if e.get_error_code() in _GONE:
            return
        # destroying a domain that just stopped by itself
        if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in str(e):
            return
        raise


def _undefine(dom: libvirt.virDomain) -> None:
    try:
        dom.undefineFlags(_UNDEFINE_FLAGS)
    except libvirt.libvirtError as e:
        if e.get_error_code() in _GONE:
            return
        if e.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            _ignore_gone(dom.undefine)
            return
        if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "transient" in str(e):
            return
        raise


@contextlib.contextmanager
def own_domains(prefix: str = PREFIX) -> Iterator[libvirt.virConnect]:
    """A read-write connection for a suite whose domains are named ``prefix``*: the host is set
    up first, and those domains are removed before (an earlier run may have been killed) and
    after, even when a test fails."""
    ensure_host()
    conn = connect()
    cleanup(conn, prefix)
    try:
        yield conn
    finally:
        cleanup(conn, prefix)
        conn.close()


@contextlib.contextmanager
def images_of(conn: libvirt.virConnect, prefix: str = PREFIX) -> Iterator[Path]:
    """An image directory (see image_dir) whose domains are removed before the images go."""
    with image_dir() as path:
        try:
            yield path
        finally:
            cleanup(conn, prefix)


def cleanup(conn: libvirt.virConnect, prefix: str = PREFIX) -> list[str]:
    """Destroy and undefine every domain whose name starts with ``prefix``.

    Tolerates domains that vanish meanwhile (transient ones disappear on destroy).
    Returns the names handled. Snapshot and checkpoint metadata, managed save images and
    NVRAM go with the definition; disk images are the caller's to remove.
    """
    if not prefix:
        raise ValueError("refusing to clean up every domain: empty prefix")
    names: list[str] = []
    for dom in conn.listAllDomains(0):
        try:
            name = dom.name()
        except libvirt.libvirtError:
            continue
        if not name.startswith(prefix):
            continue
        names.append(name)
        try:
            active = dom.isActive()
        except libvirt.libvirtError as e:
            if e.get_error_code() in _GONE:
                continue
            raise
        if active:
            _ignore_gone(dom.destroy)
        try:
            persistent = dom.isPersistent()
        except libvirt.libvirtError as e:
            if e.get_error_code() in _GONE:
                continue
            raise
        if persistent:
            _undefine(dom)
    return names
