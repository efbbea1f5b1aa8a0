"""A real nagios4 (Debian's nagios4-core 4.4.6) runs every check through the shipped command
definitions (packaging/nagios/sensu-plugins-kvm.cfg, as shipped, with $USER5$ set to the venv's
bin in its resource file), as user nagios, over the hostile names of tests/data/nodes/names.xml
and over 1,000 domains, with process_performance_data and a service perfdata file.

nagios4 is started once for the module. Each service's check_command gives the shipped command
only the URI, the sample folder and the backup folders in $ARG1$. Its check interval is longer
than the module runs, so each service is checked once; then Nagios is stopped and the tests read
status.dat and the service perfdata file, and compare them with the check run here with the same
options (tests/services/schedulers.py).

nagios4 4.4.6 keeps an output of up to 8 KB whole; above 8192 bytes it cuts the output at 8192
bytes in some runs (measured: 4 to 24 % of the runs with 8.3 to 60 KB; nagioscore issue #625), so
each check's whole output must stay within 8 KB: the shipped definitions give --max-output 8000,
and the reference run here gives it too (the shipped command line is not the test's to repeat).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sensu_kvm import wiring
from sensu_kvm.registry import NAGIOS_MAX_OUTPUT
from tests.conftest import DATA, node_uri
from tests.rig import rig
from tests.services import nagios, schedulers
from tests.services.schedulers import Case, Site

CASES = schedulers.cases()
NAGIOS_OUTPUT_LIMIT = 8192  # bytes nagios4 4.4.6 keeps whole in every run (see the module's docstring)
ROOT = nagios.SHIPPED_COMMANDS.parents[2]
EXAMPLE_SERVICES = ROOT / "packaging" / "nagios" / "sensu-plugins-kvm-services.cfg"


def check_command(case: Case, options: dict[str, str]) -> str:
    words = [word for option, value in options.items() for word in (option, value)]
    return f"{case.command}!{wiring.nagios_argument(shlex.join(words))}"


@dataclass
class Recorded:
    site: Site
    options: dict[Case, dict[str, str]]
    statuses: dict[str, nagios.ServiceStatus]
    perfdata: dict[str, list[nagios.PerfdataRecord]]
    log: str


@pytest.fixture(scope="module")
def recorded() -> Iterator[Recorded]:
    with schedulers.site() as site:
        options = {case: site.options(case, "nagios") for case in CASES}
        services = {case.service: check_command(case, options[case]) for case in CASES}
        named = ["--uri", node_uri("names.xml")] + [w for n in schedulers.named_domains() for w in ("-d", n)]
        services[schedulers.NAMED_SERVICE] = f"check-kvm-domstate!{wiring.nagios_argument(shlex.join(named))}"
        with nagios.running(services, check_interval=3600, retry_interval=3600, cfg_files=[nagios.SHIPPED_COMMANDS],
                            extra_paths=[site.root, DATA / "nodes"]) as instance:

            def checked() -> bool:
                statuses = instance.services()
                return all(s in statuses and statuses[s].last_check > 0 for s in instance.services_defined)

            try:
                rig.wait_for(checked, 120, interval=0.5, what="a check of every service")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{instance.log()[-3000:]}") from None
            time.sleep(1.5)  # status.dat is rewritten every second; the perfdata file on each result
            snapshot = Recorded(site, options, instance.services(), instance.perfdata(), instance.log())
        yield snapshot


def reference(recorded: Recorded, case: Case) -> schedulers.Printed:
    """The check run here as the shipped definition runs it, with the case's options."""
    return schedulers.reference(case, {**recorded.options[case], "--max-output": str(NAGIOS_MAX_OUTPUT)})


def test_the_shipped_definitions_bound_the_output() -> None:
    text = nagios.SHIPPED_COMMANDS.read_text()
    lines = [line for line in text.splitlines() if line.strip().startswith("command_line")]
    assert lines and all(f"--max-output {NAGIOS_MAX_OUTPUT} $ARG1$" in line for line in lines), lines


