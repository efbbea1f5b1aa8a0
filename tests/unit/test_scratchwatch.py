"""scratchwatch: the margin a scratch file system keeps, the line that ends a run, and the watch
thread ending the job (no libvirt: a fake domain, file systems and clock are given)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from sensu_kvm.backup import scratchwatch as sw

MIB = sw.MIB


class Dom:
    def __init__(self, temp: tuple[int, int] | None = (10 * MIB, 320 * MIB)) -> None:
        self.temp = temp
        self.aborted = threading.Event()

    def name(self) -> str:
        return "web1"

    def jobStats(self, _flags: int) -> dict[str, Any]:
        if self.temp is None:
            return {"type": 2, "operation": 9}
        return {"type": 2, "operation": 9, "disk_temp_used": self.temp[0], "disk_temp_total": self.temp[1]}

    def abortJob(self) -> None:
        self.aborted.set()


class Fs:
    """A file system whose free space is taken from ``frees`` one poll after the other (the last one stays)."""

    def __init__(self, size: int, frees: list[int], device: int = 7) -> None:
        self.size, self.frees, self.device = size, list(frees), device
        self.calls = 0

    def __call__(self, _folder: str) -> tuple[int, int, int]:
        free = self.frees[min(self.calls, len(self.frees) - 1)]
        self.calls += 1
        return self.device, self.size, free


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def test_margin_is_the_largest_of_floor_share_and_growth() -> None:
    assert sw.margin(1 << 30, 0) == 64 * MIB  # 2 % of 1 GiB is 20 MiB: the floor
    assert sw.margin(100 << 30, 0) == int(0.02 * (100 << 30))  # 2 GiB on a 100 GiB file system
    assert sw.margin(1 << 30, 100 * MIB) == 100 * MIB  # 1 s of a guest overwriting 100 MiB/s
    assert sw.margin(1 << 30, -5 * MIB) == 64 * MIB  # free space growing: no growth term


def test_problem_line_names_folder_figures_and_remedy() -> None:
    fs = sw.Fs("/scratch", 280 * MIB, 60 * MIB, 218 * MIB)
    line = sw.problem("web1", fs, 0.0, (218 * MIB, 320 * MIB))
    assert line == ("web1: backup stopped before its scratch space ran out: /scratch has 60.0 MiB free of 280.0 MiB "
                    "(this run's scratch files 218.0 MiB; libvirt disk_temp_used 218.0 MiB of disk_temp_total "
                    "320.0 MiB), less than the margin of 64.0 MiB; the guest overwrote more during the backup than "
                    "the folder can take: give --scratch-dir a folder with more free space (up to the copied disks' "
                    "size, 320.0 MiB)")
    assert "\n" not in line
    assert sw.problem("web1", fs._replace(free=64 * MIB), 0.0, None) == ""
    assert "disk_temp" not in sw.problem("web1", fs, 0.0, None)


def test_poll_sums_scratch_files_per_file_system_and_tracks_growth(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    a.write_bytes(b"x" * 65536)
    b.write_bytes(b"y" * 65536)
    # 1 GiB file system losing 40 MiB per 0.25 s poll (160 MiB/s): the margin grows to 160 MiB
    fs = Fs(1 << 30, [(900 - 40 * n) * MIB for n in range(20) for _file in "ab"])
    watch = sw.Watch(Dom(), {"vda": str(a), "vdb": str(b)}, fs=fs, clock=Clock())
    assert [watch.poll() for _ in range(19)] == [""] * 19  # 180 MiB free at the 19th poll
    while not (line := watch.poll()):
        pass
    assert fs.calls == 2 * 20  # two scratch files on one file system: both looked at, each poll
    assert f"{tmp_path} has 140.0 MiB free of 1,024.0 MiB" in line and "margin of 160.0 MiB" in line, line
    assert f"this run's scratch files {sw.mib(sw.allocated(str(a)) + sw.allocated(str(b)))};" in line
    assert watch.peak == (10 * MIB, 320 * MIB)


def test_no_growth_below_floor_trips_only_under_it(tmp_path: Path) -> None:
    fs = Fs(280 * MIB, [n * MIB for n in range(70, 62, -1)])
    watch = sw.Watch(Dom(None), {"vda": str(tmp_path / "s.qcow2")}, fs=fs, clock=Clock())
    assert [watch.poll() for _ in range(7)] == [""] * 7
    # 1 MiB less per 0.25 s (4 MiB/s, 8 MiB of margin): the floor of 64 MiB decides; no jobStats figures
    line = watch.poll()
    assert "has 63.0 MiB free of 280.0 MiB" in line and "margin of 64.0 MiB" in line, line
    assert "disk_temp" not in line


def test_thread_ends_the_job_and_stop_raises(tmp_path: Path) -> None:
    dom = Dom()
    fs = Fs(280 * MIB, [200 * MIB, 150 * MIB, 100 * MIB, 50 * MIB])
    watch = sw.Watch(dom, {"vda": str(tmp_path / "s.qcow2")}, interval=0.01, fs=fs).start()
    assert dom.aborted.wait(30)
    with pytest.raises(sw.ScratchFull, match=r"^web1: backup stopped before its scratch space ran out: "):
        watch.stop()


def test_stop_without_trouble_returns(tmp_path: Path) -> None:
    dom = Dom()
    fs = Fs(280 * MIB, [200 * MIB])
    watch = sw.Watch(dom, {"vda": str(tmp_path / "s.qcow2")}, interval=0.01, fs=fs).start()
    while fs.calls < 3:
        threading.Event().wait(0.01)
    watch.stop()
    assert not dom.aborted.is_set() and watch.error == ""


def test_a_missing_folder_is_skipped() -> None:
    watch = sw.Watch(Dom(), {"vda": "/nonexistent-spk/s.qcow2"})
    assert watch.poll() == ""
