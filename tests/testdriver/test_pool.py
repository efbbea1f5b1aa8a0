"""check-kvm-pool as a real process on libvirt's test driver (tests/data/nodes/pools.xml and
test:///default's 'default-pool'). The test driver gives every pool 100 GiB of capacity and the
sum of its volumes' allocations as its allocation; all its pools are active, so the states
other than running are judged in tests/unit/test_pool_eval.py and on the real libvirtd
(tests/hypervisor/test_pool_qemu.py)."""

import re

import pytest

from tests.conftest import node_uri, refuses, run
from tests.perfdata_consumers import perfdata, sensu_go

POOLS = node_uri("pools.xml")
HOSTILE = "x|y=1 'q' te\tst"


def test_every_pool_judged_full_and_overcommitted_ones_named():
    result = run("check-kvm-pool", "-u", POOLS, "-v")
    assert result.returncode == 2, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CheckKvmPool CRITICAL: 2 of 5 pools not OK: pool nearly-full 95.0% used")
    assert "CRITICAL: pool nearly-full 95.0% used, 5.0 GiB of 100.0 GiB available, 1 volume of 95.0 GiB " \
           "(95% of capacity)" in lines
    assert "WARNING: pool thin 10.0% used, 90.0 GiB of 100.0 GiB available, 2 volumes of 250.0 GiB (250% of " \
           "capacity): overcommitted, the volumes could grow past the pool by 150.0 GiB" in lines
    assert "OK: pool images 40.0% used, 60.0 GiB of 100.0 GiB available, 2 volumes of 60.0 GiB (60% of " \
           "capacity)" in lines
    perf = perfdata(result.stdout)
    assert perf["images_used"] == "40%;80;90;0;100"
    assert perf["images_available"] == "64424509440B;;;0;107374182400"
    assert (perf["thin_overcommit"], perf["thin_volumes"]) == ("250%;100;;0", "2;;;0")


def test_thresholds_move_the_verdicts():
    result = run("check-kvm-pool", "-u", POOLS, "-w", "96", "-c", "99", "--overcommit-warning", "300")
    assert (result.returncode, result.stdout.splitlines()[0]) == (0, "CheckKvmPool OK: 5 pools OK, the fullest "
                                                                     "95.0% used"), result
    result = run("check-kvm-pool", "-u", POOLS, "-p", "images", "--available-warning", "70G")
    assert result.returncode == 1, result
    assert result.stdout.startswith("CheckKvmPool WARNING: pool images 40.0% used, 60.0 GiB of 100.0 GiB available")
    assert "images_available=64424509440B;75161927680:;;0;107374182400" in result.stdout
    result = run("check-kvm-pool", "-u", POOLS, "-p", "thin", "--overcommit-critical", "200")
    assert result.returncode == 2, result


def test_selection_by_name_match_and_exclude():
    result = run("check-kvm-pool", "-u", POOLS, "-p", "images", "-p", "gone")
    assert result.returncode == 2, result
    assert result.stdout.startswith("CheckKvmPool CRITICAL: 1 of 2 pools not OK: pool gone not found")
    assert set(perfdata(result.stdout)) == {"images_used", "images_available", "images_overcommit", "images_volumes"}
    result = run("check-kvm-pool", "-u", POOLS, "--match", "^(images|thin)$", "--exclude", "thin")
    assert (result.returncode, result.stdout.startswith("CheckKvmPool OK: pool images ")) == (0, True), result
    result = run("check-kvm-pool", "-u", POOLS, "--match", "^nothing")
    assert (result.returncode, result.stdout) == (3, "CheckKvmPool UNKNOWN: no pool matches --match/--exclude\n")
    result = run("check-kvm-pool", "-u", "test:///default")
    assert (result.returncode, result.stdout.split(" |")[0]) == (
        0, "CheckKvmPool OK: pool default-pool 0.0% used, 100.0 GiB of 100.0 GiB available, 0 volumes of 0 B "
           "(0% of capacity)"), result


