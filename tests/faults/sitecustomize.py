# mypy: disable-error-code="method-assign,assignment"
# (replacing methods of libvirt and of the engines is what this file is for)
"""Fault injection for tests: loaded into a real command's process through PYTHONPATH.

The faults stand in for failures that the real hypervisors here cannot be made to produce on
demand. SPK_FAULT names one or more, separated by ";":
  crash-in-gather      virt.gather raises an unexpected RuntimeError (a bug in our code)
  bulk-stats-fail      virConnectGetAllDomainStats and virDomainListGetStats fail (an old or
                       partial driver)
  state-fails:NAME     virDomainGetState fails for the domain NAME
  pool-fails:NAME      virStoragePoolGetInfo fails for the pool NAME (an internal error)
  pool-gone:NAME       virStoragePoolGetInfo says the pool NAME does not exist (undefined since it
                       was listed)
  crash-in-commit      kvm-backup: the first wait for a commit job raises RuntimeError (a bug in our
                       code after the copy, with the commit job running)
  crash-after-copy     kvm-backup: the archive is written, then RuntimeError (a bug after the copy,
                       before the commit)
  commit-refused       every virDomainBlockCommit fails (libvirt refuses the commit: the undo cannot
                       be done, the overlay stays)
  pause-after-phase:P  kvm-backup: a 1.5 s pause right after the journal records phase P (start,
                       snapshot, copy, commit, verify), so that a test's signal lands in that phase
  slow-snapshot        kvm-backup: a 1.5 s pause right after libvirt made the snapshot (a signal that
                       comes during the snapshot call is handled when the call returns: here)
  no-backup-api        libvirt's domain capabilities say <backup supported='no'/> (a libvirt or QEMU
                       without the backup API, which this host has: kvm-backup's auto engine falls back)
  slow-domain-calls:S  every per-domain read (diskErrors, XMLDesc, vcpus, listAllSnapshots, jobStats) takes S
                       seconds longer (a libvirtd that serves each domain slowly: the time budget)
  slow-pool-calls:S    every storage pool's volume listing or count (listAllVolumes, numOfVolumes)
                       takes S seconds longer (check-kvm-pool's and metrics-kvm's time budget)
  log-domain-calls     not a fault: every virDomain method called is appended to the file
                       SPK_CALL_LOG, to prove which calls a command makes per domain
  log-connections      not a fault: every connection opened is appended to SPK_CALL_LOG as
                       "read-only URI" or "read-write URI", to prove which kind a command opens
"""

import os

faults = [f for f in os.environ.get("SPK_FAULT", "").split(";") if f]

