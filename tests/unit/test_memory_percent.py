from sensu_kvm.checks.memory_percent import evaluate, parser
from sensu_kvm.output import Status


def opts(*argv):
    return parser().parse_args(list(argv))


def test_classic_thresholds():
    gib = 2**30
    assert evaluate("memory", 4 * gib, gib, opts()).status is Status.OK
    report = evaluate("memory", 4 * gib, int(3.4 * gib), opts("-w", "80", "-c", "90"))
    assert (report.status, report.summary) == (Status.WARNING, "system memory usage: 85%")
    assert evaluate("memory", 100, 95, opts()).status is Status.CRITICAL
    text = report.render()
    assert "memory_used_percent=85%;80;90;0;100" in text
    assert f"memory_used={int(3.4 * gib)}B;;;0;{4 * gib}" in text


def test_no_swap_is_ok():
    report = evaluate("swap", 0, 0, opts("--swap"))
    assert (report.status, report.summary) == (Status.OK, "no swap configured")
