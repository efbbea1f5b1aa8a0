"""Fault injection for tests: loaded into a real command's process through PYTHONPATH.

SPK_FAULT names the fault:
  crash-in-gather   virt.gather raises an unexpected RuntimeError (a bug in our code)
"""

import os

fault = os.environ.get("SPK_FAULT")
if fault == "crash-in-gather":
    from sensu_kvm import virt

    def _broken(*_args, **_kwargs):
        raise RuntimeError("injected fault: stats dict had no entries")

    virt.gather = _broken
