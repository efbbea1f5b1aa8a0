"""Scale on real QEMU guests (issue 15): chunked concurrent bulk calls give what one bulk call
gives, and a guest whose libvirt job another call holds does not stall a check: the others are
judged, and the busy one is named.

The job is held the way a hung guest holds it in production: its QEMU is stopped (SIGSTOP), and
one ordinary call that needs the monitor (``virsh domblkstat``) takes the job and waits for an
answer that does not come. Every later call that needs the job waits up to 30 s for it, unless
it passes NOWAIT. All domains here are spk-scale-*; the module cleans up its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from sensu_kvm.virt import run_with_deadline, stats
from tests.conftest import run
from tests.hypervisor.conftest import define_noos, own_fixtures
from tests.perfdata_consumers import perfdata

PREFIX = "spk-scale-"
URI = "qemu:///system"
conn, images = own_fixtures(PREFIX)
GROUPS = ["state", "cpu", "balloon", "vcpu", "interface", "block"]
# What changes between two reads of a paused guest: the time counters, and the RSS of its QEMU.
MOVING = re.compile(r"^(cpu\.|vcpu\.\d+\.(time|wait|delay)$|balloon\.rss$)")


@pytest.fixture(scope="module")
def guests(conn: libvirt.virConnect, images: Path) -> list[libvirt.virDomain]:
    doms = [define_noos(conn, images, f"{PREFIX}{n}") for n in range(6)]
    for dom in doms:
        dom.create()
    return doms


@contextlib.contextmanager
def job_held(dom: libvirt.virDomain) -> Iterator[None]:
    """``dom``'s job held by a call that waits on its stopped QEMU, until the block ends."""
    pid = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    holder = subprocess.Popen(["virsh", "-c", URI, "domblkstat", dom.name(), "vda"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # virsh sends its call within ~50 ms; a NOWAIT read that came first would take the job
        # itself and wait on the stopped QEMU: hence the pause, and the deadline on the proof.
        time.sleep(2)
        ro = libvirt.openReadOnly(URI)
        mine = ro.lookupByUUIDString(dom.UUIDString())
        [(_d, found)] = run_with_deadline(lambda: ro.domainListGetStats([mine], libvirt.VIR_DOMAIN_STATS_BALLOON,
                                                                          stats.NOWAIT), 10, "the proof that the job is held")
        ro.close()
        assert "balloon.rss" not in found, found  # NOWAIT answered without the job: it is held
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        holder.wait(timeout=60)


def test_chunked_calls_give_what_one_call_gives(guests: list[libvirt.virDomain],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ro = libvirt.openReadOnly(URI)
    try:
        for dom in guests:
            dom.suspend()
        mine = [ro.lookupByUUIDString(d.UUIDString()) for d in guests]

        def read(calls: int, chunk: int) -> list[tuple[str, dict[str, Any], Any]]:
            monkeypatch.setattr(stats, "CHUNK_MAX", chunk)
            stats.set_concurrency(calls)
            return [(r.name, {k: v for k, v in r.stats.items() if not MOVING.match(k)}, r.error)
                    for r in stats.gather(ro, GROUPS, doms=mine)]

        one = read(1, 500)
        assert [n for n, _s, _e in one] == [d.name() for d in guests]
        assert all(e is None and s["block.count"] == 1 and "block.0.capacity" in s for _n, s, e in one), one
        for calls, chunk in ((3, 500), (6, 1), (4, 5)):
            assert read(calls, chunk) == one
        # and what libvirt's one call over every domain says of them
        bulk = {d.name(): {k: v for k, v in s.items() if not MOVING.match(k)}
                for d, s in ro.getAllDomainStats(sum(stats.GROUPS[g].flag for g in GROUPS))}
        assert [(n, s) for n, s, _e in one] == [(n, {k: v for k, v in bulk[n].items() if not k.startswith("dirtyrate.")})
                                                for n, _s, _e in one]
    finally:
        stats.set_concurrency(None)
        for dom in guests:
            dom.resume()
        ro.close()


def busy_text(name: str) -> str:
    return f"{name}: busy: another operation holds its libvirt job"


@pytest.mark.parametrize("command", ["check-kvm-memory", "check-kvm-blkstat"])
def test_a_guest_whose_job_is_held_is_named_busy_and_the_others_are_judged(
        guests: list[libvirt.virDomain], tmp_path: Path, command: str) -> None:
    busy = guests[0].name()
    extra = ["--state-dir", str(tmp_path)] if command == "check-kvm-blkstat" else []
    with job_held(guests[0]):
        result = run(command, "-u", URI, "--match", f"^{PREFIX}", "-v", *extra)
    assert result.returncode == 3, result  # UNKNOWN for the busy one alone
    lines = result.stdout.split("|")[0].splitlines()
    assert busy_text(busy) in lines[0]
    assert "time ran out" not in result.stdout and "timed out" not in result.stdout
    others = [d.name() for d in guests[1:]]
    judged = [line for line in lines[1:] if any(f" {name}" in line for name in others)]
    assert len(judged) == len(others), result.stdout
    assert not any(line.startswith("UNKNOWN") for line in judged), result.stdout
    labels = list(perfdata(result.stdout))
    assert all(any(label.startswith(f"{name}_") for label in labels) for name in others), labels
    assert not any(label.startswith(f"{busy}_") for label in labels), labels


def test_metrics_say_the_busy_guest_is_down_and_the_others_up(guests: list[libvirt.virDomain]) -> None:
    with job_held(guests[0]):
        result = run("metrics-kvm", "-u", URI, "--match", f"^{PREFIX}", "--format", "prometheus")
        state = run("check-kvm-domstate", "-u", URI, "--match", f"^{PREFIX}")
    assert result.returncode == 0, result
    up = dict(re.findall(r'^kvm_domain_up\{domain="([^"]+)"[^}]*\} (\d)', result.stdout, re.M))
    assert up == {guests[0].name(): "0", **{d.name(): "1" for d in guests[1:]}}
    assert result.stderr == "metrics-kvm: 1 domain busy (another operation holds its libvirt job): up 0\n"
    assert state.returncode == 0, state  # the state needs no job: every guest is running


def test_checks_that_run_at_the_same_moment_do_not_call_each_other_busy(guests: list[libvirt.virDomain]) -> None:
    """Each bulk read holds a guest's job for a moment: four readers at once see it held, and the
    guest is asked again after a short pause instead of being reported busy."""
    argv = [str(Path(sys.executable).parent / "metrics-kvm"), "-u", URI, "--match", f"^{PREFIX}", "--format", "prometheus"]
    for _ in range(3):
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert (proc.returncode, err) == (0, ""), (out, err)
            up = re.findall(r'^kvm_domain_up\{domain="[^"]+"[^}]*\} (\d)', out, re.M)
            assert up == ["1"] * len(guests)
