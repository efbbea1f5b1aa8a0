"""A quiesced backup through libvirt's backup API (`kvm-backup create --engine api`) on real libvirtd +
QEMU (TCG): the tiny Linux guest runs qemu-ga and has an ext2 file system on its disk (rig modes
agent,agentfs) with the kernel's periodic writeback turned off, so a file written without sync is in
its page cache only. A quiesced run records `quiesced` (header, manifest, `kvm-backup list`) and its
archive holds that file (the freeze flushed it); the agent says `thawed` afterwards. With --no-quiesce
the run says crash-consistent (--no-quiesce) and a file written since without sync is not in the
archive (nothing flushed it). Domains spk-q7-qz-*."""

from __future__ import annotations

import json
import secrets
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from sensu_kvm.backup import restore
from sensu_kvm.backup.catalog import HEADER, MANIFEST
from tests.conftest import run
from tests.hypervisor.conftest import api_backup, own_fixtures
from tests.rig import rig

PREFIX = "spk-q7-qz-"
URI = ["-u", rig.URI]
conn, images = own_fixtures(PREFIX)


def agent(dom: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    message = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(message), 10, 0))["return"]


def answers(dom: libvirt.virDomain) -> bool:
    try:
        agent(dom, "guest-ping")
        return True
    except libvirt.libvirtError:
        return False


def sh(dom: libvirt.virDomain, script: str) -> None:
    """Run ``script`` in the guest through guest-exec and wait for it to exit 0."""
    pid = agent(dom, "guest-exec", {"path": "/bin/sh", "arg": ["-c", script]})["pid"]
    status = rig.wait_for(lambda: (s := agent(dom, "guest-exec-status", {"pid": pid}))["exited"] and s,
                          timeout=30, what=f"guest-exec {script!r}")
    assert status["exitcode"] == 0, status


def on_disk(image: Path, out: Path, token: bytes) -> bool:
    """Whether ``token`` is in the live image's guest-visible data now."""
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(image), str(out)], check=True)
    return token in out.read_bytes()


def in_archive(archive: str, folder: Path, token: bytes) -> bool:
    folder.mkdir()
    (path,) = restore.restore_files(archive, str(folder)).values()
    return token in Path(path).read_bytes()


def members(archive: str) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        return {name: json.load(tar.extractfile(name)) for name in (HEADER, MANIFEST)}  # type: ignore[arg-type]


create = api_backup


def test_api_backup_is_quiesced_and_thawed(conn: libvirt.virConnect, images: Path) -> None:
    kernel, initrd = rig.ensure_guest()
    image = rig.make_qcow2(images / "agent.qcow2", "64M")
    log = images / "agent.log"
    dom = conn.defineXML(rig.linux_guest_xml(f"{PREFIX}agent", image, kernel, initrd, "agent,agentfs", log,
                                             agent_channel=True, extra_cmdline="spk.fs.kib=8192 spk.fs.fill=10"))
    dom.create()
    try:
        rig.wait_serial(log, "SPK-AGENTFS-READY", timeout=120)
        rig.wait_for(lambda: answers(dom), timeout=90, interval=0.5, what="the guest agent")
        sh(dom, "echo 0 > /proc/sys/vm/dirty_writeback_centisecs; echo 360000 > /proc/sys/vm/dirty_expire_centisecs; "
                "sync")
        dest, state = images / "dest", images / "state"
        dest.mkdir()

        frozen = secrets.token_hex(16).encode()
        sh(dom, f"printf {frozen.decode()} > /mnt/data/frozen")  # no sync: in the page cache only
        assert not on_disk(image, images / "live1.raw", frozen)
        started = time.monotonic()
        quiesced = create(dom, dest, state, "--level", "full")
        print(f"\nquiesced api full: {time.monotonic() - started:.1f}s")
        assert quiesced["consistency"] == "quiesced", quiesced
        assert agent(dom, "guest-fsfreeze-status") == "thawed"
        assert in_archive(quiesced["archive"], images / "out1", frozen)  # the freeze flushed it
        saved = members(quiesced["archive"])
        assert saved[HEADER]["consistency"] == saved[MANIFEST]["header"]["consistency"] == "quiesced"
        sh(dom, "echo after > /mnt/data/after; sync")  # the file system is writable again

        loose = secrets.token_hex(16).encode()
        sh(dom, f"printf {loose.decode()} > /mnt/data/loose")
        crash = create(dom, dest, state, "--level", "inc", "--no-quiesce")
        assert crash["level"] == "inc" and crash["consistency"] == "crash-consistent (--no-quiesce)", crash
        assert agent(dom, "guest-fsfreeze-status") == "thawed"
        assert not in_archive(crash["archive"], images / "out2", loose)  # nothing flushed it
        assert members(crash["archive"])[MANIFEST]["header"]["consistency"] == "crash-consistent (--no-quiesce)"

        listed = run("kvm-backup", "list", str(dest), "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["archive"].rsplit("/", 1)[-1]: row["consistency"] for row in json.loads(listed.stdout)["backups"]}
        assert rows == {Path(quiesced["archive"]).name: "quiesced",
                        Path(crash["archive"]).name: "crash-consistent (--no-quiesce)"}
        text = run("kvm-backup", "list", str(dest))
        assert "quiesced" in text.stdout and "crash-consistent (--no-quiesce)" in text.stdout, text.stdout
    finally:
        rig.cleanup(conn, PREFIX)
