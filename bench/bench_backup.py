"""Benchmark (not a test): kvm-backup against the classic backup pipeline and the floor, in one run.

An 8 GiB qcow2 virtual disk holding 1 GiB of written data (half random, half compressible text), on
a no-OS domain spk-bak-bench; a "remote" sshd on loopback (own host key, generated client key):

(a) classic: cp of the image, tar jcf of it and the XML, rsync -vaz to the remote;
(b) floor: cp --sparse=always of the image, then zstd -1 -T0 of the copy (nothing sent);
(c) kvm-backup create --mode stop and --mode live to the same remote.

Targets: (c) at least 10x faster than (a), at most 1.3x (b). Run as root on the rig:
    .venv/bin/python bench/bench_backup.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    argparse.ArgumentParser(description=__doc__).parse_args()
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
        rows: dict[str, tuple[float, int]] = {}

        # (a) classic, as the recipe: cp, tar jcf, rsync -vaz (the guest is shut off meanwhile)
        classic = work / "classic"
        classic.mkdir()
        (classic / f"{NAME}.xml").write_text(dom.XMLDesc(0))
        t = timed(["cp", str(image), str(classic / image.name)])
        t += timed(["tar", "jcf", str(classic / f"{NAME}.tar.bz2"), "-C", str(classic), f"{NAME}.xml", image.name])
        t += timed(["rsync", "-vaz", "-e", rsh, str(classic / f"{NAME}.tar.bz2"), f"root@127.0.0.1:{remote}/"])
        rows["(a) classic cp + tar jcf + rsync -vaz"] = (t, (classic / f"{NAME}.tar.bz2").stat().st_size)
        print(f"classic: {t:.1f}s", flush=True)
        shutil.rmtree(classic)

        # (b) the floor
        floor = work / "floor"
        floor.mkdir()
        t = timed(["cp", "--sparse=always", str(image), str(floor / image.name)])
        t += timed(["zstd", "-q", "-1", "-T0", str(floor / image.name), "-o", str(floor / f"{image.name}.zst")])
        rows["(b) floor cp --sparse=always + zstd -1 -T0"] = (t, (floor / f"{image.name}.zst").stat().st_size)
        print(f"floor: {t:.1f}s", flush=True)
        shutil.rmtree(floor)

        # (c) kvm-backup to the same remote
        dom.create()
        common = ["--dest", f"root@127.0.0.1:{remote}", "--rsh", rsh, "--state-dir", str(work / "state"),
                  "-u", rig.URI, "--json"]
        for mode, extra in (("stop", ["--force", "--shutdown-timeout", "1"]), ("live", [])):
            start = time.monotonic()
            out = subprocess.run([str(BIN / "kvm-backup"), "create", NAME, "--mode", mode, *extra, *common],
                                 check=True, capture_output=True, text=True).stdout
            t = time.monotonic() - start
            size = json.loads(out)["backups"][0]["size"]
            rows[f"(c) kvm-backup create --mode {mode}"] = (t, size)
            print(f"kvm-backup {mode}: {t:.1f}s", flush=True)
        classic_t = rows["(a) classic cp + tar jcf + rsync -vaz"][0]
        floor_t = rows["(b) floor cp --sparse=always + zstd -1 -T0"][0]
        print()
        print(f"{'pipeline':<46}{'time':>9}{'archive':>12}{'vs classic':>12}{'vs floor':>10}")
        for label, (t, size) in rows.items():
            print(f"{label:<46}{t:>8.1f}s{size / MIB:>8.0f} MiB{classic_t / t:>11.1f}x{t / floor_t:>9.2f}x")
        for mode in ("stop", "live"):
            t = rows[f"(c) kvm-backup create --mode {mode}"][0]
            print(f"target --mode {mode}: >= 10x faster than classic: {classic_t / t:.1f}x -> "
                  f"{'MET' if classic_t / t >= 10 else 'MISSED'}; <= 1.3x floor: {t / floor_t:.2f}x -> "
                  f"{'MET' if t / floor_t <= 1.3 else 'MISSED'}")
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait()
        rig.cleanup(conn, prefix="spk-bak-")
        conn.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
