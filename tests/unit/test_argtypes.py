"""Option value types and the URI shown in messages (pure)."""

import argparse

import pytest

from sensu_kvm.argtypes import (
    address_kind,
    domain_arg,
    number_arg,
    one_line,
    seconds_arg,
    shown,
    state_dir_arg,
    strict_duration_arg,
    whole_arg,
)
from sensu_kvm.virt import scrub, shown_uri


@pytest.mark.parametrize(("uri", "seen"), [
    ("qemu+tcp://admin:s3cret@host/system", "qemu+tcp://admin@host/system"),
    ("qemu+tcp://admin:p@ss@host/system", "qemu+tcp://admin@host/system"),
    ("qemu+ssh://root@kvm2/system?keyfile=/root/.ssh/id&no_verify=1", "qemu+ssh://root@kvm2/system?keyfile=/root/.ssh/id&no_verify=1"),
    ("qemu+tcp://host/system?password=x&authfile=/etc/a&token=t#f", "qemu+tcp://host/system?password=***&authfile=***&token=***#f"),
    ("qemu:///system", "qemu:///system"),
    ("test:///default", "test:///default"),
    ("not a uri", "not a uri"),
])
def test_shown_uri(uri, seen):
    assert shown_uri(uri) == seen


def test_scrub_hides_the_uri_and_its_secrets_in_libvirt_messages():
    uri = "qemu+tcp://admin:s3cret@host/system?password=hunter22"
    text = f"unable to open {uri}: authentication failed for admin:s3cret@host (hunter22)"
    assert scrub(text, uri) == ("unable to open qemu+tcp://admin@host/system?password=***: authentication failed "
                                "for admin:***@host (***)")


def test_one_line_and_shown_escape_what_would_break_a_line():
    assert one_line("a\nb\tc\x1b[2J\udcff\u2028") == "a\\nb\\tc\\x1b[2J\\xff\\u2028"
    assert shown("x" * 100) == "'" + "x" * 60 + "... (100 characters)'"


@pytest.mark.parametrize(("parse", "text"), [
    (whole_arg, "0"), (whole_arg, "0.5"), (whole_arg, "inf"), (whole_arg, "9" * 5000), (whole_arg, str(10**12)),
    (seconds_arg, "nan"), (seconds_arg, "inf"), (seconds_arg, "-1"), (seconds_arg, "1e300"),
    (number_arg(10.0), "10.5"), (number_arg(10.0), "0"), (number_arg(10.0), "-inf"),
    (strict_duration_arg, "3"), (strict_duration_arg, "1.5"), (strict_duration_arg, "9" * 400 + "s"),
    (domain_arg, ""), (domain_arg, " "), (domain_arg, "web\udcff"), (domain_arg, "a\nb"),
    (state_dir_arg, ""),
])
def test_bad_values_are_refused(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_good_values():
    assert whole_arg("3") == 3 and seconds_arg("0.5") == 0.5 and strict_duration_arg("1d12h") == 129600
    assert domain_arg("grüße-ü") == "grüße-ü" and state_dir_arg("a/../b").endswith("/b")
    assert [address_kind(a) for a in ("127.0.0.1:3030", ":3030", "[::1]:3030", "http://127.0.0.1:3031/events",
                                      "https://agent", "garbage", "host:0", "host:65536", "ftp://x")] == \
        ["sensu", "sensu", "sensu", "sensu-go", "sensu-go", None, None, None, None]
