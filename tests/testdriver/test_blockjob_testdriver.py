"""check-kvm-blockjob as real processes against libvirt's test driver.

The test driver has no block jobs (blockJobInfo answers VIR_ERR_NO_SUPPORT: asked once per run)
and its bulk call has no block group, so the disks and their chain depth come from each running
domain's XML, whose <backingStore> nesting it keeps as given. Jobs themselves are on real QEMU:
tests/hypervisor/test_blockjob_qemu.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import nodes
from tests.conftest import node_uri, refuses, run
from tests.perfdata_consumers import perfdata

NAMES = node_uri("names.xml")
CHECK = "check-kvm-blockjob"

CHAIN_NODE = """<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
<domain type='test'><name>deep</name><uuid>11111111-2222-3333-4444-555555555555</uuid><memory>131072</memory>
<vcpu>1</vcpu><os><type>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/g/top.qcow2'/>
<backingStore type='file'><format type='qcow2'/><source file='/g/mid.qcow2'/>
<backingStore type='file'><format type='qcow2'/><source file='/g/base.qcow2'/><backingStore/></backingStore></backingStore>
<target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/g/plain.img'/><target dev='vdb' bus='virtio'/></disk>
</devices><test:runstate>1</test:runstate></domain>
<domain type='test'><name>flat</name><uuid>11111111-2222-3333-4444-555555555556</uuid><memory>131072</memory>
<vcpu>1</vcpu><os><type>hvm</type></os><devices>
<disk type='file' device='disk'><source file='/g/flat.img'/><target dev='vda' bus='virtio'/></disk>
</devices><test:runstate>1</test:runstate></domain>
</node>
"""


@pytest.fixture(scope="module")
def chain_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("blockjob") / "chain.xml"
    path.write_text(CHAIN_NODE)
    return f"test://{path}"


def test_no_jobs_is_ok_with_a_chain_depth_per_disk_of_every_running_domain(tmp_path: Path) -> None:
    out = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path), "--backup-state-dir", str(tmp_path / "none"))
    assert out.returncode == 0, out
    assert out.stdout.splitlines()[0] == "CheckKvmBlockjob OK: no block jobs (the driver has none: blockJobInfo unsupported)"
    seen = perfdata(out.stdout)
    assert seen.pop("blockjobs") == "0;;;0"
    active = [n for n, state in nodes.HOSTILE.items() if state in (nodes.RUNNING, nodes.PAUSED)]
    assert len(seen) == len(active)  # one chain_depth per disk, one disk each
    assert seen["plain_chain_depth_vda"] == "0;3;8;0"
    assert seen["say__hi__chain_depth_vda"] == "0;3;8;0"  # labels by names.Names, as every check
    assert out.stderr == ""


def test_chain_depth_from_the_xml_against_the_thresholds(tmp_path: Path, chain_uri: str) -> None:
    calm = run(CHECK, "-u", chain_uri, "--state-dir", str(tmp_path))
    assert calm.returncode == 0, calm
    assert calm.stdout.startswith("CheckKvmBlockjob OK: no block jobs (the driver has none: blockJobInfo "
                                  "unsupported); deepest backing chain 2 (deep vda) | ")
    assert perfdata(calm.stdout) == {"deep_chain_depth_vda": "2;3;8;0", "deep_chain_depth_vdb": "0;3;8;0",
                                     "flat_chain_depth_vda": "0;3;8;0", "blockjobs": "0;;;0"}
    warned = run(CHECK, "-u", chain_uri, "--state-dir", str(tmp_path), "--chain-warning", "1")
    assert (warned.returncode, warned.stdout.splitlines()[0]) == (1, "CheckKvmBlockjob WARNING: 1 of 2 domains not "
                                                                     "OK: deep: vda backing chain 2 images deep")
    critical = run(CHECK, "-u", chain_uri, "--state-dir", str(tmp_path), "--chain-critical", "1", "-d", "deep")
    assert critical.returncode == 2, critical
    assert critical.stdout.splitlines()[0] == "CheckKvmBlockjob CRITICAL: deep: vda backing chain 2 images deep"
    assert perfdata(critical.stdout)["deep_chain_depth_vda"] == "2;3;1;0"


def test_selection(tmp_path: Path) -> None:
    one = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path), "-d", "say \"hi\"")
    assert (one.returncode, one.stdout) == (
        0, "CheckKvmBlockjob OK: say \"hi\": no block jobs | say__hi__chain_depth_vda=0;3;8;0 blockjobs=0;;;0\n")
    missing = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path), "-d", "plain", "-d", "nosuch")
    assert missing.returncode == 2 and "nosuch not found" in missing.stdout, missing
    nothing = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path), "--match", "^zzz")
    assert (nothing.returncode, nothing.stdout) == (3, "CheckKvmBlockjob UNKNOWN: no domain matches --match/--exclude\n")
    some = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path), "--match", "^web", "--exclude", "-01")
    assert some.returncode == 0, some
    assert set(perfdata(some.stdout)) == {"web_1_chain_depth_vda", "web_1-857bb2f0_chain_depth_vda", "blockjobs"}


@pytest.mark.parametrize(("args", "words"), [
    (["--age-warning", "soon"], "--age-warning"),
    (["--age-critical", "-5m"], "--age-critical"),
    (["--chain-warning", "deep"], "--chain-warning"),
    (["--chain-critical", "1:x"], "--chain-critical"),
    (["--backup-state-dir", ""], "--backup-state-dir"),
    (["--state-dir"], "--state-dir"),
])
def test_bad_input_is_one_line_exit_3(tmp_path: Path, args: list[str], words: str) -> None:
    line = refuses(CHECK, 3, "-u", NAMES, *args)
    assert words in line and "\n" not in line.strip()


@pytest.mark.parametrize("kind", ["garbage", "json of another shape", "fifo", "symlink"])
def test_a_corrupt_state_file_is_rebuilt(tmp_path: Path, kind: str) -> None:
    first = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path))
    assert first.returncode == 0, first
    (state,) = tmp_path.glob("blockjob-*.json")
    state.unlink()
    if kind == "garbage":
        state.write_bytes(b"\x00{not json\xff")
    elif kind == "json of another shape":
        state.write_text(json.dumps({"version": 1, "uri": "test:///default", "samples": {"x/vda/4": [1, 2]}}))
    elif kind == "fifo":
        os.mkfifo(state)
    else:
        state.symlink_to("/etc/passwd")
    again = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path), timeout=20)
    assert (again.returncode, again.stderr) == (0, ""), again
    assert state.is_file() and not state.is_symlink()
    assert json.loads(state.read_text())["samples"] == {}


def test_a_directory_at_the_state_path_is_one_line_naming_it(tmp_path: Path) -> None:
    run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path))
    (state,) = tmp_path.glob("blockjob-*.json")
    state.unlink()
    state.mkdir()
    out = run(CHECK, "-u", NAMES, "--state-dir", str(tmp_path))
    assert out.returncode == 3, out
    assert out.stdout.startswith(f"CheckKvmBlockjob UNKNOWN: {state} is a directory") and out.stdout.count("\n") == 1
