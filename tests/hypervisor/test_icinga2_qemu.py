"""A real Icinga 2 runs check-kvm-domstate against the real hypervisor through the shipped
CheckCommand with its own defaults (``kvm_uri`` qemu:///system, ``kvm_timeout`` 10,
``kvm_state_dir``, which check-kvm-domstate uses only with --per-domain): nothing but the
commands' folder is set. Icinga 2 runs it as user nagios over the read-only libvirt socket
(relayed as tests/services/nagios.py explains). It only reads: it makes no domain and counts on
none, so the states it finds are whatever the host has; what it recorded must agree with itself.
"""

from __future__ import annotations

import re

from sensu_kvm.registry import ICINGA2_STATE_DIR
from tests.rig import rig
from tests.services import icinga2, schedulers
from tests.services.schedulers import Case

SERVICE = "qemu-check-kvm-domstate"
STATES = ["nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended",
          "unreadable", "missing"]


def test_icinga2_runs_domstate_on_the_real_host_with_the_shipped_defaults() -> None:
    rig.ensure_host()
    case = Case("check-kvm-domstate", "qemu")
    with icinga2.running({SERVICE: icinga2.Service(case.command)}, check_interval=5) as icinga:
        rig.wait_for(lambda: icinga.results().get(SERVICE), 60, interval=0.25, what="a result of check-kvm-domstate")
        icinga.stop()
        result = icinga.results()[SERVICE][0]
        log = icinga.log()
    [execution, *_] = [e for e in icinga2.executions(log) if e.argv[0] == schedulers.command_path(case.command)]
    assert execution.argv[1:] == ("--state-dir", ICINGA2_STATE_DIR, "--timeout", "10", "--uri", "qemu:///system"), \
        execution
    # it connected (read-only, as user nagios): not UNKNOWN, and the state is its exit code
    assert execution.exit_code in (0, 1, 2), (execution, result)
    assert result.state == execution.exit_code
    labels = [label for label, _ in schedulers.split_items(result.perfdata)]
    assert labels[:len(STATES)] == STATES, result.perfdata
    assert not [line for line in log.splitlines() if re.search(r"\] (warning|critical)/", line)]
