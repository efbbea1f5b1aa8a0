"""kvm-backup create --dest HOST:DIR on real QEMU, to a real sshd on loopback (tests/rig/rig.py
start_sshd): the archive is streamed while it is built, nothing is staged on the source, a full
then an incremental through the backup API, a connection cut mid-stream and resumed, a cut that
cannot be resumed, SIGTERM, SIGINT and SIGHUP mid-stream, and a run killed mid-stream whose remote
partial the next run removes.

The guest is a no-OS one whose disk holds 24 MiB of random data (it does not compress: the
archive is about 24 MiB), and the state folder of every run is a 4 MiB file system: a staging
copy could not fit there. Domains spk-rm-*.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from sensu_kvm.virt import backupjobs
from tests.hypervisor.conftest import own_fixtures
from tests.hypervisor.test_backup_chain_qemu import TOOL, rebuilt, reference, same, write
from tests.rig import rig

PREFIX = "spk-rm-"
NAME = PREFIX + "guest"
MiB = 1 << 20
conn, images = own_fixtures(PREFIX)

# Stands in for a network that drops (loopback cannot): the first connection that writes the
# archive (``dd of=``) is cut after 2 MiB: dd passes on what it reads at once, then the "network"
# is gone (exit 255, ssh's code for a lost connection); every later call goes through. With
# {gone}, the cut also takes the partial archive there away (a remote host that lost it).
FLAKY_SSH = """#!/bin/sh
case "$*" in
*"dd of="*)
    if [ ! -e {flag} ]; then
        touch {flag}
        dd bs=64k count=2097152 iflag=count_bytes status=none | {rsh} "$@"
        [ -n "{gone}" ] && rm -f {remote}/.*.partial
        exit 255
    fi
    stat -c %s {remote}/.*.partial > {seen} 2>/dev/null || echo 0 > {seen}
    ;;
esac
exec {rsh} "$@"
"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, rsh = rig.start_sshd(tmp_path_factory.mktemp("rm") / "ssh")
    try:
        yield rsh
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def guest(conn: libvirt.virConnect, images: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    raw = images / "guest.raw"
    raw.write_bytes(os.urandom(24 * MiB))
    image = images / "guest.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", str(image), "64M"], check=True)
    raw.unlink()
    dom = conn.defineXML(rig.noos_domain_xml(NAME, image))
    dom.create()
    yield dom, image
    rig.cleanup(conn, NAME)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    with rig.small_fs(tmp_path / "state", 4) as folder:
        yield folder


def kb(*args: str, rsh: str, state: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOL, *args, "--rsh", rsh, "--state-dir", str(state), "-u", rig.URI],
                          capture_output=True, text=True, timeout=timeout, check=False)


def create(remote: Path, rsh: str, state: Path, *args: str) -> tuple[dict[str, Any], str]:
    done = kb("create", NAME, "--dest", f"root@127.0.0.1:{remote}", "--engine", "api", "--json", *args,
              rsh=rsh, state=state)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["backups"]
    return result, done.stderr


def nothing_left(dom: libvirt.virDomain, state: Path) -> None:
    """No job, no scratch file, and nothing of an archive on this host: the state folder holds the
    chain record, the receipt and the journal's lock only (a few kB)."""
    assert not backupjobs.running(dom)
    big = [p for p in state.rglob("*") if p.is_file() and p.stat().st_size > 64 * 1024]
    assert big == [], big
    assert not [p for p in state.rglob("*") if "partial" in p.name or "kvmbak" in p.name]