def test_hostile_pool_names_keep_the_output_whole_and_apart():
    result = run("check-kvm-pool", "-u", POOLS, "-v", "--match", "^x")
    assert result.returncode == 0, result
    assert "OK: pool x¦y=1 'q' te\\tst 0.0% used" in result.stdout
    perf = perfdata(result.stdout)
    assert "x_y_1__q__te_st_used" in perf and "x_y_1__q__te_st-5b1c7e8a_used" in perf  # the plain one keeps its name
    parsed = sensu_go(result.stdout)  # two parts on '|', every item on single spaces
    assert len(parsed.points) == 8
    # as with -d, a name with a control character cannot be given (--match picks such a pool)
    assert "contains control characters" in refuses("check-kvm-pool", 3, "-u", POOLS, "-p", HOSTILE)


def test_max_output_keeps_the_aggregates():
    whole = run("check-kvm-pool", "-u", POOLS, "-v").stdout
    assert len(whole.encode()) > 1024
    result = run("check-kvm-pool", "-u", POOLS, "-v", "--max-output", "1024")
    assert result.returncode == 2 and len(result.stdout.encode()) <= 1024, result
    assert set(perfdata(result.stdout)) == {"used_max", "available_max", "overcommit_max", "volumes_max"}


@pytest.mark.parametrize(("args", "words"), [
    (["-w", "x"], "invalid range 'x'"),
    (["--available-critical", "5X"], "invalid size '5X'"),
    (["--overcommit-warning", "1:0"], "start 1 is above end 0"),
    (["--match", "("], "--match"),
    (["-p", "a\nb"], "-p/--pool"),
    (["-d", "web1"], "unrecognized arguments: -d"),
])
def test_bad_input_is_one_line_exit_3(args, words):
    line = refuses("check-kvm-pool", 3, "-u", POOLS, *args)
    assert words in line, line


def many_pools(path, count: int) -> str:
    """A node file of ``count`` pools named pool-0000..., one volume each; its test URI."""
    pools = "".join(f"<pool type='dir'><name>pool-{i:04d}</name><uuid>5b1c7e8a-1d0a-4c3f-9a10-{i:012d}</uuid>"
                    f"<target><path>/pools/{i}</path></target><volume type='file'><name>v.img</name>"
                    f"<capacity unit='GiB'>1</capacity><allocation unit='GiB'>1</allocation>"
                    f"<target><path>/pools/{i}/v.img</path></target></volume></pool>" for i in range(count))
    path.write_text(f"<node>{pools}</node>")
    return f"test://{path}"


def test_pools_not_read_within_the_time_budget_are_unknown_by_name(tmp_path, fault_env):
    uri = many_pools(tmp_path / "many.xml", 40)
    env = {**fault_env, "SPK_FAULT": "slow-pool-calls:0.5"}
    result = run("check-kvm-pool", "-u", uri, "-t", "2", "--concurrency", "2", "-v", env=env)
    assert result.returncode == 3, result
    first = result.stdout.splitlines()[0]
    match = re.fullmatch(r"CheckKvmPool UNKNOWN: time ran out while reading the storage pools' volumes of 40 pools "
                         r"\((\d+) of 40 pools not read within -t 2s\); \1 of 40 pools not OK: .*", first)
    assert match and 20 < int(match.group(1)) < 40, first
    lines = result.stdout.splitlines()
    read = [line.split()[2] for line in lines if line.startswith("OK: pool pool-")]  # what was read is judged
    late = [line for line in lines if re.fullmatch(r"UNKNOWN: pool pool-\d{4}: not read: time ran out while reading "
                                                    r"the storage pools' volumes of 40 pools", line)]
    assert (len(read), len(late)) == (40 - int(match.group(1)), int(match.group(1))), result.stdout
    assert all(f"{name}_used=1%" in lines[-1] for name in read), lines[-1]
