"""Every command of sensu-plugins-kvm in one table: what it is, what runs it, how Sensu is told.

This table is the one place to add or change a command. `make wiring` (``sensu_kvm.wiring``)
writes from it setup.cfg's console_scripts, the Sensu Core 1.x definitions in conf.d/, the Sensu Go
resources packaging/sensu-go/checks.yaml and handlers.yaml, the Icinga 2 CheckCommands and Nagios
commands (packaging/icinga2/, packaging/nagios/), and the command table at the top of the README;
tests/testdriver/test_wiring.py fails when a committed file differs from what this table gives.
The tests that walk every command take the list from the installed entry points, which this
table writes. Nothing here imports more than the standard library: the generator runs
from a checkout, and the table is read by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

URI = "qemu:///system"  # the libvirt URI of every shipped definition
# --state-dir of the rate checks under sensu-agent (its own cache directory, writable by its user)
AGENT_STATE_DIR = "/var/cache/sensu/sensu-agent/sensu-plugins-kvm"
BACKEND_STATE_DIR = "/var/cache/sensu/sensu-backend/sensu-plugins-kvm"
ASSET = "sensu-plugins-kvm"  # the Sensu Go runtime asset (packaging/sensu-go/asset.yaml)
# --state-dir of the rate checks under Icinga 2 and nagios4 (both run checks as user nagios, who
# owns these directories on Debian)
ICINGA2_STATE_DIR = "/var/cache/icinga2/sensu-plugins-kvm"
NAGIOS_STATE_DIR = "/var/lib/nagios4/sensu-plugins-kvm"
# nagios4 4.4.6 cuts a plugin's output above 8,192 bytes in some runs (measured: 4 to 24 % of the
# runs of 8.3 to 60 KB; nagioscore issue #625): the shipped Nagios definitions keep it below.
NAGIOS_MAX_OUTPUT = 8000
PLUGIN_DIR = "/usr/local/bin"  # where `pip install .` puts the commands: the default of the Icinga 2 and Nagios files


class Kind(str, Enum):
    CHECK = "check"  # a check on the hypervisor host: exit 0/1/2/3, one status line, perfdata
    METRICS = "metrics"  # counters and gauges for a time-series database
    GUEST_CHECK = "guest check"  # a check inside a guest, by the guest's own Sensu client
    HANDLER = "handler"  # reads a Sensu event on stdin and acts
    TOOL = "tool"  # run by hand or from cron: exit 0 done, 1 failure, 2 bad input


class Access(str, Enum):
    """The libvirt connection a command opens (docs/decisions.md, D3 least privilege)."""

    NONE = "none"  # no libvirt at all (psutil)
    READ_ONLY = "read-only"
    # libvirt refuses guest agent and QEMU monitor calls on a read-only connection
    READ_ONLY_AGENT_READ_WRITE = "read-only; read-write for the guest agent and monitor calls only"
    READ_WRITE_TO_ACT = "read-only; read-write for what changes a domain"


class Takes(str, Enum):
    """What an option takes, for a scheduler's argument definitions."""

    VALUE = "value"  # one value
    LIST = "list"  # repeatable: the option once per item
    FLAG = "flag"  # nothing: given or not


@dataclass(frozen=True)
class Option:
    """An option of a check that the Icinga 2 CheckCommand offers as an argument.

    Its custom variable is ``kvm_<option>`` when the option means the same for every command that
    has it (so that it can be set once on a host: the URI, the domains, the timeout), else
    ``kvm_<command>_<option>`` (thresholds and the rest), so that a host-wide value never reaches
    a command it was not meant for.
    """

    flag: str  # the long form, which the definitions use: --state-dir
    short: str = ""  # the short form, if any: -w (the shipped option strings may use it)
    takes: Takes = Takes.VALUE
    shared: bool = False


URI_OPTIONS = (Option("--uri", "-u", shared=True), Option("--domain", "-d", Takes.LIST, shared=True),
               Option("--match", shared=True), Option("--exclude", shared=True), Option("--concurrency", shared=True))
