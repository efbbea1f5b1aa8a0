from sensu_kvm.output import (
    FIRST_LINE_BYTES,
    NAME_CHARS,
    Finding,
    Perf,
    Report,
    Status,
    format_number,
    judge,
    summarise,
    worst,
)
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
    # Labels are never quoted (Sensu Go keeps quotes): what a label cannot hold is replaced
    assert str(Perf("db-1.example.com_rss", 1024, "B")) == "db-1.example.com_rss=1024B"
    assert str(Perf("grüße", 1)) == "grüße=1"
    for label in ("db 1_rss", "it's", "a=b", "p|q", "tab\tname", "new\nline", 'say "hi"', "x,y", "semi;colon"):
        item = str(Perf(label, 1))
        assert item.endswith("=1") and not any(c in item[:-2] for c in " \t\n'\"=|;,"), item


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
    """One line when it fits; else the text lines, then every perfdata item on a last line of
    its own after the output's only '|'."""
    assert Report(Status.OK, "fine", [Perf("x", 1), Perf("y", 2)]).render() == "fine | x=1 y=2"
    report = Report(Status.OK, "fine", [Perf("x", 1), Perf("y", 2)], ["OK: one", "OK: two"])
    assert report.render() == "fine\nOK: one\nOK: two\n| x=1 y=2"
    many = Report(Status.OK, "fine", [Perf(f"d{n}_m", n) for n in range(100)])
    lines = many.render().split("\n")
    assert lines[0] == "fine" and lines[1].startswith("| d0_m=0 d1_m=1 ") and len(lines) == 2


def test_no_text_line_holds_a_bar_or_a_control_character():
    report = Report(Status.CRITICAL, "p|q crashed", [Perf("p|q_x", 1)], ["CRITICAL: p|q crashed\tnow\x07"])
    text = report.render()
    assert text.count("|") == 1
    assert text.split("\n")[1] == "CRITICAL: p¦q crashed\\tnow\\x07"


def test_the_first_line_stays_within_its_byte_budget():
    huge = "é" * 1000
    first = Report(Status.CRITICAL, huge, [Perf("x", 1)]).render().split("\n")[0]
    assert len(first.encode()) <= FIRST_LINE_BYTES and first.endswith("…")
    findings = [Finding("n" * 300 + str(k), Status.CRITICAL, "n" * 300 + f"{k}: broken " + "x" * 500) for k in range(1000)]
    _, summary, details = summarise(findings, "domain", verbose=False)
    assert len(summary.encode()) < FIRST_LINE_BYTES and summary.endswith("; and 997 more")
    assert summary.startswith("1000 of 1000 domains not OK: " + "n" * (NAME_CHARS - 1) + "…")
    assert len(details) == 1000 and details[0].startswith("CRITICAL: " + "n" * 300)  # details keep the whole text


def test_a_value_that_is_no_number_never_reaches_the_perfdata():
    perf = [Perf("a", float("nan"), "%"), Perf("b", 1.5), Perf("c", float("inf")), Perf("d", float("-inf")), Perf("e", 2)]
    assert Report(Status.OK, "fine", perf).render() == "fine | b=1.5 e=2"
    assert Report(Status.OK, "fine", [Perf("a", float("nan"))]).render() == "fine"


def test_max_output_keeps_the_status_line_the_worst_details_and_the_aggregates():
    """--max-output: an output that would be longer keeps its status line, the first (worst)
    detail lines that fit, one line saying what was left out, and only the aggregate perfdata:
    never a part of the per-domain items."""
    items = [Perf(f"dom{n}_used", n, "%") for n in range(1000)]
    details = [f"CRITICAL: dom{n} is at {n}%" for n in range(1000)]
    report = Report(Status.CRITICAL, "1000 of 1000 domains not OK", items, details,
                    aggregates=[Perf("used_max", 999, "%")])
    assert report.render(100_000 * 10) == report.render()  # within the bound: the same output
    text = report.render(8000, reserve=30)
    lines = text.split("\n")
    assert len(text.encode()) + 30 <= 8000
    assert lines[0] == "1000 of 1000 domains not OK" and lines[1] == details[0]
    assert lines[-1] == "| used_max=999%" and text.count("|") == 1
    kept = len(lines) - 3
    assert lines[1:1 + kept] == details[:kept] and kept > 100
    assert lines[-2] == (f"({1000 - kept} detail lines and 999 per-domain perfdata items left out to stay within "
                         "--max-output 8000 bytes; see -v without it)")
    # a report without aggregates declared keeps all its perfdata (a check whose items are all counts)
    counts = Report(Status.OK, "fine", [Perf("running", 3)], ["OK: x" * 50] * 400)
    assert counts.render(2000).endswith("| running=3")