@pytest.mark.parametrize("case", CASES, ids=str)
def test_nagios_state_is_the_exit_code(recorded: Recorded, case: Case) -> None:
    printed = reference(recorded, case)
    status = recorded.statuses[case.service]
    assert status.current_state == min(printed.returncode, 3), (case, status, printed.stdout[:2000])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_perfdata_item_reaches_the_service_perfdata_file_whole(recorded: Recorded, case: Case) -> None:
    printed = reference(recorded, case)
    labels = [label for label, _ in printed.items]
    records = recorded.perfdata.get(case.service, [])
    # one check per service (a result without perfdata may have no line)
    written = [[label for label, _ in schedulers.split_items(record.perfdata)] for record in records]
    assert written == [labels] or (not labels and not written), (case, records)
    assert all(record.state == min(printed.returncode, 3) for record in records)
    status = recorded.statuses[case.service]
    assert [label for label, _ in schedulers.split_items(status.performance_data)] == labels, case


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_output_fits_what_nagios4_keeps_whole(recorded: Recorded, case: Case) -> None:
    printed = reference(recorded, case)
    assert len(printed.stdout.encode()) <= NAGIOS_OUTPUT_LIMIT, (case, len(printed.stdout.encode()))
    whole = schedulers.reference(case, recorded.options[case])  # the same run without the bound
    if len(whole.stdout.encode()) > NAGIOS_MAX_OUTPUT:
        assert "left out to stay within --max-output 8000 bytes" in printed.stdout, case
        assert printed.stdout.split(":")[0] == whole.stdout.split(":")[0], case  # the same status
    else:  # the same items (live values such as the host's memory differ from run to run)
        assert [label for label, _ in printed.items] == [label for label, _ in whole.items], case


def test_nagios_passes_hostile_domain_names_to_the_check_whole(recorded: Recorded) -> None:
    """$ARG1$ with -d for every hostile name (quoted for the shell, '!', ';' and '$' escaped as the
    shipped file says): the check finds every one of them."""
    printed = schedulers.named_reference()
    status = recorded.statuses[schedulers.NAMED_SERVICE]
    assert status.current_state == min(printed.returncode, 3), (status, printed.stdout[:2000])
    labels = [label for label, _ in schedulers.split_items(status.performance_data)]
    assert labels == [label for label, _ in printed.items], status
    assert schedulers.none_missing(status.performance_data), status


def test_nagios_logs_no_warning(recorded: Recorded) -> None:
    bad = [line for line in recorded.log.splitlines() if re.match(r"\[\d+\] (Warning|Error)\b", line)]
    assert not bad, "\n".join(bad[:10])


def test_the_example_services_validate_with_the_shipped_commands() -> None:
    objects = """
define timeperiod {
    timeperiod_name          always
    alias                    always
    monday                   00:00-24:00
}
define command {
    command_name             spk-true
    command_line             /bin/true
}
define contact {
    contact_name                    nobody
    host_notifications_enabled      0
    service_notifications_enabled   0
    host_notification_period        always
    service_notification_period     always
    host_notification_options       n
    service_notification_options    n
    host_notification_commands      spk-true
    service_notification_commands   spk-true
}
define service {
    name                     generic-service
    register                 0
    check_period             always
    max_check_attempts       3
    check_interval           10
    retry_interval           2
    notification_period      always
    notification_interval    60
    contacts                 nobody
}
define host {
    host_name                kvm1
    address                  192.0.2.10
    hostgroups               kvm-hypervisors
    check_command            spk-true
    max_check_attempts       1
    check_period             always
    notification_period      always
    contacts                 nobody
}
"""
    hypervisor_checks = [c for c in wiring.scheduled() if c.subscription == "kvm-hypervisor"]
    output = nagios.check_config([nagios.SHIPPED_COMMANDS, EXAMPLE_SERVICES], objects)
    assert f"Checked {len(hypervisor_checks)} services." in output, output
    assert f"Checked {len(wiring.scheduled()) + 1} commands." in output, output