RUN_OPTIONS = (Option("--timeout", "-t", shared=True), Option("--verbose", "-v", Takes.FLAG, shared=True),
               Option("--max-output", shared=True))
THRESHOLDS = (Option("--warning", "-w"), Option("--critical", "-c"))
# --state-dir: the rate checks' samples, and what --per-domain keeps (every libvirt check has it but
# check-kvm-backup-age, whose --state-dir is kvm-backup's)
STATE_OPTIONS = (Option("--state-dir", shared=True),)
RATE_OPTIONS = (Option("--interval", shared=True), Option("--min-interval", shared=True))


@dataclass(frozen=True)
class CheckDefinition:
    """How Sensu runs a check or metrics command: conf.d/<name>.json and its Sensu Go CheckConfig.

    The command line of each is ``<name> [-u URI] -t <command timeout> <options>``; -u is given to
    every command that opens libvirt.
    """

    core_options: str = ""  # the command's options in conf.d (Sensu Core 1.x)
    go_options: str = ""  # ... in checks.yaml (Sensu Go), e.g. an agent-writable --state-dir
    interval: int = 60  # seconds between runs
    timeout: int = 20  # Sensu's own timeout: a backstop above the command's -t
    occurrences: int | None = 2  # Sensu Core: events before the handlers run (None: not set)
    refresh: int | None = 1800  # Sensu Core: seconds between repeated handler runs (None: not set)
    core_handlers: tuple[str, ...] = ("default",)
    go_handlers: tuple[str, ...] = ("default",)
    go_metric_format: str = "nagios_perfdata"  # output_metric_format
    go_metric_tags: tuple[tuple[str, str], ...] = ()  # output_metric_tags (name, value)
    go_note: str = ""  # the comment above the CheckConfig in checks.yaml


@dataclass(frozen=True)
class HandlerDefinition:
    """How Sensu runs a handler: conf.d/handler-<sensu name>.json and its Sensu Go Handler."""

    sensu_name: str  # the name checks and filters refer to
    core_options: str
    go_options: str
    timeout: int
    core_severities: tuple[str, ...]  # empty: not set (Sensu Core then handles every severity)
    core_filters: tuple[str, ...]
    go_filters: tuple[str, ...]
    go_note: str = ""  # the comment above the Handler in handlers.yaml


