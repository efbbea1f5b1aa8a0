"""A real Icinga 2 (Debian's icinga2) runs every check through the shipped CheckCommands
(packaging/icinga2/sensu-plugins-kvm.conf, included as shipped), as user nagios, over the hostile
names of tests/data/nodes/names.xml and over 1,000 domains, with its PerfdataWriter and
GraphiteWriter enabled.

Icinga 2 is started once for the module; each check runs as one Service whose custom variables
set only the URI, the sample folder and the backup folders (every other option is the
CheckCommand's own). Once every Service has its first result, Icinga 2 is stopped and the tests
read what it recorded: the command lines and exit codes it logged, the state and perfdata its
PerfdataWriter wrote, the lines its GraphiteWriter sent (to a listener of the test), and its log.
Each is compared with the check run here with the same options (tests/services/schedulers.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sensu_kvm import wiring
from sensu_kvm.registry import BY_NAME, Takes
from tests.conftest import DATA, node_uri
from tests.rig import rig
from tests.services import icinga2, schedulers
from tests.services.schedulers import Case, Site

CASES = schedulers.cases()
# Seconds between checks: the first check of each Service comes within this. Not shorter: the
# 1,000-domain checks take 1-2 s of CPU each, and at 5 s on 2 cores Icinga 2's 20 s timeout ended
# some of them while the machine was busy.
INTERVAL = 15


def variables(case: Case, options: dict[str, str]) -> dict[str, object]:
    """The Service's custom variables for these options (the command's own variable names)."""
    command = BY_NAME[case.command]
    by_flag = {option.flag: option for option in command.options}
    return {command.variable(by_flag[flag]): value for flag, value in options.items()}


def expected_argv(case: Case, options: dict[str, str]) -> list[tuple[str, str]]:
    """(option, value) of the command line the CheckCommand should make: its own variables, then the
    Service's, each option once per list item, a flag with an empty value."""
    command = BY_NAME[case.command]
    values = {**wiring.icinga_defaults(command), **variables(case, options)}
    found = []
    for option in command.options:
        value = values.get(command.variable(option))
        if value is None or value is False:
            continue
        if option.takes is Takes.FLAG:
            found.append((option.flag, ""))
        else:
            for item in value if isinstance(value, list) else [value]:
                found.append((option.flag, str(item)))
    return sorted(found)


def pairs(argv: tuple[str, ...], case: Case) -> list[tuple[str, str]]:
    """(option, value) of a logged command line, by the command's declared options."""
    takes = {option.flag: option.takes for option in BY_NAME[case.command].options}
    found = []
    words = list(argv[1:])
    while words:
        word = words.pop(0)
        found.append((word, "" if takes.get(word) is Takes.FLAG else (words.pop(0) if words else "")))
    return sorted(found)


@dataclass
class Recorded:
    """What Icinga 2 recorded, read after it stopped."""

    site: Site
    options: dict[Case, dict[str, str]]
    results: dict[str, list[icinga2.Result]]
    executions: list[icinga2.Execution]
    graphite: list[str]
    graphite_connected_at: float
    log: str
    stopped_at: float  # when the test stopped Icinga 2, which ends the checks still running then

    def warnings(self) -> list[str]:
        """The log's warning and critical lines, and any about invalid perfdata, but for the
        checks Icinga 2 itself ended when it was stopped (SIGTERM, in the second of the stop)."""
        stop = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(self.stopped_at)))
        return [line for line in self.log.splitlines()
                if (re.search(r"\] (warning|critical)/", line) or "invalid perfdata" in line.lower())
                and not ("signal 15 (Terminated)" in line and line[1:20] >= stop)]

    def first(self, case: Case) -> icinga2.Result:
        assert self.results.get(case.service), f"Icinga 2 recorded no result of {case.service}"
        return self.results[case.service][0]

    def execution(self, case: Case) -> icinga2.Execution:
        """The first run of the case's command line that Icinga 2 logged."""
        wanted = expected_argv(case, self.options[case])
        for execution in self.executions:
            if execution.argv[0] == schedulers.command_path(case.command) and pairs(execution.argv, case) == wanted:
                return execution
        ran = [e.argv for e in self.executions if e.argv[0].endswith("/" + case.command)]
        raise AssertionError(f"Icinga 2 never ran {case.command} with {wanted}; it ran: {ran}")


def graphite_counts(lines: list[str], case: Case) -> dict[int, int]:
    """{timestamp: number of '<prefix>.perfdata.<label>.value' lines}: one line per perfdata item of
    each check result the GraphiteWriter sent."""
    prefix = f"icinga2.{icinga2.HOST}.services.{case.service}.{case.command}.perfdata."
    sent: dict[int, int] = {}
    for line in lines:
        path, _, rest = line.partition(" ")
        if path.startswith(prefix) and path.endswith(".value"):
            stamp = int(rest.rsplit(" ", 1)[-1])
            sent[stamp] = sent.get(stamp, 0) + 1
    return sent


def sent_after(results: list[icinga2.Result], connected_at: float) -> list[icinga2.Result]:
    """The results of checks that ended once the GraphiteWriter had connected (it drops the others)."""
    return [result for result in results if result.time >= connected_at + 1]