def slow_run(remote: Path, rsh: str, state: Path) -> tuple[subprocess.Popen[str], list[Path]]:
    """A run at 4 MiB/s (its own session), and its partial archive there once 1 MiB arrived."""
    proc = subprocess.Popen([TOOL, "create", NAME, "--dest", f"root@127.0.0.1:{remote}", "--engine", "api",
                             "--bwlimit", "4", "--rsh", rsh, "--state-dir", str(state), "-u", rig.URI],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        return proc, rig.wait_for(lambda: [p for p in remote.glob(".*.partial") if p.stat().st_size > MiB], 60,
                                  0.1, "the first MiB there")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def flaky(tmp_path: Path, rsh: str, remote: Path, gone: bool = False) -> str:
    script = tmp_path / "flaky-ssh"
    script.write_text(FLAKY_SSH.format(flag=tmp_path / "cut", rsh=rsh, remote=remote, seen=tmp_path / "seen",
                                       gone="yes" if gone else ""))
    script.chmod(0o755)
    return str(script)


def test_full_then_inc_streamed_nothing_staged(guest: tuple[libvirt.virDomain, Path], sshd: str, state: Path,
                                                tmp_path: Path) -> None:
    dom, image = guest
    remote = tmp_path / "remote"
    remote.mkdir()
    full, _ = create(remote, sshd, state, "--level", "auto")
    assert (full["level"], full["engine"]) == ("full", "api")
    name = os.path.basename(full["archive"])
    assert full["archive"] == f"root@127.0.0.1:{remote / name}"
    assert sorted(os.listdir(remote)) == [name]
    assert (remote / name).stat().st_mode & 0o777 == 0o600
    assert full["size"] == (remote / name).stat().st_size > 20 * MiB  # larger than the state folder
    nothing_left(dom, state)

    write(dom, "write -P 0x5a 30M 1M")
    ref = reference(dom, image, tmp_path / "ref.raw")
    inc, _ = create(remote, sshd, state, "--level", "auto")  # the chain's parent is found over ssh
    assert (inc["level"], inc["parent"]) == ("inc", name), inc
    assert inc["size"] < 2 * MiB
    assert sorted(os.listdir(remote)) == sorted([name, os.path.basename(inc["archive"])])
    nothing_left(dom, state)
    inc_path = str(remote / os.path.basename(inc["archive"]))
    done = subprocess.run([TOOL, "verify", inc_path, "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)[0]["chain"]) == 2
    assert same(rebuilt(inc_path, tmp_path / "out"), ref)
    # the check on this host knows the remote backup from the receipt in the state folder
    age = subprocess.run([str(Path(TOOL).with_name("check-kvm-backup-age")), "--backup-dir", str(tmp_path),
                          "--state-dir", str(state), "-d", NAME, "-u", rig.URI],
                         capture_output=True, text=True, check=False)
    assert age.returncode == 0 and "newest backup" in age.stdout, age.stdout
    missing = kb("create", NAME, "--dest", f"root@127.0.0.1:{remote}/missing", rsh=sshd, state=state)
    assert missing.returncode == 2 and "does not exist or is not writable" in missing.stderr, missing.stderr
    assert missing.stderr.count("\n") == 1


def test_a_cut_mid_stream_resumes_from_what_arrived(guest: tuple[libvirt.virDomain, Path], sshd: str,
                                                     state: Path, tmp_path: Path) -> None:
    dom, _image = guest
    remote = tmp_path / "remote"
    remote.mkdir()
    result, stderr = create(remote, flaky(tmp_path, sshd, remote), state)
    assert "the connection was cut" in stderr and "resuming at 2.0 MiB (1 of 3)" in stderr, stderr
    assert int((tmp_path / "seen").read_text()) == 2 * MiB  # what had arrived when it resumed
    name = os.path.basename(result["archive"])
    assert os.listdir(remote) == [name]  # published whole, no partial left
    done = subprocess.run([TOOL, "verify", str(remote / name)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    nothing_left(dom, state)


def test_a_cut_that_cannot_be_resumed_fails_cleanly(guest: tuple[libvirt.virDomain, Path], sshd: str,
                                                     state: Path, tmp_path: Path) -> None:
    dom, _image = guest
    remote = tmp_path / "remote"
    remote.mkdir()
    checkpoints = dom.listAllCheckpoints()
    done = kb("create", NAME, "--dest", f"root@127.0.0.1:{remote}", "--engine", "api",
              rsh=flaky(tmp_path, sshd, remote, gone=True), state=state)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert "the connection was cut" in line and "is gone there: cannot resume" in line, line
    assert os.listdir(remote) == []
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert {c.getName() for c in dom.listAllCheckpoints()} == {c.getName() for c in checkpoints}
    nothing_left(dom, state)
    assert not list(state.glob("*.journal*"))


def test_a_run_killed_mid_stream_leaves_a_partial_the_next_run_removes(
        guest: tuple[libvirt.virDomain, Path], sshd: str, state: Path, tmp_path: Path) -> None:
    dom, _image = guest
    remote = tmp_path / "remote"
    remote.mkdir()
    proc, partial = slow_run(remote, sshd, state)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    time.sleep(0.5)  # the receiver there ends on the cut stdin
    assert [p.name for p in remote.iterdir()] == [partial[0].name]
    result, stderr = create(remote, sshd, state)
    assert os.listdir(remote) == [os.path.basename(result["archive"])], stderr  # the partial is gone
    nothing_left(dom, state)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_mid_stream_removes_what_was_sent(guest: tuple[libvirt.virDomain, Path], sshd: str, state: Path,
                                                   tmp_path: Path, sig: signal.Signals) -> None:
    dom, _image = guest
    remote = tmp_path / "remote"
    remote.mkdir()
    proc, _partial = slow_run(remote, sshd, state)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert err.splitlines() == [f"kvm-backup: {NAME}: interrupted by {sig.name}; the domain is back on its own images"]
    assert out == "" and os.listdir(remote) == []
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    nothing_left(dom, state)
