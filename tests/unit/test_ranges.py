import math

import pytest

from sensu_kvm.ranges import Range, RangeError


@pytest.mark.parametrize(
    ("text", "alerts", "quiet"),
    [
        ("10", [-1, 10.5, 11], [0, 5, 10]),
        ("10:", [9.99, -5], [10, 1e9]),
        ("~:10", [10.1, 1e9], [-1e9, 10]),
        ("10:20", [9, 21], [10, 15, 20]),
        ("@10:20", [10, 15, 20], [9, 21]),
        ("@~:0", [-3, 0], [0.5]),
        (":5", [6, -1], [0, 5]),
    ],
)
def test_grammar(text, alerts, quiet):
    r = Range.parse(text)
    assert [r.violated(v) for v in alerts] == [True] * len(alerts)
    assert [r.violated(v) for v in quiet] == [False] * len(quiet)
    assert str(r) == text


def test_bounds_parsed():
    r = Range.parse("~:")
    assert r.start == -math.inf and r.end == math.inf and not r.violated(1e300)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("abc", "'abc' is not a number"),
        ("20:10", "start 20 is above end 10"),
        ("1:2:3", "more than one ':'"),
        ("@", "'' is not a number"),
        ("nan", "'nan' is not a number"),
    ],
)
def test_bad_ranges(text, message):
    with pytest.raises(RangeError, match=message):
        Range.parse(text)