@pytest.fixture(scope="module")
def recorded() -> Iterator[Recorded]:
    with schedulers.site() as site:
        options = {case: site.options(case, "icinga2") for case in CASES}
        services = {case.service: icinga2.Service(case.command, variables(case, options[case])) for case in CASES}
        services[schedulers.NAMED_SERVICE] = icinga2.Service("check-kvm-domstate", {
            "kvm_uri": node_uri("names.xml"), "kvm_domain": schedulers.named_domains()})
        with icinga2.running(services, check_interval=INTERVAL, extra_paths=[site.root, DATA / "nodes"]) as icinga:

            def complete() -> bool:
                results, connected = icinga.results(), icinga.sink.connected_at
                return connected is not None and schedulers.NAMED_SERVICE in results and all(
                    sent_after(results.get(c.service, []), connected) for c in CASES)

            try:
                rig.wait_for(complete, 120, interval=0.5, what="a result of every Service after Graphite connected")
            except TimeoutError as err:
                missing = set(icinga.services_defined) - set(icinga.results())
                raise AssertionError(f"{err}; no result of {sorted(missing)}\n{icinga.log()[-4000:]}") from None
            stopped_at = time.time()
            icinga.stop()  # Icinga 2 writes out what its PerfdataWriter and GraphiteWriter still hold
            time.sleep(0.5)  # the listener's last reads
            assert icinga.sink.connected_at is not None
            snapshot = Recorded(site, options, icinga.results(), icinga2.executions(icinga.log()), icinga.sink.lines(),
                                icinga.sink.connected_at, icinga.log(), stopped_at)
        yield snapshot


@pytest.mark.parametrize("case", CASES, ids=str)
def test_icinga2_runs_the_shipped_command_line_and_its_state_is_the_exit_code(recorded: Recorded, case: Case) -> None:
    execution = recorded.execution(case)
    printed = schedulers.reference(case, recorded.options[case])
    assert execution.exit_code == printed.returncode, (case, printed.stdout[:2000])
    assert recorded.first(case).state == min(execution.exit_code, 3), case


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_perfdata_item_reaches_the_perfdata_writer_and_graphite_whole(recorded: Recorded, case: Case) -> None:
    printed = schedulers.reference(case, recorded.options[case]).items
    written = schedulers.split_items(recorded.first(case).perfdata)
    assert [label for label, _ in written] == [label for label, _ in printed], (case, recorded.first(case))
    # GraphiteWriter: one value line per item of the first result it sent
    sent = graphite_counts(recorded.graphite, case)
    result = sent_after(recorded.results[case.service], recorded.graphite_connected_at)[0]
    assert sent.get(int(result.time), 0) == len(schedulers.split_items(result.perfdata)), (case, result)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_icinga2_logs_no_invalid_perfdata_and_no_warning(recorded: Recorded, case: Case) -> None:
    checkable = f"'{icinga2.HOST}!{case.service}'"
    bad = [line for line in recorded.warnings() if checkable in line]
    assert not bad, "\n".join(bad[:5])


def test_icinga2_passes_hostile_domain_names_to_the_check_whole(recorded: Recorded) -> None:
    """kvm_domain = [every hostile name]: Icinga 2 gives each to --domain as it is (no shell), and
    the check finds every one of them."""
    names = schedulers.named_domains()
    [execution, *_] = [e for e in recorded.executions if "--domain" in e.argv]
    given = [execution.argv[i + 1] for i, word in enumerate(execution.argv) if word == "--domain"]
    assert given == names
    printed = schedulers.named_reference()
    assert execution.exit_code == printed.returncode, printed.stdout
    result = recorded.results[schedulers.NAMED_SERVICE][0]
    assert result.state == min(printed.returncode, 3)
    assert [label for label, _ in schedulers.split_items(result.perfdata)] == [label for label, _ in printed.items]
    assert schedulers.none_missing(result.perfdata), result


def test_icinga2_logs_no_perfdata_warning_at_all(recorded: Recorded) -> None:
    bad = recorded.warnings()
    assert not bad, "\n".join(bad[:10])


def test_the_example_services_apply_to_hypervisors_and_guests() -> None:
    hosts = """
object CheckCommand "spk-host-up" { command = [ "/bin/true" ] }
object Host "kvm1" { check_command = "spk-host-up"; vars.kvm_hypervisor = true }
object Host "guest1" { check_command = "spk-host-up"; vars.kvm_guest = true }
object Host "other" { check_command = "spk-host-up" }
"""
    text = f'include "{icinga2.COMMANDS}"\ninclude "{icinga2.SERVICES}"\n{hosts}'
    _, listed = icinga2.check_config(text)
    services = set(re.findall(r"^Object '([^']+)' of type 'Service'", listed, re.MULTILINE))
    hypervisor = {f"kvm1!{wiring.service_name(c)}" for c in wiring.scheduled() if c.subscription == "kvm-hypervisor"}
    guest = {f"guest1!{wiring.service_name(c)}" for c in wiring.scheduled() if c.subscription == "kvm-guest"}
    assert services == hypervisor | guest
    commands = set(re.findall(r"^Object '([^']+)' of type 'CheckCommand'", listed, re.MULTILINE))
    assert {c.name for c in wiring.scheduled()} <= commands