@dataclass(frozen=True)
class Command:
    name: str  # the console script
    target: str  # module:function
    kind: Kind
    watches: str  # one line for the README's command table (Markdown)
    access: Access
    check: CheckDefinition | None = None  # shipped Sensu check definitions, if any
    handler: HandlerDefinition | None = None  # shipped Sensu handler definitions, if any
    command_timeout: int = 10  # the -t of the shipped check definitions
    # The options the Icinga 2 CheckCommand offers: every option of --help but -h, -V and the ones
    # only Sensu uses (--per-domain*); test_wiring checks that they agree with --help.
    options: tuple[Option, ...] = ()

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def function(self) -> str:
        return self.target.partition(":")[2]

    @property
    def core_file(self) -> str | None:
        """The Sensu Core 1.x file that defines it, relative to the top of the tree."""
        if self.check is not None:
            return f"conf.d/guest/{self.name}.json" if self.kind is Kind.GUEST_CHECK else f"conf.d/{self.name}.json"
        if self.handler is not None:
            return f"conf.d/handler-{self.handler.sensu_name}.json"
        return None

    @property
    def standalone_file(self) -> str | None:
        """The standalone variant of a hypervisor check's Sensu Core 1.x file (conf.d/standalone/)."""
        if self.check is not None and self.kind is not Kind.GUEST_CHECK:
            return f"conf.d/standalone/{self.name}.json"
        return None

    @property
    def go_file(self) -> str | None:
        """The Sensu Go file that defines it, relative to the top of the tree."""
        if self.check is not None:
            return "packaging/sensu-go/checks.yaml"
        if self.handler is not None:
            return "packaging/sensu-go/handlers.yaml"
        return None

    @property
    def scheduled(self) -> bool:
        """Whether Icinga 2 and Nagios get a definition: the checks (metrics-kvm prints no Nagios
        plugin output; Icinga 2 sends perfdata to Graphite and InfluxDB itself)."""
        return self.kind in (Kind.CHECK, Kind.GUEST_CHECK)

    @property
    def short_name(self) -> str:
        """check-kvm-snapshot-age -> snapshot_age, check-memory-percent -> memory_percent: the middle
        part of its Icinga 2 custom variables."""
        for prefix in ("check-kvm-", "check-", "metrics-"):
            if self.name.startswith(prefix):
                return self.name[len(prefix):].replace("-", "_")
        return self.name.replace("-", "_")

    def variable(self, option: Option) -> str:
        """The Icinga 2 custom variable of one of its options: kvm_uri, kvm_vcpu_warning."""
        word = option.flag.lstrip("-").replace("-", "_")
        return f"kvm_{word}" if option.shared else f"kvm_{self.short_name}_{word}"

    @property
    def subscription(self) -> str:
        """The Sensu Go subscription of its CheckConfig."""
        return "kvm-guest" if self.kind is Kind.GUEST_CHECK else "kvm-hypervisor"

    def per_domain_options(self) -> str:
        """What a check given --per-domain also says about its schedule, for the per-domain results."""
        check = self.check
        if check is None:
            return ""
        words = [f"--per-domain-interval {check.interval}"]
        if check.occurrences is not None:
            words.append(f"--per-domain-occurrences {check.occurrences}")
        if check.refresh is not None:
            words.append(f"--per-domain-refresh {check.refresh}")
        return " ".join(words)

    def command_line(self, options: str, timeout: bool = True) -> str:
        """The shipped command line with these options (and the per-domain schedule after --per-domain)."""
        if "--per-domain " in f"{options} ":
            options = f"{options} {self.per_domain_options()}"
        words = [self.name]
        if self.access is not Access.NONE:
            words += ["-u", URI]
        if timeout:
            words += ["-t", str(self.command_timeout)]
        if options:
            words.append(options)
        return " ".join(words)