if faults:
    import libvirt

    from sensu_kvm import virt

    def _libvirt_error(message):
        err = libvirt.libvirtError(message)
        err.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, message, 2, None, None, None, -1, -1)
        return err

    for fault in faults:
        if fault == "crash-in-gather":
            def _broken(*_args, **_kwargs):
                raise RuntimeError("injected fault: stats dict had no entries")

            virt.gather = _broken
        elif fault == "bulk-stats-fail":
            def _no_bulk(*_args, **_kwargs):
                raise _libvirt_error("injected fault: this function is not supported by the connection driver")

            libvirt.virConnect.getAllDomainStats = _no_bulk
            libvirt.virConnect.domainListGetStats = _no_bulk
        elif fault.startswith("slow-domain-calls:"):
            import time

            pause = float(fault.split(":", 1)[1])
            def _slowed(real, _pause=pause):
                def _slow(dom, *args, **kwargs):
                    time.sleep(_pause)
                    return real(dom, *args, **kwargs)

                return _slow

            for method in ("diskErrors", "XMLDesc", "vcpus", "listAllSnapshots", "jobStats"):
                setattr(libvirt.virDomain, method, _slowed(getattr(libvirt.virDomain, method)))
        elif fault.startswith("slow-pool-calls:"):
            import time

            real_volumes = libvirt.virStoragePool.listAllVolumes
            pool_pause = float(fault.split(":", 1)[1])

            def _volumes(pool, *args, _real=real_volumes, _pause=pool_pause, **kwargs):
                time.sleep(_pause)
                return _real(pool, *args, **kwargs)

            libvirt.virStoragePool.listAllVolumes = _volumes
            real_count = libvirt.virStoragePool.numOfVolumes

            def _count(pool, *args, _real=real_count, _pause=pool_pause, **kwargs):
                time.sleep(_pause)
                return _real(pool, *args, **kwargs)

            libvirt.virStoragePool.numOfVolumes = _count
        elif fault.startswith("state-fails:"):
            victim = fault.split(":", 1)[1]
            real_state = libvirt.virDomain.state

            def _state(dom, flags=0, _real=real_state, _victim=victim):
                if dom.name() == _victim:
                    raise _libvirt_error("injected fault: cannot read state")
                return _real(dom, flags)

            libvirt.virDomain.state = _state
        elif fault.startswith(("pool-fails:", "pool-gone:")):
            kind, victim = fault.split(":", 1)
            real_info = libvirt.virStoragePool.info

            def _info(pool, _real=real_info, _victim=victim, _gone=kind == "pool-gone"):
                if pool.name() == _victim:
                    err = _libvirt_error("injected fault: cannot read the pool")
                    if _gone:
                        err.err = (libvirt.VIR_ERR_NO_STORAGE_POOL, 0, f"Storage pool not found: no storage pool "
                                   f"with matching name '{_victim}'", 2, None, None, None, -1, -1)
                    raise err
                return _real(pool)

            libvirt.virStoragePool.info = _info
        elif fault == "crash-in-commit":
            from sensu_kvm.backup import blockjobs

            real_wait = blockjobs.wait_pivot
            crashed: list[int] = []

            def _wait_pivot(*args, _real=real_wait, _crashed=crashed, **kwargs):
                if not _crashed:
                    _crashed.append(1)
                    raise RuntimeError("injected fault: in the commit")
                return _real(*args, **kwargs)

            blockjobs.wait_pivot = _wait_pivot
        elif fault == "crash-after-copy":
            from sensu_kvm.backup import archive

            real_close = archive.ArchiveWriter.close

            def _close(writer, *args, _real=real_close, **kwargs):
                _real(writer, *args, **kwargs)
                raise RuntimeError("injected fault: after the copy")

            archive.ArchiveWriter.close = _close
        elif fault.startswith("pause-after-phase:"):
            import time

            from sensu_kvm.backup.journal import Journal

            phase = fault.split(":", 1)[1]
            real_save = Journal.save

            def _save(journal, _real=real_save, _phase=phase, **changes):
                _real(journal, **changes)
                if changes.get("phase") == _phase:
                    time.sleep(1.5)

            Journal.save = _save
        elif fault == "commit-refused":
            def _no_commit(*_args, **_kwargs):
                raise _libvirt_error("injected fault: block commit refused")

            libvirt.virDomain.blockCommit = _no_commit
        elif fault == "slow-snapshot":
            import time

            real_snapshot = libvirt.virDomain.snapshotCreateXML

            def _snapshot(dom, *args, _real=real_snapshot, **kwargs):
                result = _real(dom, *args, **kwargs)
                time.sleep(1.5)
                return result

            libvirt.virDomain.snapshotCreateXML = _snapshot
        elif fault == "no-backup-api":
            real_caps = libvirt.virConnect.getDomainCapabilities

            def _caps(conn, *args, _real=real_caps, **kwargs):
                return _real(conn, *args, **kwargs).replace("<backup supported='yes'/>", "<backup supported='no'/>")

            libvirt.virConnect.getDomainCapabilities = _caps
        elif fault == "log-domain-calls":
            log_path = os.environ["SPK_CALL_LOG"]

            def _logged(name, real, log_path=log_path):
                def call(dom, *args, **kwargs):
                    with open(log_path, "a") as log:
                        log.write(name + "\n")
                    return real(dom, *args, **kwargs)
                return call

            for attr in dir(libvirt.virDomain):
                if not attr.startswith("_") and callable(getattr(libvirt.virDomain, attr)):
                    setattr(libvirt.virDomain, attr, _logged(attr, getattr(libvirt.virDomain, attr)))
        elif fault == "log-connections":
            log_path = os.environ["SPK_CALL_LOG"]

            def _opener(kind, real, log_path=log_path):
                def opened(uri=None, *args, **kwargs):
                    with open(log_path, "a") as log:
                        log.write(f"{kind} {uri}\n")
                    return real(uri, *args, **kwargs)
                return opened

            libvirt.openReadOnly = _opener("read-only", libvirt.openReadOnly)
            libvirt.open = _opener("read-write", libvirt.open)
        else:
            raise SystemExit(f"unknown SPK_FAULT {fault!r}")
