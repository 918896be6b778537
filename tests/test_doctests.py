"""The ``>>>`` examples in aha's docstrings are tests too: every module that has them runs them here, so a worked
example in a docstring cannot drift from what the code does. Modules are found by their source (a module moved or
added is picked up without editing this file); examples marked ``# doctest: +SKIP`` (they need a sandbox or a model)
are skipped by doctest itself."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

import aha

PACKAGE = Path(aha.__file__).resolve().parent
EXAMPLE = re.compile(r"^\s*>>> ", re.MULTILINE)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def with_examples() -> dict[str, tuple[int, int]]:
    """module → (examples in its source, of which marked +SKIP)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if EXAMPLE.match(line)]
        if lines:
            found[module_name(path)] = (len(lines), sum("doctest: +SKIP" in line for line in lines))
    return found


MODULES = with_examples()


def test_the_docstrings_hold_examples_to_run():
    """Guards the discovery itself: if it found nothing, every test below would pass vacuously."""
    assert len(MODULES) >= 20, sorted(MODULES)
    runnable = sum(n - skipped for n, skipped in MODULES.values())
    assert runnable >= 80, runnable
    for name in ("aha.rewards.builtin", "aha.algos.preference", "aha.guard", "aha.track.reasoning"):
        assert MODULES.get(name, (0, 0))[0] > 0, f"{name} lost its examples (or moved: update this list)"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=True, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
    examples, skipped = MODULES[name]
    if examples > skipped:  # doctest ran them: none was left out by a docstring it could not find
        assert result.attempted > 0, f"{name}: its examples were not collected"
