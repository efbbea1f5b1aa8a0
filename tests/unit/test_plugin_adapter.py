"""The sensu-plugin adapter's stand-in module: it imports the real module once, on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensu_kvm.plugin import _OnFirstUse

PROBE = """\
import sys
sys.spk_probe_loads = getattr(sys, "spk_probe_loads", 0) + 1
VALUE = 42
def answer():
    return VALUE
"""


def test_the_stand_in_imports_its_module_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spk_probe_module.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delattr(sys, "spk_probe_loads", raising=False)
    stand_in = _OnFirstUse("spk_probe_module")
    monkeypatch.setitem(sys.modules, "spk_probe_module", stand_in)
    assert getattr(sys, "spk_probe_loads", 0) == 0  # nothing loaded before the first use
    assert [stand_in.VALUE, stand_in.answer(), stand_in.VALUE] == [42, 42, 42]
    import spk_probe_module  # noqa: PLC0415 (what a later importer gets)

    assert sys.spk_probe_loads == 1  # type: ignore[attr-defined]
    assert sys.modules["spk_probe_module"] is spk_probe_module is not stand_in
    assert stand_in.answer is spk_probe_module.answer  # the stand-in reads the one real module
    del sys.spk_probe_loads  # type: ignore[attr-defined]


def test_a_check_process_defers_traceback_until_sensu_plugin_uses_it() -> None:
    script = (
        "import sys\n"
        "import sensu_kvm.plugin\n"
        "import sensu_plugin.plugin as p\n"
        "print(type(sys.modules['traceback']).__name__, 'linecache' in sys.modules)\n"
        "first = p.traceback.format_tb; second = p.traceback.format_tb\n"
        "real = sys.modules['traceback']\n"
        "print(first is second is real.format_tb, type(real).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["_OnFirstUse False", "True module"]
