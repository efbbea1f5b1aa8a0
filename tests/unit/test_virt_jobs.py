"""virt.jobs: the block-job calls of a backup, each failure turned into the project's own exception."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from sensu_kvm.errors import LibvirtFailure
from sensu_kvm.virt import api, jobs


class Dom:
    """A domain whose block-job calls answer as told (a libvirtError when the answer is one)."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[Any, ...]] = []

    def name(self) -> str:
        return "web1"

    def _answer(self, call: str, *args: Any) -> Any:
        self.calls.append((call, *args))
        answer = self.answers.get(call)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def blockJobInfo(self, target: str, flags: int) -> Any:
        return self._answer("info", target)

    def blockJobSetSpeed(self, target: str, bandwidth: int, flags: int) -> Any:
        return self._answer("speed", target, bandwidth)

    def blockCommit(self, target: str, base: Any, top: Any, bandwidth: int, flags: int) -> Any:
        return self._answer("commit", target, bandwidth, flags)

    def blockJobAbort(self, target: str, flags: int) -> Any:
        return self._answer("abort", target, flags)


def test_job_info_and_its_failure():
    assert jobs.job_info(Dom(info={"cur": 1, "end": 2}), "vda") == {"cur": 1, "end": 2}
    assert jobs.job_info(Dom(info=None), "vda") == {}
    with pytest.raises(LibvirtFailure, match=r"^web1: vda: block job: gone"):
        jobs.job_info(Dom(info=libvirt.libvirtError("gone")), "vda")


def test_commit_flags_and_bandwidth():
    dom = Dom()
    jobs.commit_active(dom, "vda", "/img/o", 0)
    jobs.commit_active(dom, "vda", "/img/o", 1 << 20)
    plain = api.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | api.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
    assert dom.calls == [("commit", "vda", 0, plain),
                         ("commit", "vda", 1 << 20, plain | api.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES)]
    with pytest.raises(LibvirtFailure, match="web1: vda: cannot commit /img/o: refused"):
        jobs.commit_active(Dom(commit=libvirt.libvirtError("refused")), "vda", "/img/o")


def test_pivot_waits_while_not_ready_and_raises_otherwise():
    assert jobs.pivot(Dom(), "vda") is True
    assert jobs.pivot(Dom(abort=libvirt.libvirtError("block job 'commit' not ready")), "vda") is False
    with pytest.raises(LibvirtFailure, match="web1: vda: pivot: disk busy"):
        jobs.pivot(Dom(abort=libvirt.libvirtError("disk busy")), "vda")
    jobs.lift_limit(Dom(speed=libvirt.libvirtError("no job")), "vda")  # best effort: no exception
