"""check-kvm-snapshot-age on real snapshots of a QEMU guest, redefined with an old creation time,
and on an overlay made without metadata."""

from __future__ import annotations

import re
import time

import libvirt

from tests.conftest import run
from tests.hypervisor.conftest import define_noos
from tests.perfdata_consumers import text_lines

SYSTEM = "qemu:///system"
NAME = "spk-test-snapage"


def age_check(*args: str):
    return run("check-kvm-snapshot-age", "-u", SYSTEM, "-d", NAME, *args)


def test_snapshot_age_on_real_snapshots(conn, images):
    dom = define_noos(conn, images, NAME)
    try:
        dom.create()
        result = age_check()
        assert (result.returncode, text_lines(result.stdout)[0]) == (0, f"CheckKvmSnapshotAge OK: {NAME}: no snapshots")

        dom.snapshotCreateXML("<domainsnapshot><name>first</name></domainsnapshot>", 0)
        result = age_check()
        assert result.returncode == 0, result
        assert result.stdout.startswith(f"CheckKvmSnapshotAge OK: {NAME}: 1 snapshot, oldest 'first' ")

        # The same snapshot, redefined as made ten days ago: its metadata is all that changes.
        snap = dom.snapshotLookupByName("first")
        old = re.sub(r"<creationTime>\d+</creationTime>", f"<creationTime>{int(time.time()) - 10 * 86400}</creationTime>",
                     snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))
        dom.snapshotCreateXML(old, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
        result = age_check()
        assert result.returncode == 2, result
        assert result.stdout.startswith(f"CheckKvmSnapshotAge CRITICAL: {NAME}: 1 snapshot, oldest 'first' 10d")
        assert f"{NAME}_oldest_age=8640" in result.stdout  # 864000 s and a few more

        # An external overlay made without metadata: the guest now runs on a file no snapshot knows.
        overlay = images / f"{NAME}.orphan"
        dom.snapshotCreateXML(
            f"<domainsnapshot><name>orphan</name><disks><disk name='vda' snapshot='external'>"
            f"<source file='{overlay}'/></disk></disks></domainsnapshot>",
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        result = age_check("-w", "30d", "-c", "60d")
        assert result.returncode == 1, result
        assert result.stdout.startswith(
            f"CheckKvmSnapshotAge WARNING: {NAME}: 1 snapshot, oldest 'first' 10d")
        assert f"; vda runs on {overlay}, an overlay no snapshot knows about" in result.stdout
        assert f"{NAME}_chain_depth_vda=2" in result.stdout
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
