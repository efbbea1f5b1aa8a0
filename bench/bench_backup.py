"""Benchmark (not a test): kvm-backup against the classic backup pipeline and the floor, in one run.

An 8 GiB qcow2 virtual disk holding 1 GiB of written data (half random, half compressible text), on
a no-OS domain spk-bak-bench; a "remote" sshd on loopback (own host key, generated client key):

(a) classic: cp of the image, tar jcf of it and the XML, rsync -vaz to the remote;
(b) floor: cp --sparse=always of the image, then zstd -1 -T0 of the copy (nothing sent);
(c) kvm-backup create --mode stop and --mode live to the same remote;
(d) for reference: the transport floor, `zstd -1 -T0 < image | ssh remote 'cat > file'` (what any
    tool that sends the archive over ssh must at least do: no checksum, no tar, no verification),
    and kvm-backup create --mode live to a local folder.

(a) runs once (it takes minutes); (b), (c) and (d) run interleaved for --rounds rounds, and each
figure is the median, each ratio the median of the ratios within a round (the page-cache and CPU
noise of a shared machine moves whole rounds). Targets: (c) at least 10x faster than (a), at most
1.3x (b). Run as root on the rig:
    .venv/bin/python bench/bench_backup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.rig import rig

BIN = Path(sys.executable).parent
GIB = 1 << 30
MIB = 1 << 20
NAME = "spk-bak-bench"


def timed(argv: list[str] | str, **kw: object) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.monotonic() - start


def make_image(folder: Path) -> Path:
    """8 GiB virtual, 1 GiB written: 512 MiB random, 512 MiB of text, in 64 MiB runs across the disk."""
    raw = folder / "bench.raw"
    with raw.open("wb") as f:
        f.truncate(8 * GIB)
        text = b"".join(b"log line %08d: the quick brown fox jumps over the lazy dog\n" % i for i in range(MIB // 60))
        for n in range(16):
            f.seek(n * 512 * MIB)
            for _ in range(64):
                f.write(os.urandom(MIB) if n % 2 == 0 else text[:MIB])
    image = folder / f"{NAME}.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    raw.unlink()
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (b), (c) and (d) (default 5)")
    args = parser.parse_args()
    rig.ensure_host()
    conn = rig.connect()
    rig.cleanup(conn, prefix="spk-bak-")
    base = Path("/var/lib/libvirt/images/spk-bak-bench")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    base.chmod(0o755)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=base))
    sshd = None
    try:
        image = make_image(base)
        print(f"image: {image} virtual 8 GiB, {image.stat().st_blocks * 512 / GIB:.2f} GiB allocated", flush=True)
        dom = conn.defineXML(rig.noos_domain_xml(NAME, image))
        sshd, rsh = rig.start_sshd(work / "ssh")
        remote = work / "remote"
        remote.mkdir()
        local = work / "local"
        local.mkdir()

        # (a) classic, as the recipe: cp, tar jcf, rsync -vaz (the guest is shut off meanwhile)
        classic = work / "classic"
        classic.mkdir()
        (classic / f"{NAME}.xml").write_text(dom.XMLDesc(0))
        t = timed(["cp", str(image), str(classic / image.name)])
        t += timed(["tar", "jcf", str(classic / f"{NAME}.tar.bz2"), "-C", str(classic), f"{NAME}.xml", image.name])
        t += timed(["rsync", "-vaz", "-e", rsh, str(classic / f"{NAME}.tar.bz2"), f"root@127.0.0.1:{remote}/"])
        classic_row = (t, (classic / f"{NAME}.tar.bz2").stat().st_size)
        print(f"classic: {t:.1f}s", flush=True)
        shutil.rmtree(classic)
        for f in remote.iterdir():
            f.unlink()

        dom.create()
        floor_label = "(b) floor cp --sparse=always + zstd -1 -T0"
        rows: dict[str, list[tuple[float, int]]] = {}
        for n in range(1, args.rounds + 1):
            for label, run in pipelines(image, work, remote, local, rsh):
                t, size = run()
                rows.setdefault(label, []).append((t, size))
                print(f"round {n}: {label}: {t:.2f}s", flush=True)

        floor = [t for t, _ in rows[floor_label]]
        classic_t = classic_row[0]
        print()
        print(f"{args.rounds} rounds; medians; 'vs floor' is the median of the ratios within each round")
        print(f"{'pipeline':<52}{'time':>8}{'archive':>12}{'vs classic':>12}{'vs floor':>10}")
        print(f"{'(a) classic cp + tar jcf + rsync -vaz':<52}{classic_t:>7.1f}s{classic_row[1] / MIB:>8.0f} MiB"
              f"{1:>11.1f}x{classic_t / statistics.median(floor):>9.2f}x")
        ratio = {}
        for label, runs in rows.items():
            t = statistics.median(r[0] for r in runs)
            ratio[label] = statistics.median(r[0] / f for r, f in zip(runs, floor))
            archive = statistics.median(r[1] for r in runs)
            print(f"{label:<52}{t:>7.2f}s{archive / MIB:>8.0f} MiB{classic_t / t:>11.1f}x{ratio[label]:>9.2f}x")
        for mode in ("stop", "live"):
            label = f"(c) kvm-backup create --mode {mode}"
            t = statistics.median(r[0] for r in rows[label])
            print(f"target --mode {mode}: >= 10x faster than classic: {classic_t / t:.1f}x -> "
                  f"{'MET' if classic_t / t >= 10 else 'MISSED'}; <= 1.3x floor: {ratio[label]:.2f}x -> "
                  f"{'MET' if ratio[label] <= 1.3 else 'MISSED'}")
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait()
        rig.cleanup(conn, prefix="spk-bak-")
        conn.close()
        shutil.rmtree(base, ignore_errors=True)


def pipelines(image: Path, work: Path, remote: Path, local: Path, rsh: str) -> list[tuple[str, Callable[[], tuple[float, int]]]]:
    """(label, run) of one round; each run gives (seconds, archive bytes) and removes what it made."""

    def floor() -> tuple[float, int]:
        folder = work / "floor"
        folder.mkdir()
        t = timed(["cp", "--sparse=always", str(image), str(folder / image.name)])
        t += timed(["zstd", "-q", "-1", "-T0", str(folder / image.name), "-o", str(folder / f"{image.name}.zst")])
        size = (folder / f"{image.name}.zst").stat().st_size
        shutil.rmtree(folder)
        return t, size

    def transport() -> tuple[float, int]:
        target = remote / "transport.zst"
        t = timed(f"zstd -q -1 -T0 -c < {shlex.quote(str(image))} | {rsh} root@127.0.0.1 "
                  f"{shlex.quote('cat > ' + shlex.quote(str(target)))}", shell=True)
        size = target.stat().st_size
        target.unlink()
        return t, size

    def kvm_backup(mode: str, dest: str, *extra: str) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            start = time.monotonic()
            out = subprocess.run([str(BIN / "kvm-backup"), "create", NAME, "--mode", mode, *extra, "--dest", dest,
                                  "--state-dir", str(work / "state"), "-u", rig.URI, "--json"],
                                 check=True, capture_output=True, text=True).stdout
            t = time.monotonic() - start
            size = json.loads(out)["backups"][0]["size"]
            for folder in (remote, local):
                for f in folder.iterdir():
                    f.unlink()
            return t, size
        return run

    to_remote = f"root@127.0.0.1:{remote}"
    return [("(b) floor cp --sparse=always + zstd -1 -T0", floor),
            ("(c) kvm-backup create --mode stop", kvm_backup("stop", to_remote, "--rsh", rsh, "--force",
                                                             "--shutdown-timeout", "1")),
            ("(c) kvm-backup create --mode live", kvm_backup("live", to_remote, "--rsh", rsh)),
            ("(d) transport floor zstd -1 -T0 | ssh cat", transport),
            ("(d) kvm-backup create --mode live, local folder", kvm_backup("live", str(local)))]


if __name__ == "__main__":
    main()
