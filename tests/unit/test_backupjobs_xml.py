"""The XML of a pull backup and of its checkpoint (virt.backupjobs), and the extent arithmetic of
the NBD reader (virt.nbd.classify); what libvirt 9.0 / QEMU 7.2 do with them is pinned by
tests/hypervisor/test_backup_pull_qemu.py."""

from __future__ import annotations

from sensu_kvm.virt import backupjobs, nbd

MiB = 1 << 20


def test_full_backup_xml() -> None:
    xml = backupjobs.backup_xml("/run/kvm-backup/u.nbd", {"vda": "/img/a.kvm-backup-scratch-S.vda.qcow2"},
                                skip=["hdc"])
    assert xml == (
        "<domainbackup mode='pull'>\n"
        "  <server transport='unix' socket=\"/run/kvm-backup/u.nbd\"/>\n"
        "  <disks>\n"
        "    <disk name=\"vda\" backup='yes' type='file'><scratch file=\"/img/a.kvm-backup-scratch-S.vda.qcow2\"/></disk>\n"
        "    <disk name=\"hdc\" backup='no'/>\n"
        "  </disks>\n"
        "</domainbackup>\n"
    )


def test_incremental_backup_xml_copies_raw_disks_whole() -> None:
    xml = backupjobs.backup_xml("/s", {"vda": "/a", "vdb": "/b"}, since="kvm-backup-1<&", full=["vdb"])
    assert "<incremental>kvm-backup-1&lt;&amp;</incremental>" in xml
    assert "<disk name=\"vda\" backup='yes' type='file'><scratch" in xml
    assert "<disk name=\"vdb\" backup='yes' type='file' backupmode='full'><scratch" in xml


def test_full_only_means_nothing_in_a_full() -> None:
    assert "backupmode" not in backupjobs.backup_xml("/s", {"vdb": "/b"}, full=["vdb"])


def test_checkpoint_xml() -> None:
    xml = backupjobs.checkpoint_xml("kvm-backup-X", ["vda"], ["vdb", "hdc"], description="web1 & co")
    assert xml == (
        "<domaincheckpoint>\n"
        "  <name>kvm-backup-X</name>\n"
        "  <description>web1 &amp; co</description>\n"
        "  <disks>\n"
        "    <disk name=\"vda\" checkpoint='bitmap'/>\n"
        "    <disk name=\"vdb\" checkpoint='no'/>\n"
        "    <disk name=\"hdc\" checkpoint='no'/>\n"
        "  </disks>\n"
        "</domaincheckpoint>\n"
    )


def test_full_extents_are_what_is_not_zero() -> None:
    alloc = [(0, 4 * MiB, 3), (4 * MiB, 12 * MiB, 0), (12 * MiB, 13 * MiB, 1), (13 * MiB, 64 * MiB, 3)]
    assert nbd.classify(alloc, None) == ([(4 * MiB, 9 * MiB)], [])


def test_incremental_extents_split_dirty_into_data_and_zeroed() -> None:
    alloc = [(0, 4 * MiB, 3), (4 * MiB, 12 * MiB, 0), (12 * MiB, 64 * MiB, 3)]
    dirty = [(0, 2 * MiB, 0), (2 * MiB, 6 * MiB, 1), (6 * MiB, 10 * MiB, 0), (10 * MiB, 64 * MiB, 1)]
    data, zeroed = nbd.classify(alloc, dirty)
    assert data == [(4 * MiB, 2 * MiB), (10 * MiB, 2 * MiB)]
    assert zeroed == [(2 * MiB, 2 * MiB), (12 * MiB, 52 * MiB)]


def test_merge_joins_neighbours_with_the_same_flags() -> None:
    assert nbd.merge([(0, 1, 0), (1, 2, 0), (2, 3, 1), (3, 3, 1)]) == [(0, 2, 0), (2, 3, 1)]