# Hypervisor checks, metrics, the guest check, the handlers, then the tools: the order of every
# generated file.
COMMANDS: tuple[Command, ...] = (
    Command(
        "check-kvm-domstate", "sensu_kvm.checks.domstate:main", Kind.CHECK,
        "every domain's state and reason: crashed, paused by a full disk, shut off while marked autostart, deleted",
        Access.READ_ONLY,
        CheckDefinition(
            core_options="--per-domain sensu --per-domain-handler default --per-domain-handler kvm-remediate",
            go_options=f"--per-domain sensu-go --per-domain-handler default --per-domain-handler kvm-remediate "
                       f"--state-dir {AGENT_STATE_DIR}",
        ),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RUN_OPTIONS + (Option("--expect-running", takes=Takes.FLAG),),
    ),
    Command(
        "check-kvm-vcpu", "sensu_kvm.checks.vcpu:main", Kind.CHECK,
        "vCPU usage % of each domain, and steal (vCPUs waiting for a host CPU: overcommit)",
        Access.READ_ONLY,
        CheckDefinition(go_options=f"--state-dir {AGENT_STATE_DIR}"),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RATE_OPTIONS + RUN_OPTIONS + (
            Option("--steal-warning"), Option("--steal-critical"), Option("--expect-vcpus")),
    ),
    Command(
        "check-kvm-memory", "sensu_kvm.checks.memory:main", Kind.CHECK,
        "memory used % of each domain, from the guest's balloon statistics or the host's view",
        Access.READ_ONLY,
        CheckDefinition(),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RUN_OPTIONS + (Option("--view"),),
    ),
    Command(
        "check-kvm-blkerror", "sensu_kvm.checks.blkerror:main", Kind.CHECK,
        "disk errors QEMU recorded (`no space`, `unspecified error`), like `virsh domblkerror`",
        Access.READ_ONLY,
        CheckDefinition(),
        options=URI_OPTIONS + STATE_OPTIONS + RUN_OPTIONS,
    ),
    Command(
        "check-kvm-blkstat", "sensu_kvm.checks.blkstat:main", Kind.CHECK,
        "per disk: IOPS, bytes/s, latency, flushes/s, allocation % of capacity",
        Access.READ_ONLY,
        CheckDefinition(go_options=f"--state-dir {AGENT_STATE_DIR}"),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RATE_OPTIONS + RUN_OPTIONS + (
            Option("--metric", "-m"), Option("--device", takes=Takes.LIST)),
    ),
    Command(
        "check-kvm-netstat", "sensu_kvm.checks.netstat:main", Kind.CHECK,
        "per interface: bytes/s, packets/s, errors/s and drops/s received and sent",
        Access.READ_ONLY,
        CheckDefinition(go_options=f"--state-dir {AGENT_STATE_DIR}"),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RATE_OPTIONS + RUN_OPTIONS + (
            Option("--metric", "-m"), Option("--interface", takes=Takes.LIST)),
    ),
    Command(
        "check-kvm-host", "sensu_kvm.checks.host:main", Kind.CHECK,
        "the host: CPU busy %, memory and swap used %, free space of the file systems holding disk images",
        Access.READ_ONLY,
        CheckDefinition(go_options=f"--state-dir {AGENT_STATE_DIR}"),
        options=URI_OPTIONS + STATE_OPTIONS + RATE_OPTIONS + RUN_OPTIONS + tuple(
            Option(f"--{resource}-{level}") for resource in ("cpu", "memory", "swap", "fs")
            for level in ("warning", "critical")),
    ),
    Command(
        "check-kvm-pool", "sensu_kvm.checks.pool:main", Kind.CHECK,
        "storage pools: state (inactive, degraded, inaccessible), used % and bytes left, thin-provisioning overcommit",
        Access.READ_ONLY,
        CheckDefinition(
            interval=300,
            go_note="Storage pools: inactive (CRITICAL when autostart), degraded, inaccessible or with a missing\n"
                    "target; used % (WARNING 80, CRITICAL 90) and overcommit of thin pools (WARNING above 100%).",
        ),
        # pools, not domains: -p instead of -d, and --match/--exclude on pool names (not shared)
        options=(Option("--uri", "-u", shared=True), Option("--pool", "-p", Takes.LIST), Option("--match"),
                 Option("--exclude"), Option("--concurrency", shared=True), *THRESHOLDS,
                 Option("--available-warning"), Option("--available-critical"), Option("--overcommit-warning"),
                 Option("--overcommit-critical"), *RUN_OPTIONS),
    ),
    Command(
        "check-kvm-blockjob", "sensu_kvm.checks.blockjob:main", Kind.CHECK,
        "block jobs (copy, commit, pull, backup) stalled, too old or left by kvm-backup; backing chains too deep",
        Access.READ_ONLY,
        CheckDefinition(
            go_options=f"--state-dir {AGENT_STATE_DIR}", interval=300,
            go_note="Block jobs that make no progress between runs (WARNING), run longer than 6h (WARNING) / 24h\n"
                    "(CRITICAL) or wait for a pivot nobody makes, and backing chains deeper than 3 (WARNING).",
        ),
        options=URI_OPTIONS + STATE_OPTIONS + RUN_OPTIONS + (
            Option("--age-warning"), Option("--age-critical"), Option("--chain-warning"), Option("--chain-critical"),
            Option("--backup-state-dir")),
    ),
    Command(
        "check-kvm-snapshot-age", "sensu_kvm.checks.snapshot_age:main", Kind.CHECK,
        "snapshots piling up: oldest age, count, and overlays that no snapshot knows about",
        Access.READ_ONLY,
        CheckDefinition(
            core_options="-w 3d -c 7d", go_options="-w 3d -c 7d", interval=3600, occurrences=1, refresh=86400,
            go_note="Snapshots piling up (oldest older than 3d WARNING, 7d CRITICAL; more than 10 WARNING) and\n"
                    "overlays no snapshot knows about. Hourly is enough for ages counted in days.",
        ),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RUN_OPTIONS + (
            Option("--count-warning"), Option("--count-critical"), Option("--allow-backing")),
    ),
    Command(
        "check-kvm-guest-agent", "sensu_kvm.checks.guest_agent:main", Kind.CHECK,
        "the QEMU guest agent answers; used % of the guests' file systems (guest info)",
        Access.READ_ONLY_AGENT_READ_WRITE,
        CheckDefinition(
            core_options="-w 90 -c 95 --exclude-fs-type squashfs,iso9660,udf,vfat",
            go_options="-w 90 -c 95 --exclude-fs-type squashfs,iso9660,udf,vfat",
            interval=300, refresh=3600,
            go_note="The guest agent of every domain with an agent channel answers, and the guests' file systems have\n"
                    "room. Needs a read-write libvirt connection for the agent calls (see the README).",
        ),
        options=URI_OPTIONS + THRESHOLDS + STATE_OPTIONS + RUN_OPTIONS + (
            Option("--agent-optional", takes=Takes.FLAG), Option("--mount", takes=Takes.LIST),
            Option("--exclude-fs-type", takes=Takes.LIST), Option("--agent-timeout")),
    ),
    Command(
        "check-kvm-backup-age", "sensu_kvm.checks.backup_age:main", Kind.CHECK,
        "the newest verified backup of each domain is recent enough; failed backups",
        Access.READ_ONLY,
        CheckDefinition(
            core_options="--backup-dir /srv/backup -w 26h -c 50h",
            go_options="--backup-dir /srv/backup --state-dir /var/lib/kvm-backup -w 26h -c 50h",
            interval=3600, occurrences=1, refresh=86400,
            go_note="Every domain has a backup from kvm-backup younger than 26h (WARNING) / 50h (CRITICAL), and no\n"
                    "kvm-backup run failed since. Reads the backup folder's file names only (read-only libvirt).",
        ),
        # --state-dir here is kvm-backup's state folder, not the samples of the rate checks
        options=URI_OPTIONS + THRESHOLDS + RUN_OPTIONS + (Option("--backup-dir"), Option("--state-dir"),
                                                            Option("--require-tested"),
                                                            Option("--require-tested-critical")),
    ),
    Command(
        "metrics-kvm", "sensu_kvm.checks.metrics:main", Kind.METRICS,
        "every domain, host and storage pool statistic (and block jobs on request) for Graphite, InfluxDB, "
        "Prometheus or JSON",
        Access.READ_ONLY,
        CheckDefinition(
            core_options="--scheme :::name:::.kvm", go_options="--format prometheus",
            occurrences=None, refresh=None, core_handlers=("graphite",),
            go_metric_format="prometheus_text", go_metric_tags=(("entity", "{{ .name }}"),),
            go_note="Raw counters and gauges of every domain and of the host, for a time-series database.\n"
                    "The entity's name is added as a tag: the Prometheus text itself names no host.",
        ),
    ),
    Command(
        "check-memory-percent", "sensu_kvm.checks.memory_percent:main", Kind.GUEST_CHECK,
        "inside a guest: memory (or swap) used %, the classic `check-memory-percent.rb`",
        Access.NONE,
        CheckDefinition(
            core_options="-w 80 -c 90", go_options="-w 80 -c 90",
            go_note="Inside each guest (subscription kvm-guest): psutil only, no libvirt.",
        ),
        options=THRESHOLDS + RUN_OPTIONS + (Option("--swap", takes=Takes.FLAG),),
    ),
    Command(
        "handler-kvm-remediate", "sensu_kvm.handlers.remediate:main", Kind.HANDLER,
        "starts a guest that crashed or should run (autostart), resumes one paused by a fault: only the guests "
        "selected for it (opt-in), with guardrails",
        Access.READ_WRITE_TO_ACT,
        handler=HandlerDefinition(
            sensu_name="kvm-remediate",
            # opt-in: no --match, so only the domains marked <remediate>on</remediate> in their metadata
            core_options="--max-attempts 3 --window 3600 --grace 1800",
            go_options=f"--max-attempts 3 --window 3600 --grace 1800 --state-dir {BACKEND_STATE_DIR}",
            timeout=60,
            # WARNING too: check-kvm-domstate says WARNING for the pauses the handler resumes
            core_severities=("warning", "critical"),
            core_filters=("kvm-first-occurrences",),
            go_filters=("is_incident", "not_silenced", "kvm-first-occurrences"),
            go_note="handler-kvm-remediate reads a check-kvm-domstate event on stdin and starts a domain that crashed or\n"
                    "failed, or is marked autostart and down (not stopped by an operator within --grace), or resumes\n"
                    "one paused by a fault (see handler-kvm-remediate --help for what it leaves alone). It needs an\n"
                    "event about one domain: the per-domain results of check-kvm-domstate (see checks.yaml) name it;\n"
                    "an event of the aggregate check names none and nothing is done. It is opt-in: as shipped (no\n"
                    "--match) it touches only domains marked <remediate>on</remediate> in their libvirt metadata\n"
                    "(README: handler-kvm-remediate); add --match/--exclude to select domains by name.\n"
                    "\n"
                    "Sensu Go runs handlers on the backend, so the backend host needs the asset's prerequisites\n"
                    "(python3, python3-libvirt, python3-requests: see asset.yaml) and a read-write libvirt connection\n"
                    "to the hypervisor, allowed for the sensu user by packaging/polkit/60-sensu-plugins-kvm.rules\n"
                    "(README: Least privilege). qemu:///system below suits a backend on the hypervisor itself.\n"
                    "CHANGE ME otherwise: -u qemu+ssh://<hypervisor>/system with a key of the backend's sensu user,\n"
                    "and with several hypervisors one such handler per hypervisor. Its attempt counts are kept under\n"
                    "the backend's own cache directory.",
        ),
    ),
    Command(
        "handler-kvm-influxdb", "sensu_kvm.handlers.influxdb:main", Kind.HANDLER,
        "writes metrics-kvm's InfluxDB lines to InfluxDB's HTTP API in batches, whole at any number of domains",
        Access.NONE,
        handler=HandlerDefinition(
            sensu_name="influxdb",
            core_options="--url http://127.0.0.1:8086 --database kvm",
            go_options="--url http://127.0.0.1:8086 --database kvm",
            timeout=60,
            core_severities=(),
            core_filters=(),
            go_filters=(),
            go_note="handler-kvm-influxdb writes the InfluxDB line protocol of a check's output (metrics-kvm\n"
                    "--format influxdb) to InfluxDB 1.x's HTTP /write, in batches (README: handler-kvm-influxdb).\n"
                    "The CheckConfig of metrics-kvm in checks.yaml prints Prometheus text instead: to use this\n"
                    "handler, give it --format influxdb and handlers [influxdb]. Credentials: $INFLUX_USERNAME and\n"
                    "$INFLUX_PASSWORD in the backend's environment, or --credentials-file (mode 0600).",
        ),
    ),
    Command(
        "kvm-inspect", "sensu_kvm.tools.inspect:main", Kind.TOOL,
        "everything about one domain in one report (state, vCPUs, memory, disks, chains, snapshots, agent, monitor)",
        Access.READ_ONLY_AGENT_READ_WRITE,
    ),
    Command(
        "kvm-snapshot", "sensu_kvm.tools.snapshot:main", Kind.TOOL,
        "the snapshot workflow: create (internal or external), list (tree), info, dumpxml, rename, revert, delete, "
        "prune, chain",
        Access.READ_WRITE_TO_ACT,
    ),
    Command(
        "kvm-backup", "sensu_kvm.tools.backup:main", Kind.TOOL,
        "backups: live (external snapshot, copy, blockcommit), stop or suspend; verify, list, restore, prune, "
        "recover; streamed to a remote host over ssh",
        Access.READ_WRITE_TO_ACT,
    ),
)

BY_NAME: dict[str, Command] = {command.name: command for command in COMMANDS}


def of_kind(*kinds: Kind) -> list[Command]:
    """The commands of these kinds, in the table's order."""
    return [command for command in COMMANDS if command.kind in kinds]
