"""Run the thin tools in-process, and check the one-line-error rule (exit 1, one ``error:``
line naming what is wrong, no traceback)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (its ``main(argv)`` is what the command line runs)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def expect_error(capsys: pytest.CaptureFixture, tool: str, argv: list[str], *match: str) -> str:
    """Run ``tool`` on ``argv``; assert exit 1 and one ``error:`` line holding every ``match``."""
    with pytest.raises(SystemExit) as info:
        load_tool(tool).main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for m in match:
        assert m in lines[0], lines[0]
    return lines[0]
