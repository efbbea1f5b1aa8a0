"""Benchmark (not a test): kvm-backup's full and incremental backups through libvirt's backup API
against the floors and Debian 12's virtnbdbackup, all in one run, interleaved (issue 17).

One tiny Linux guest (tests/rig, idle, 128 MiB, TCG) spk-bn-chain on qemu:///system, its vda an
8 GiB virtual qcow2 holding 1 GiB of data written before boot with qemu-io (bench_backup.py's data:
512 MiB random, 512 MiB of text, in 64 MiB runs every 512 MiB). Before each incremental, 64 MiB are
written into the running guest's disk through QEMU (HMP ``qemu-io -d vda "write -s FILE ..."``:
32 MiB of new random data over a random run, 32 MiB of new text over a text run; the image keeps
1 GiB of data). A "remote" sshd on loopback (own host key, generated client key). Each round:

(a) the floor: ``cp --sparse=always IMAGE X`` then ``zstd -1 -T0 X`` (nothing sent);
(b) the transport floor: ``zstd -1 -T0 < IMAGE | ssh localhost 'cat > X'``;
(c) ``kvm-backup create --engine api --level full`` to a local folder, 64 MiB written, ``--level
    inc``; then the same to ``--dest root@127.0.0.1:DIR`` (--rsh: the loopback sshd);
(d) ``virtnbdbackup -l full`` into a folder of its own, 64 MiB written, ``-l inc`` into the same
    folder; then the same with ``-z`` (lz4).

kvm-backup keeps only the checkpoints of its newest chain and virtnbdbackup refuses to run beside
a checkpoint it did not make, so the chains follow one another within a round and the bench
deletes the domain's checkpoints (untimed) before each virtnbdbackup chain and after it. Every
figure is a whole process (spawn to exit); the table gives medians over --rounds rounds and each
ratio is the median of the ratios within a round (the noise of a shared machine moves whole rounds).
Targets: full local <= 1.5x (a); full remote <= 1.3x (b); an inc of 64 MiB at least 10x faster
than a full; faster than virtnbdbackup (both forms) for full and inc. Reported, not asserted: exit
0 with PASS or MISS per target; 1 (one line) when something failed to run. Run as root on the rig,
under the hypervisor lock of a shared host:
    flock /tmp/spk-hv.lock .venv/bin/python bench/bench_backup_chain.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from tests.rig import rig

TOP = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KVM_BACKUP = str(BIN / "kvm-backup")
GIB = 1 << 30
MIB = 1 << 20
NAME = "spk-bn-chain"
PREFIX = "spk-bn-"
IMAGE_ROOT = "/var/lib/libvirt/images/spk-bn"
PORTS = range(22100, 22200)
RUN_TIMEOUT = 900  # seconds, any one command
VNB_PACKAGE = "virtnbdbackup"
WRITE = 64 * MIB

FLOOR = "(a) floor cp --sparse=always + zstd -1 -T0"
TRANSPORT = "(b) transport floor zstd -1 -T0 | ssh cat"
KVM_FULL_LOCAL = "(c) kvm-backup --level full, local"
KVM_INC_LOCAL = "(c) kvm-backup --level inc, local"
KVM_FULL_REMOTE = "(c) kvm-backup --level full, remote"
KVM_INC_REMOTE = "(c) kvm-backup --level inc, remote"
VNB_FULL = "(d) virtnbdbackup -l full"
VNB_INC = "(d) virtnbdbackup -l inc"
VNBZ_FULL = "(d) virtnbdbackup -z -l full"
VNBZ_INC = "(d) virtnbdbackup -z -l inc"
ROWS = (FLOOR, TRANSPORT, KVM_FULL_LOCAL, KVM_INC_LOCAL, KVM_FULL_REMOTE, KVM_INC_REMOTE,
        VNB_FULL, VNB_INC, VNBZ_FULL, VNBZ_INC)


class Failed(Exception):
    """Something did not run (one line)."""


class Run(NamedTuple):
    seconds: float
    size: int  # bytes of the archive (or data files) this run made
    level: str  # what the run did: full / inc ('' for the floors)
    why_full: str  # kvm-backup: why an inc came out as a full


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------------------

_children: set[subprocess.Popen[bytes]] = set()


def run(argv: list[str] | str, what: str, shell: bool = False) -> tuple[float, str]:
    """Run one whole process (its own process group, stdin closed), timed from spawn to exit; its
    stdout. A non-zero exit raises Failed naming ``what`` and the last line of stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, shell=shell, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    _children.add(proc)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise Failed(f"{what}: no answer after {RUN_TIMEOUT} s") from None
    finally:
        if proc.returncode is None:  # interrupted: the whole group goes
            stop(proc)
        _children.discard(proc)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["(nothing on stderr)"]
        raise Failed(f"{what}: exit {proc.returncode}: {lines[-1]}")
    return seconds, out.decode(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (kvm-backup undoes its run on it), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def on_sigterm(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


# --- the guest and its disk --------------------------------------------------------------------------

TEXT_LINE = b"log line %08d: the quick brown fox jumps over the lazy dog\n"


def text_mib(first: int) -> bytes:
    """1 MiB of log lines numbered from ``first`` (compresses ~50x with zstd -1, as in bench_backup)."""
    return b"".join(TEXT_LINE % i for i in range(first, first + MIB // 60 + 1))[:MIB]


def fill_image(image: Path, folder: Path) -> None:
    """1 GiB into the (empty, 8 GiB) qcow2 before boot, bench_backup.py's layout: 16 runs of 64 MiB,
    one every 512 MiB, random and text in turn; each run from a source file with qemu-io."""
    source = folder / "fill.src"
    text = text_mib(0)
    for n in range(16):
        with source.open("wb") as f:
            for _ in range(64):
                f.write(os.urandom(MIB) if n % 2 == 0 else text)
        run(["qemu-io", "-f", "qcow2", "-c", f"write -q -s {source} {n * 512 * MIB} {64 * MIB}", str(image)],
            "qemu-io (filling the image)")
    source.unlink()


class Writer:
    """64 MiB of new data into the running guest's vda through QEMU (the dirty bitmaps see it):
    32 MiB of random data over the start of the random run at 0, 32 MiB of text over the start of
    the text run at 512 MiB; so the disk holds 512 MiB random and 512 MiB text throughout."""

    def __init__(self, dom: libvirt.virDomain, folder: Path) -> None:
        self.dom = dom
        self.source = folder / "write.src"
        self.count = 0
        blocks = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": "query-block"}), 0))
        self.qdev = next(b["qdev"] for b in blocks["return"] if b.get("qdev"))

    def hmp(self, command: str) -> None:
        out = str(libvirt_qemu.qemuMonitorCommand(self.dom, command,
                                                  libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)).strip()
        if out:
            raise Failed(f"HMP {command!r}: {out.splitlines()[-1]}")

    def write(self) -> None:
        self.count += 1
        half = WRITE // 2
        with self.source.open("wb") as f:
            f.write(os.urandom(half))
        self.source.chmod(0o644)  # QEMU (libvirt-qemu) reads it
        self.hmp(f'qemu-io -d {self.qdev} "write -q -s {self.source} 0 {half}"')
        first = self.count * 1_000_000
        with self.source.open("wb") as f:
            for i in range(half // MIB):
                f.write(text_mib(first + i * 20_000))
        self.hmp(f'qemu-io -d {self.qdev} "write -q -s {self.source} {512 * MIB} {half}"')
        self.hmp(f'qemu-io -d {self.qdev} "flush"')
        self.source.unlink()


def delete_checkpoints(dom: libvirt.virDomain) -> None:
    """Every checkpoint of the domain (the bench's own domain), leaves first: bitmaps and metadata."""
    while True:
        leaves = dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_LEAVES)
        if not leaves:
            return
        for cp in leaves:
            cp.delete(0)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise Failed(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


# --- the runs of a round -----------------------------------------------------------------------------


def folder_bytes(folder: Path, pattern: str = "*", before: frozenset[str] = frozenset()) -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file() and str(p) not in before)


def files_of(folder: Path) -> frozenset[str]:
    return frozenset(str(p) for p in folder.rglob("*"))


class Bench:
    def __init__(self, work: Path, image: Path, rsh: str, remote: Path) -> None:
        self.work, self.image, self.rsh, self.remote = work, image, rsh, remote
        self.state = work / "state"  # journals, chain records (and a remote run's staging, while it has one)
        self.vnb_run = work / "vnb-run"  # socket and scratch of virtnbdbackup: QEMU creates them
        self.vnb_run.mkdir(mode=0o1777)
        self.vnb_run.chmod(0o1777)

    def floor(self) -> Run:
        folder = self.work / "floor"
        folder.mkdir()
        try:
            copy = folder / self.image.name
            t1, _ = run(["cp", "--sparse=always", str(self.image), str(copy)], "cp --sparse=always")
            t2, _ = run(["zstd", "-q", "-1", "-T0", str(copy), "-o", f"{copy}.zst"], "zstd -1 -T0")
            return Run(t1 + t2, Path(f"{copy}.zst").stat().st_size, "", "")
        finally:
            shutil.rmtree(folder)

    def transport(self) -> Run:
        target = self.remote / "transport.zst"
        t, _ = run(f"zstd -q -1 -T0 -c < {shlex.quote(str(self.image))} | {self.rsh} root@127.0.0.1 "
                   f"{shlex.quote('cat > ' + shlex.quote(str(target)))}", "zstd | ssh cat", shell=True)
        size = target.stat().st_size
        target.unlink()
        return Run(t, size, "", "")

    def kvm_backup(self, level: str, dest: str, seen: Path, remote: bool) -> Run:
        argv = [KVM_BACKUP, "create", NAME, "--engine", "api", "--level", level, "--dest", dest,
                "--state-dir", str(self.state), "-u", rig.URI, "--json"]
        if remote:
            argv += ["--rsh", self.rsh]
        before = files_of(seen)
        t, out = run(argv, f"kvm-backup create --level {level} --dest {dest}")
        try:
            (result,) = json.loads(out)["backups"]
        except (ValueError, KeyError, TypeError) as err:
            raise Failed(f"kvm-backup create --level {level}: no JSON summary of one backup ({err})") from err
        if not result.get("ok", True):
            raise Failed(f"kvm-backup create --level {level}: not ok: {result}")
        data = sum(int(d.get("data") or 0) for d in (result.get("disks") or {}).values())
        if result.get("level") == "inc" and data < WRITE:  # HMP qemu-io says nothing when a write fails
            raise Failed(f"kvm-backup create --level inc read {data} bytes: the 64 MiB written did not reach vda")
        published = folder_bytes(seen, before=before)
        if not published:
            raise Failed(f"kvm-backup create --level {level}: nothing was published in {seen}")
        return Run(t, int(result.get("size") or published), str(result.get("level", "?")),
                   str(result.get("why_full") or ""))

    def vnb(self, level: str, out: Path, compress: bool) -> Run:
        argv = ["virtnbdbackup", "-U", rig.URI, "-d", NAME, "-l", level, "-o", str(out), "-n",
                "-S", str(self.vnb_run), "-f", str(self.vnb_run / f"nbd-{level}.sock")]
        if compress:
            argv.append("-z")
        before = files_of(out) if out.exists() else frozenset()
        t, _ = run(argv, f"virtnbdbackup -l {level}{' -z' if compress else ''}")
        size = folder_bytes(out, "*.data", before)
        if not size:
            raise Failed(f"virtnbdbackup -l {level}: no data file in {out}")
        return Run(t, size, level, "")


def one_round(n: int, bench: Bench, dom: libvirt.virDomain, writer: Writer) -> dict[str, Run]:
    rows: dict[str, Run] = {}

    def record(label: str, result: Run) -> None:
        rows[label] = result
        extra = f" ({result.level}{': ' + result.why_full if result.why_full else ''})" if result.level else ""
        progress(f"round {n}: {label}: {result.seconds:.2f}s, {result.size / MIB:.1f} MiB{extra}")

    record(FLOOR, bench.floor())
    record(TRANSPORT, bench.transport())
    local = bench.work / f"local-{n}"
    local.mkdir()
    record(KVM_FULL_LOCAL, bench.kvm_backup("full", str(local), local, remote=False))
    writer.write()
    record(KVM_INC_LOCAL, bench.kvm_backup("inc", str(local), local, remote=False))
    remote = bench.remote / f"chain-{n}"
    remote.mkdir()
    dest = f"root@127.0.0.1:{remote}"
    record(KVM_FULL_REMOTE, bench.kvm_backup("full", dest, remote, remote=True))
    writer.write()
    record(KVM_INC_REMOTE, bench.kvm_backup("inc", dest, remote, remote=True))
    for compress, full_label, inc_label in ((False, VNB_FULL, VNB_INC), (True, VNBZ_FULL, VNBZ_INC)):
        delete_checkpoints(dom)  # virtnbdbackup refuses a checkpoint it did not make
        out = bench.work / f"vnb{'z' if compress else ''}-{n}"
        record(full_label, bench.vnb("full", out, compress))
        writer.write()
        record(inc_label, bench.vnb("inc", out, compress))
        shutil.rmtree(out)
    delete_checkpoints(dom)
    shutil.rmtree(local)
    shutil.rmtree(remote)
    return rows


# --- the report --------------------------------------------------------------------------------------


def report(rounds: list[dict[str, Run]]) -> list[str]:
    """The table, the sizes side by side and the targets (lines to print)."""

    def times(label: str) -> list[float]:
        return [r[label].seconds for r in rounds]

    def med(label: str) -> float:
        return statistics.median(times(label))

    def paired(a: str, b: str) -> float:
        """median over rounds of time(a) / time(b)"""
        return statistics.median(r[a].seconds / r[b].seconds for r in rounds)

    def size(label: str) -> float:
        return statistics.median(r[label].size for r in rounds) / MIB

    def incs(label: str) -> str:
        done = sum(r[label].level == "inc" for r in rounds)
        return f"{done}/{len(rounds)} inc" if label in (KVM_INC_LOCAL, KVM_INC_REMOTE, VNB_INC, VNBZ_INC) \
            else ""

    lines = [f"{len(rounds)} rounds; medians (min); 'vs (a)', 'vs (b)': the median of the ratios within each round",
             f"{'run':<44}{'time (min)':>16}{'archive':>12}{'vs (a)':>9}{'vs (b)':>9}  level"]
    for label in ROWS:
        cell = f"{med(label):.2f}s ({min(times(label)):.2f}s)"
        lines.append(f"{label:<44}{cell:>16}{size(label):>8.0f} MiB"
                     f"{paired(label, FLOOR):>8.2f}x{paired(label, TRANSPORT):>8.2f}x  {incs(label)}")
    lines.append("")
    lines.append("archive sizes (median)          kvm-backup local  kvm-backup remote  virtnbdbackup  virtnbdbackup -z")
    lines.append(f"{'full':<32}{size(KVM_FULL_LOCAL):>12.0f} MiB{size(KVM_FULL_REMOTE):>15.0f} MiB"
                 f"{size(VNB_FULL):>11.0f} MiB{size(VNBZ_FULL):>14.0f} MiB")
    lines.append(f"{'inc after 64 MiB written':<32}{size(KVM_INC_LOCAL):>12.1f} MiB{size(KVM_INC_REMOTE):>15.1f} MiB"
                 f"{size(VNB_INC):>11.1f} MiB{size(VNBZ_INC):>14.1f} MiB")
    lines.append(f"(floor (a) {size(FLOOR):.0f} MiB, transport floor (b) {size(TRANSPORT):.0f} MiB)")
    for label in (KVM_INC_LOCAL, KVM_INC_REMOTE):
        fulls = [r[label].why_full for r in rounds if r[label].level != "inc"]
        for text in sorted(set(re.sub(r"\S+\.kvmbak\S*", "ARCHIVE", t) or "(no reason given)" for t in fulls)):
            lines.append(f"note: {label}: {len(fulls)} of {len(rounds)} runs did a full: {text}")
    lines.append("")

    def target(text: str, figure: str, met: bool) -> None:
        lines.append(f"target: {text}: {figure} -> {'PASS' if met else 'MISS'}")

    r = paired(KVM_FULL_LOCAL, FLOOR)
    target("full local <= 1.5x (a)", f"{r:.2f}x", r <= 1.5)
    r = paired(KVM_FULL_REMOTE, TRANSPORT)
    target("full remote <= 1.3x (b)", f"{r:.2f}x", r <= 1.3)
    for full, inc, where in ((KVM_FULL_LOCAL, KVM_INC_LOCAL, "local"), (KVM_FULL_REMOTE, KVM_INC_REMOTE, "remote")):
        r = paired(full, inc)
        all_inc = all(x[inc].level == "inc" for x in rounds)
        target(f"inc of 64 MiB >= 10x faster than a full, {where}",
               f"{r:.1f}x" + ("" if all_inc else " (not every run was an inc)"), r >= 10 and all_inc)
    for ours, vnb, vnbz, what in ((KVM_FULL_LOCAL, VNB_FULL, VNBZ_FULL, "full"),
                                  (KVM_INC_LOCAL, VNB_INC, VNBZ_INC, "inc")):
        r1, r2 = paired(vnb, ours), paired(vnbz, ours)
        target(f"{what} faster than virtnbdbackup (local)",
               f"virtnbdbackup {r1:.2f}x, -z {r2:.2f}x the time of kvm-backup", r1 > 1 and r2 > 1)
    return lines


# --- main --------------------------------------------------------------------------------------------


def install_vnb() -> None:
    if shutil.which("virtnbdbackup") is None:
        progress(f"installing {VNB_PACKAGE} (packaging/install-debs.sh)")
    done = subprocess.run(["bash", str(TOP / "packaging" / "install-debs.sh"), VNB_PACKAGE], check=False)
    if done.returncode != 0 or shutil.which("virtnbdbackup") is None:
        raise Failed(f"cannot install {VNB_PACKAGE} with packaging/install-debs.sh")


@contextlib.contextmanager
def guest(conn: libvirt.virConnect, folder: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    """The domain on its filled 8 GiB image, booted; removed afterwards with its checkpoints and any
    backup job a killed run left."""
    kernel, initrd = rig.ensure_guest()
    image = rig.make_qcow2(folder / f"{NAME}.qcow2", "8G")
    progress("writing 1 GiB into the image (qemu-io)")
    fill_image(image, folder)
    serial = folder / "serial.log"
    dom = conn.defineXML(rig.linux_guest_xml(NAME, image, kernel, initrd, "idle", serial))
    try:
        dom.create()
        rig.wait_serial(serial, timeout=180)
        yield dom, image
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive() and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                dom.abortJob()
        with contextlib.suppress(libvirt.libvirtError):
            delete_checkpoints(dom)
        rig.cleanup(conn, PREFIX)
        uuid = dom.UUIDString().replace("-", "")[:8]
        shutil.rmtree(f"/run/kvm-backup/nbd-{uuid}", ignore_errors=True)  # a killed kvm-backup's socket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, on_sigterm)
    if os.geteuid() != 0:
        print("bench_backup_chain: run as root (libvirt's qemu:///system, sshd, images)", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        install_vnb()
        rig.ensure_host()
        with contextlib.ExitStack() as stack:
            conn = rig.connect()
            stack.callback(conn.close)
            rig.cleanup(conn, PREFIX)  # a killed earlier run's domain
            work = stack.enter_context(rig.image_dir(IMAGE_ROOT))
            dom, image = stack.enter_context(guest(conn, work))
            progress(f"image {image}: 8 GiB virtual, {image.stat().st_blocks * 512 / GIB:.2f} GiB allocated")
            sshd, rsh = rig.start_sshd(work / "ssh", port=free_port())
            stack.callback(sshd.wait)
            stack.callback(sshd.terminate)
            if sshd.poll() is not None:
                raise Failed("the loopback sshd did not start")
            remote = work / "remote"
            remote.mkdir()
            bench = Bench(work, image, rsh, remote)
            writer = Writer(dom, work)
            rounds = [one_round(n, bench, dom, writer) for n in range(1, args.rounds + 1)]
    except KeyboardInterrupt:
        print("bench_backup_chain: interrupted (cleaned up)", file=sys.stderr)
        return 130
    except (Failed, libvirt.libvirtError, subprocess.CalledProcessError, TimeoutError, OSError) as err:
        print(f"bench_backup_chain: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    progress(f"{args.rounds} rounds in {time.monotonic() - started:.0f} s")
    print("\n".join(report(rounds)))
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v._asdict() for k, v in r.items()} for r in rounds], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
