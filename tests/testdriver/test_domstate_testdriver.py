"""check-kvm-domstate as a real process against libvirt's test driver (no daemon needed)."""

from tests.conftest import node_uri, run
from tests.perfdata_consumers import text_lines

MIXED = node_uri("mixed.xml")
HEALTHY = node_uri("healthy.xml")


def test_default_test_hypervisor_is_ok():
    result = run("check-kvm-domstate", "-u", "test:///default")
    assert result.returncode == 0, result
    assert result.stdout.startswith("CheckKvmDomstate OK: test running")
    assert "running=1;;;0;1" in result.stdout


def test_healthy_node_counts_states():
    result = run("check-kvm-domstate", "-u", HEALTHY)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].startswith("CheckKvmDomstate OK: 3 domains: 2 running, 1 shut off | ")
    assert "shutoff=1;;;0;3" in result.stdout
    assert result.stderr == ""


def test_mixed_node_worst_state_wins_and_lists_problems():
    result = run("check-kvm-domstate", "-u", MIXED)
    assert result.returncode == 2, result
    lines = text_lines(result.stdout)
    assert lines[0].startswith("CheckKvmDomstate CRITICAL: 3 of 6 domains not OK: oops crashed (unknown); ")
    assert lines[1:] == [
        "CRITICAL: oops crashed (unknown)",
        "WARNING: grüße-ü paused (unknown)",
        "WARNING: sleepy pmsuspended (unknown)",
    ]


def test_verbose_lists_every_domain_including_odd_names():
    result = run("check-kvm-domstate", "-u", MIXED, "-v")
    assert "OK: db 1 running (unknown)" in text_lines(result.stdout)
    assert len(text_lines(result.stdout)) == 7


def test_named_shut_off_domain_is_critical():
    result = run("check-kvm-domstate", "-u", HEALTHY, "-d", "spare")
    assert result.returncode == 2
    assert text_lines(result.stdout)[0] == "CheckKvmDomstate CRITICAL: spare shut off (unknown), named with -d"


def test_named_running_domain_with_space_and_non_ascii_name():
    result = run("check-kvm-domstate", "-u", MIXED, "-d", "db 1")
    assert (result.returncode, text_lines(result.stdout)[0]) == (0, "CheckKvmDomstate OK: db 1 running (unknown)")
    result = run("check-kvm-domstate", "-u", MIXED, "-d", "grüße-ü")
    assert (result.returncode, text_lines(result.stdout)[0]) == (1, "CheckKvmDomstate WARNING: grüße-ü paused (unknown)")


def test_missing_named_domain_is_critical():
    result = run("check-kvm-domstate", "-u", HEALTHY, "-d", "kvm1", "-d", "web1")
    assert result.returncode == 2
    assert text_lines(result.stdout)[0] == "CheckKvmDomstate CRITICAL: 1 of 2 domains not OK: kvm1 not found"


def test_match_and_exclude():
    result = run("check-kvm-domstate", "-u", MIXED, "--match", "^(web|db|oops)", "--exclude", "oops")
    assert result.returncode == 0
    assert result.stdout.startswith("CheckKvmDomstate OK: 2 domains: 2 running | ")


def test_expect_running_turns_shut_off_critical():
    result = run("check-kvm-domstate", "-u", HEALTHY, "--expect-running")
    assert result.returncode == 2
    assert "spare shut off (unknown), expected to run" in result.stdout


def test_filters_that_select_nothing_are_unknown():
    result = run("check-kvm-domstate", "-u", HEALTHY, "--match", "^nothing$")
    assert (result.returncode, result.stdout) == (3, "CheckKvmDomstate UNKNOWN: no domain matches --match/--exclude\n")


def test_running_count_threshold():
    result = run("check-kvm-domstate", "-u", HEALTHY, "-w", "3:", "-c", "1:")
    assert result.returncode == 1
    assert result.stdout.startswith("CheckKvmDomstate WARNING: 2 running, outside 3:; 3 domains")
