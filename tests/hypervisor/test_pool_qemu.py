"""check-kvm-pool on real storage pools of the shared libvirtd: dir pools on tiny file systems the
test mounts (tests/rig/rig.py small_fs), one filled by preallocated volumes, one thin and
overcommitted by sparse volumes larger than itself; pools left inactive (with and without
autostart); one whose target directory is removed under it. Every pool and volume is named
spk-test-pool-* and removed at the end, even when a test fails (and at the start, in case an
earlier run was killed)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import run
from tests.perfdata_consumers import perfdata, text_lines
from tests.rig import rig

SYSTEM = "qemu:///system"
PREFIX = "spk-test-pool-"
MIB = 2**20


def remove_pools(conn: libvirt.virConnect) -> None:
    """Every pool named PREFIX*: its volumes deleted, stopped, undefined."""
    for pool in conn.listAllStoragePools(0):
        if not pool.name().startswith(PREFIX):
            continue
        with contextlib.suppress(libvirt.libvirtError):
            if pool.isActive():
                for vol in pool.listAllVolumes(0):
                    with contextlib.suppress(libvirt.libvirtError):
                        vol.delete(0)
                pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()


def pool_xml(name: str, target: Path) -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>"


def volume_xml(name: str, capacity_mib: int, allocation_mib: int) -> str:
    return (f"<volume><name>{name}</name><capacity unit='MiB'>{capacity_mib}</capacity>"
            f"<allocation unit='MiB'>{allocation_mib}</allocation><target><format type='raw'/></target></volume>")


def started(conn: libvirt.virConnect, name: str, target: Path) -> libvirt.virStoragePool:
    pool = conn.storagePoolDefineXML(pool_xml(name, target), 0)
    pool.create(0)
    return pool


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[str, libvirt.virStoragePool]]:
    conn = rig.connect()
    remove_pools(conn)
    with rig.image_dir() as images, rig.small_fs(images / "full", 16) as full_fs, \
            rig.small_fs(images / "thin", 16) as thin_fs:
        try:
            made = {"full": started(conn, PREFIX + "full", full_fs), "thin": started(conn, PREFIX + "thin", thin_fs)}
            for i in range(3):  # preallocated: 15 MiB written on a 16 MiB file system
                made["full"].createXML(volume_xml(f"{PREFIX}fill{i}.raw", 5, 5), 0)
            for i in range(2):  # sparse: 2 x 64 MiB promised on a 16 MiB file system, nothing written
                made["thin"].createXML(volume_xml(f"{PREFIX}sparse{i}.raw", 64, 0), 0)
            for key in ("full", "thin"):
                made[key].refresh(0)
            for key in ("off", "off-autostart"):
                (images / key).mkdir()
                made[key] = conn.storagePoolDefineXML(pool_xml(PREFIX + key, images / key), 0)
            made["off-autostart"].setAutostart(1)
            gone = images / "gone"
            gone.mkdir()
            made["gone"] = started(conn, PREFIX + "gone", gone)
            gone.rmdir()
            yield made
        finally:
            remove_pools(conn)  # before the file systems are unmounted
            conn.close()


def pool_check(*args: str):
    return run("check-kvm-pool", "-u", SYSTEM, "--match", f"^{PREFIX}", "-v", *args)


def test_every_state_and_space_verdict_on_real_pools(pools):
    result = pool_check()
    assert result.returncode == 2, result
    lines = text_lines(result.stdout)
    assert lines[0].startswith("CheckKvmPool CRITICAL: 5 of 5 pools not OK: "), lines
    assert f"WARNING: pool {PREFIX}off is inactive" in lines
    assert f"CRITICAL: pool {PREFIX}off-autostart is inactive (marked autostart)" in lines
    gone = pools["gone"].XMLDesc(0).split("<path>")[1].split("</path>")[0]
    assert f"CRITICAL: pool {PREFIX}gone: target directory {gone} is missing" in lines
    # the numbers are libvirt's own (virsh pool-info), judged against the thresholds
    _state, capacity, allocation, available = pools["full"].info()
    used = allocation / capacity * 100
    assert used > 90, (allocation, capacity)
    full = next(line for line in lines[1:] if f"pool {PREFIX}full " in line)
    assert full.startswith(f"CRITICAL: pool {PREFIX}full {used:.1f}% used"), full
    thin = next(line for line in lines[1:] if f"pool {PREFIX}thin " in line)
    _state, thin_capacity, _allocation, _available = pools["thin"].info()
    overcommit = 128 * MIB / thin_capacity * 100
    assert thin.startswith(f"WARNING: pool {PREFIX}thin "), thin
    assert f"2 volumes of 128.0 MiB ({overcommit:.0f}% of capacity): overcommitted" in thin, thin
    perf = perfdata(result.stdout)
    assert perf[f"{PREFIX}full_available"] == f"{available}B;;;0;{capacity}"
    assert perf[f"{PREFIX}full_volumes"] == "3;;;0"
    assert perf[f"{PREFIX}thin_overcommit"].startswith(f"{round(overcommit, 3):g}%;100;;0")


def test_thresholds_and_selection_on_real_pools(pools):
    result = pool_check("-p", PREFIX + "thin", "--overcommit-warning", "2000")
    assert (result.returncode, text_lines(result.stdout)[0].split(" |")[0].startswith(
        f"CheckKvmPool OK: pool {PREFIX}thin ")) == (0, True), result
    result = pool_check("-p", PREFIX + "thin", "--available-critical", "1T")
    assert result.returncode == 2, result
    result = pool_check("-p", PREFIX + "full", "-w", "99", "-c", "100")
    assert result.returncode == 0, result
    result = pool_check("-p", PREFIX + "off", "-p", PREFIX + "missing")
    assert result.returncode == 2, result
    assert f"CRITICAL: pool {PREFIX}missing not found" in text_lines(result.stdout)


def virsh(*args: str) -> str:
    result = subprocess.run(["virsh", "-r", "-c", SYSTEM, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    return result.stdout


def test_metrics_kvm_reports_what_virsh_says_of_each_pool(pools):
    """metrics-kvm's pool metrics (issue 16) against `virsh pool-info --bytes` and `virsh vol-list`."""
    result = run("metrics-kvm", "-u", SYSTEM, "-f", "json", "-t", "30", timeout=60)
    assert result.returncode == 0, result
    found = {p["tags"]["pool"]: p["fields"] for p in json.loads(result.stdout)["points"]
             if p["measurement"] == "pool" and p["tags"]["pool"].startswith(PREFIX)}
    assert set(found) == {PREFIX + key for key in pools}
    states = {"inactive": 0, "building": 1, "running": 2, "degraded": 3, "inaccessible": 4}
    for key in ("full", "thin", "off", "off-autostart"):
        name = PREFIX + key
        info = dict(line.split(":", 1) for line in virsh("pool-info", "--bytes", name).splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        fields = found[name]
        assert (fields["up"], fields["state"]) == (1, states[info["State"]]), (name, fields, info)
        if info["State"] == "inactive":
            assert set(fields) == {"up", "state"}, fields  # libvirt's zeros are no sizes
            continue
        assert (fields["capacity_bytes"], fields["allocation_bytes"], fields["available_bytes"]) == (
            int(info["Capacity"]), int(info["Allocation"]), int(info["Available"])), (name, fields, info)
        listed = [line for line in virsh("vol-list", name).splitlines()[2:] if line.strip()]
        assert fields["volumes"] == len(listed) == {"full": 3, "thin": 2}[key], (name, listed)
    prom = run("metrics-kvm", "-u", SYSTEM, "-f", "prometheus", "-t", "30", timeout=60).stdout
    assert f'kvm_pool_volumes{{pool="{PREFIX}full"}} 3' in prom.splitlines()
