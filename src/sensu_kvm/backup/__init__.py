"""The backup engine behind ``kvm-backup``, one module per concern (import the modules themselves):
catalog (names, markers, receipts: all check-kvm-backup-age reads), archive (writing), reader
(reading, verify), policy (what an archive may ask of the host), journal, signals, hostinfo,
blockjobs, create, restore, recover, prune, remote, progress.

Archive layout (a POSIX pax tar, compressed by the ``zstd`` or ``bzip2`` binary, or not at all):

1. ``kvm-backup.json``: the header (domain, UUID, time, mode, consistency, versions, disks), so
   that ``list`` reads the first few KiB of an archive only;
2. ``domain.xml``: the inactive domain XML, as it was before the backup touched anything;
3. ``disks/<target>.img``: every copied image as a GNU pax 1.0 sparse member (the map of data
   extents, then the data): holes cost nothing and stay holes when restored, by ``kvm-backup
   restore`` or by GNU tar itself (``tar --zstd -xf``);
4. ``manifest.json``: the header plus each member's size and sha256 (of the member's payload as
   stored, so holes are never read or hashed).

An archive is written under a temporary name (``.NAME.partial``), read back and checked against
its manifest, and only then renamed to its final name, mode 0600 (decision D4).
"""
