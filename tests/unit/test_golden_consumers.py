"""Every golden output (tests/data/golden: the test driver's node files and the statistics recorded
from real QEMU guests, such as the host view's 175.8 % memory) read whole by the parsers that
follow Nagios 4, Icinga 2 and Sensu Go (tests/perfdata_consumers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA
from tests.perfdata_consumers import taken_whole


def outputs(path: Path) -> Iterator[str]:
    """The output of each run in a golden file (after its ``$`` line, without its findings)."""
    block: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("$ "):
            if block:
                yield "\n".join(block) + "\n"
            block = []
        elif not line.startswith("  finding "):
            block.append(line)
    if block:
        yield "\n".join(block) + "\n"


@pytest.mark.parametrize("path", sorted((DATA / "golden").glob("*.txt")), ids=lambda p: p.name)
def test_every_golden_output_is_taken_whole(path: Path) -> None:
    found = list(outputs(path))
    assert len(found) > 3
    for output in found:
        taken_whole(output)
