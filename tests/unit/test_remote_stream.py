"""backup.remote's stream to a remote host, through a stand-in for ssh that runs the remote command
here (``sh -c``): what arrives, resuming after a cut, giving up, never over a file, cleanup.

The stand-in cuts connections the way a network does: it takes ``taken`` bytes of a connection's
stream, passes the first ``cut_after`` of them on (the rest was "in flight") and exits 255 (ssh's
code for a lost connection). The real
sshd on loopback is in tests/hypervisor/test_backup_remote_qemu.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from sensu_kvm.backup import remote
from sensu_kvm.backup.archive import ArchiveWriter
from sensu_kvm.backup.dest import dest_key
from sensu_kvm.errors import KvmError

FAKE_SSH = """#!/bin/sh
# {log}: one line per connection; HOST is $1, the command $2 (what ssh would run there)
shift
echo "$1" >> {log}
case "$1" in
*"dd of="*)
    n=$(cat {cuts} 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
        echo $((n - 1)) > {cuts}
        head -c {taken} | {{ head -c {cut_after} | sh -c "$1"; cat > /dev/null; }}
        exit 255
    fi
    ;;
esac
exec sh -c "$1"
"""


def fake_ssh(tmp_path: Path, cuts: int, cut_after: int = 3 << 20, lost: int = 0) -> str:
    script = tmp_path / "fake-ssh"
    script.write_text(FAKE_SSH.format(log=tmp_path / "calls", cuts=tmp_path / "cuts", cut_after=cut_after,
                                      taken=cut_after + lost))
    script.chmod(0o755)
    (tmp_path / "cuts").write_text(str(cuts))
    return str(script)


def payload(size: int) -> bytes:
    return hashlib.shake_256(b"spk").digest(size)


def send(rsh: str, path: Path, data: bytes, logged: list[str], spool: int = remote.SPOOL) -> remote.RemoteStream:
    stream = remote.RemoteStream(rsh, "vault", str(path), logged.append, spool=spool, pause=0.01)
    for at in range(0, len(data), 1 << 20):
        stream.write(data[at:at + (1 << 20)])
    stream.finish()
    return stream


def test_a_whole_stream_arrives_as_sent(tmp_path: Path) -> None:
    data = payload(5 << 20)
    logged: list[str] = []
    stream = send(fake_ssh(tmp_path, cuts=0), tmp_path / ".a.partial", data, logged)
    assert (tmp_path / ".a.partial").read_bytes() == data
    assert (tmp_path / ".a.partial").stat().st_mode & 0o777 == 0o600
    assert (stream.cuts, logged) == (0, [])


def test_a_cut_connection_resumes_from_what_arrived(tmp_path: Path) -> None:
    data = payload(12 << 20)
    logged: list[str] = []
    stream = send(fake_ssh(tmp_path, cuts=2), tmp_path / ".a.partial", data, logged)
    assert (tmp_path / ".a.partial").read_bytes() == data
    assert stream.cuts == 2
    assert len(logged) == 2 and all("the connection was cut" in line and "resuming at" in line for line in logged)
    assert "(1 of 3)" in logged[0] and "(2 of 3)" in logged[1]
    calls = (tmp_path / "calls").read_text().splitlines()
    resumed = [c for c in calls if "seek=" in c]
    assert len(resumed) == 2 and all("conv=notrunc" in c for c in resumed)
    # each resumed at what had arrived: 3 MiB, then 3 MiB more
    assert [int(c.split("seek=")[1].split()[0]) for c in resumed] == [3 << 20, 6 << 20]


def test_more_cuts_than_tries_gives_up_saying_so(tmp_path: Path) -> None:
    with pytest.raises(KvmError, match=r"^sending to vault: the connection was cut 4 times"):
        send(fake_ssh(tmp_path, cuts=10, cut_after=1 << 20), tmp_path / ".a.partial", payload(8 << 20), [])


def test_a_cut_behind_the_spool_is_not_resumed(tmp_path: Path) -> None:
    # 1 MiB arrived, 4 MiB more were lost in flight, and only the last 2 MiB sent are kept
    with pytest.raises(KvmError, match=r"has 1048576 bytes, not between \d+ and \d+: cannot resume"):
        send(fake_ssh(tmp_path, cuts=1, cut_after=1 << 20, lost=4 << 20), tmp_path / ".a.partial",
             payload(8 << 20), [], spool=2 << 20)


def test_never_over_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / ".a.partial").write_bytes(b"another run's")
    with pytest.raises(KvmError, match=r"^vault: .*\.a\.partial: File exists$"):
        send(fake_ssh(tmp_path, cuts=0), tmp_path / ".a.partial", payload(4 << 20), [])
    assert (tmp_path / ".a.partial").read_bytes() == b"another run's"


def test_an_archive_streamed_to_a_remote_folder_is_published_only_when_whole(tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    rsh = fake_ssh(tmp_path, cuts=1)
    place = remote.RemoteFolder(rsh, "vault", str(folder), lambda _line: None)
    out = place.output("web-20261202T000000Z.kvmbak.tar.zst")
    writer = ArchiveWriter(out, "zstd")
    writer.member("header.json", os.urandom(8 << 20))  # does not compress: the cut falls inside
    writer.close()
    assert place.names() == {".web-20261202T000000Z.kvmbak.tar.zst.partial"}
    where, digest = place.publish(out, "web-20261202T000000Z.kvmbak.tar.zst", lambda _path: "")
    final = folder / "web-20261202T000000Z.kvmbak.tar.zst"
    assert where == f"vault:{final}"
    assert digest == hashlib.sha256(final.read_bytes()).hexdigest()
    assert subprocess.run(["zstd", "-tq", str(final)], check=False).returncode == 0
    assert os.listdir(folder) == [final.name]
    assert place.stat(final.name) == (final.stat().st_size, float(int(final.stat().st_mtime)))
    assert place.stat("missing") is None


def test_a_copy_that_does_not_match_is_removed_not_published(tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    place = remote.RemoteFolder(fake_ssh(tmp_path, cuts=0), "vault", str(folder), lambda _line: None)
    out = place.output("web-20261202T000000Z.kvmbak.tar")
    writer = ArchiveWriter(out, "none")
    writer.member("header.json", b"{}")
    writer.close()
    (folder / ".web-20261202T000000Z.kvmbak.tar.partial").write_bytes(b"changed on the way")
    with pytest.raises(KvmError, match="does not match what was sent"):
        place.publish(out, "web-20261202T000000Z.kvmbak.tar", lambda _path: "")
    assert os.listdir(folder) == []


def test_abort_removes_the_remote_partial(tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    place = remote.RemoteFolder(fake_ssh(tmp_path, cuts=0), "vault", str(folder), lambda _line: None)
    writer = ArchiveWriter(place.output("web-20261202T000000Z.kvmbak.tar.zst"), "zstd")
    writer.member("header.json", b"{}")
    writer.abort()
    assert os.listdir(folder) == []


def test_cleanup_takes_this_domains_partials_only(tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    names = [".web-20261202T000000Z.kvmbak.tar.zst.partial", ".web-20261202T000001Z.inc.kvmbak.tar.zst.partial",
             ".web-2-20261202T000000Z.kvmbak.tar.zst.partial", "web-20261201T000000Z.kvmbak.tar.zst"]
    for name in names:
        (folder / name).write_bytes(b"x")
    remote.remote_cleanup(fake_ssh(tmp_path, cuts=0), "vault", str(folder), "web")
    assert sorted(os.listdir(folder)) == sorted(names[2:])


def test_names_of_the_remote_folder_keep_any_byte(tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    odd = "w e=b|\t\u00e9\"'"
    (folder / odd).write_bytes(b"")
    os.close(os.open(os.path.join(os.fsencode(folder), b"\xff-not-utf8"), os.O_CREAT | os.O_WRONLY, 0o600))
    place = remote.RemoteFolder(fake_ssh(tmp_path, cuts=0), "vault", str(folder), lambda _line: None)
    assert place.names() == {odd, os.fsdecode(b"\xff-not-utf8")}


def test_the_chain_record_key_of_a_remote_folder() -> None:
    assert dest_key("vault:/srv/backup/") == "vault:/srv/backup"
    assert dest_key(dest_key("backup@vault:/srv//backup")) == "backup@vault:/srv/backup"
    assert dest_key("vault:") == "vault:."


def test_a_cut_after_which_the_partial_is_gone_is_not_resumed(tmp_path: Path) -> None:
    script = fake_ssh(tmp_path, cuts=1, cut_after=1 << 20)
    gone = tmp_path / "gone-ssh"  # the cut takes the partial archive with it (a remote host that lost it)
    gone.write_text(f'#!/bin/sh\nif [ -e {tmp_path}/cuts ] && [ "$(cat {tmp_path}/cuts)" = 0 ]; then '
                    f'rm -f {tmp_path}/.a.partial; fi\nexec {script} "$@"\n')
    gone.chmod(0o755)
    with pytest.raises(KvmError, match=r"the connection was cut \(ssh exited with 255\) and the partial archive "
                                       r"\S+ is gone there: cannot resume"):
        send(str(gone), tmp_path / ".a.partial", payload(4 << 20), [])
