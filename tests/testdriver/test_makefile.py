"""`make test` runs every tier of tests, the hypervisor tier last."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_test_runs_every_tier_and_the_hypervisor_tier_last() -> None:
    makefile = (ROOT / "Makefile").read_text()
    tiers = re.search(r"^TIERS := (.+)$", makefile, re.M)
    assert tiers is not None and "$(TIERS)" in makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    listed = tiers.group(1).split()
    with_tests = sorted(f"tests/{d.name}" for d in (ROOT / "tests").iterdir() if d.is_dir() and any(d.glob("test_*.py")))
    assert sorted(listed) == with_tests
    assert listed[-1] == "tests/hypervisor"
