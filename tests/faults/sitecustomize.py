"""Fault injection for tests: loaded into a real command's process through PYTHONPATH.

The faults stand in for failures that the real hypervisors here cannot be made to produce on
demand. SPK_FAULT names one or more, separated by ";":
  crash-in-gather      virt.gather raises an unexpected RuntimeError (a bug in our code)
  bulk-stats-fail      virConnectGetAllDomainStats fails (an old or partial driver)
  state-fails:NAME     virDomainGetState fails for the domain NAME
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
        elif fault.startswith("state-fails:"):
            victim = fault.split(":", 1)[1]
            real_state = libvirt.virDomain.state

            def _state(dom, flags=0, _real=real_state, _victim=victim):
                if dom.name() == _victim:
                    raise _libvirt_error("injected fault: cannot read state")
                return _real(dom, flags)

            libvirt.virDomain.state = _state
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
