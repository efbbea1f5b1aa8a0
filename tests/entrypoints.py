"""The commands of this project as installed: the console_scripts entry points of the
sensu-plugins-kvm distribution in this venv's site-packages (not a stray egg-info in the checkout).

Every test that walks all commands takes its list from here, never from a hand-written list; the
registry (sensu_kvm.registry) only says which kind each one is. tests/testdriver/test_wiring.py
checks that the registry and these entry points agree.
"""

from __future__ import annotations

import sysconfig
from importlib import metadata

from sensu_kvm.registry import BY_NAME, Kind

DISTRIBUTION = "sensu-plugins-kvm"


def console_scripts() -> dict[str, str]:
    """{console script: "module:function"} of the installed distribution."""
    found = list(metadata.distributions(name=DISTRIBUTION, path=[sysconfig.get_paths()["purelib"]]))
    assert len(found) == 1, f"{DISTRIBUTION} is installed {len(found)} times in this venv (make setup)"
    return {ep.name: ep.value for ep in found[0].entry_points if ep.group == "console_scripts"}


def commands(*kinds: Kind) -> list[str]:
    """The installed commands, sorted; only those the registry gives one of these kinds, if any given."""
    return sorted(name for name in console_scripts()
                  if not kinds or (name in BY_NAME and BY_NAME[name].kind in kinds))
