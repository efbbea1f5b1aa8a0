"""check-kvm-blkerror: I/O errors that QEMU recorded on each domain's disks."""

from __future__ import annotations

import argparse

from sensu_kvm import states, virt
from sensu_kvm.contexts import Context
from sensu_kvm.domains import Verdict, judge_each, read, report
from sensu_kvm.output import Finding, Report, Status
from sensu_kvm.plugin import CheckParser, build_parser, run_check

NAME = "CheckKvmBlkerror"

EXAMPLES = """\
  check-kvm-blkerror                      every running domain
  check-kvm-blkerror -d kvm1 -t 5         one domain, like 'virsh domblkerror kvm1'"""

DESCRIPTION = """\
Disk errors of each running domain (virDomainGetDiskErrors, as 'virsh domblkerror'): any error is
CRITICAL, naming the disk and the error ('no space', 'unspecified error'); otherwise OK, 'no
errors found'. A guest on a full disk is usually also paused (see check-kvm-domstate). libvirt has
no bulk form of this call: it runs once per running domain, each under its own deadline (a
quarter of -t), so one hung domain is UNKNOWN alone. Perfdata: the number of disks in error."""


DISK_ERRORS = Context("disk_errors", minimum=0)  # the number of disks in error: any is CRITICAL (below)


def judge_domain(record: virt.DomainRecord, errors: dict[str, int]) -> Verdict:
    """The verdict on one domain from its disk errors (pure)."""
    measured = [DISK_ERRORS(len(errors), record.label)]
    if not errors:
        return Verdict(Finding(record.name, Status.OK, f"{record.text}: no errors found"), measured)
    text = ", ".join(f"{disk}: {states.disk_error_name(code)}" for disk, code in sorted(errors.items()))
    return Verdict(Finding(record.name, Status.CRITICAL, f"{record.text}: {text}"), measured)


def check(options: argparse.Namespace) -> Report:
    conn = virt.connect(options.uri)
    try:
        chosen, missing = read(conn, ["state"], options)

        def one(record: virt.DomainRecord) -> Verdict:
            try:
                return judge_domain(record, dict(record.dom.diskErrors()))
            except virt.libvirtError as err:
                return Verdict(Finding(record.name, Status.UNKNOWN, f"{record.text}: disk errors: {virt.reason(err)}"))

        verdicts = judge_each(chosen, one, phase="reading disk errors")
    finally:
        conn.close()
    measured = sum(1 for v in verdicts if v.of(DISK_ERRORS.metric))
    return report(verdicts, missing, options, f"no errors found on {measured} running domains")


def parser() -> CheckParser:
    return build_parser("check-kvm-blkerror", DESCRIPTION, EXAMPLES)


def main() -> None:
    run_check(NAME, parser(), check)


if __name__ == "__main__":
    main()
