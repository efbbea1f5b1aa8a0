from sensu_kvm.output import Finding, Perf, Report, Status, format_number, judge, summarise, worst
from sensu_kvm.ranges import Range


def test_worst_orders_unknown_below_warning():
    assert worst([Status.OK, Status.UNKNOWN]) is Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.WARNING]) is Status.WARNING
    assert worst([Status.CRITICAL, Status.UNKNOWN, Status.WARNING]) is Status.CRITICAL
    assert worst([]) is Status.OK


def test_judge_critical_before_warning():
    w, c = Range.parse("80"), Range.parse("90")
    assert judge(50, w, c) is Status.OK
    assert judge(85, w, c) is Status.WARNING
    assert judge(95, w, c) is Status.CRITICAL
    assert judge(95, None, None) is Status.OK


def test_perfdata_grammar():
    assert str(Perf("running", 3, minimum=0, maximum=5)) == "running=3;;;0;5"
    assert str(Perf("cpu", 12.3456, "%", Range.parse("80"), Range.parse("90"), 0, 100)) == "cpu=12.346%;80;90;0;100"
    assert str(Perf("db 1_rss", 1024, "B")) == "'db 1_rss'=1024B"
    assert str(Perf("it's", 1)) == "'it''s'=1"
    assert str(Perf("grüße", 1)) == "'grüße'=1"


def test_numbers_never_use_exponents():
    assert format_number(12345678901234.0) == "12345678901234"
    assert format_number(0.0001) == "0"
    assert format_number(2.50) == "2.5"
    assert format_number(True) == "1"


def test_summary_names_worst_first_and_counts_the_rest():
    findings = [
        Finding("a", Status.OK, "a fine"),
        Finding("b", Status.WARNING, "b meh"),
        Finding("c", Status.CRITICAL, "c bad"),
        Finding("d", Status.UNKNOWN, "d unreadable"),
        Finding("e", Status.CRITICAL, "e bad"),
    ]
    status, summary, details = summarise(findings, "domain", verbose=False, shown=2)
    assert status is Status.CRITICAL
    assert summary == "4 of 5 domains not OK: c bad; e bad; and 2 more"
    assert details == ["CRITICAL: c bad", "CRITICAL: e bad", "WARNING: b meh", "UNKNOWN: d unreadable"]
    _, _, all_details = summarise(findings, "domain", verbose=True)
    assert all_details[-1] == "OK: a fine"


def test_report_render():
    report = Report(Status.OK, "fine", [Perf("x", 1)], ["OK: one"])
    assert report.render() == "fine | x=1\nOK: one"


def test_a_value_that_is_no_number_never_reaches_the_perfdata():
    perf = [Perf("a", float("nan"), "%"), Perf("b", 1.5), Perf("c", float("inf")), Perf("d", float("-inf")), Perf("e", 2)]
    assert Report(Status.OK, "fine", perf).render() == "fine | b=1.5 e=2"
    assert Report(Status.OK, "fine", [Perf("a", float("nan"))]).render() == "fine"
