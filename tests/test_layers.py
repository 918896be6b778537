"""The package's structure: the layers of pyproject.toml's import-linter contract hold, and no module imports in a
circle (imports inside functions count; a type named only for a checker does not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def test_the_layers_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_no_import_cycles():
    graph = grimp.build_graph("aha", cache_dir=None)  # (every import, type-only ones too: no circle at all)
    imports = nx.DiGraph((m, other) for m in graph.modules for other in graph.find_modules_directly_imported_by(m))
    cycles = [sorted(c) for c in nx.strongly_connected_components(imports) if len(c) > 1]
    assert not cycles, f"modules importing each other in a circle: {cycles}"
    assert imports.number_of_nodes() > 80  # (the graph is the real one)


def test_every_user_error_derives_from_aha_error_and_is_listed_in_one_place():
    """A user-facing error class is an AhaError, and aha.errors' docstring names it (the one list of them)."""
    import importlib
    import inspect
    import pkgutil

    import aha
    import aha.errors

    found = set()
    for info in pkgutil.walk_packages(aha.__path__, "aha."):
        if info.name.endswith(".launcher"):  # (runs inside the sandbox; its errors never leave it)
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, Exception) and name.endswith(("Error", "Refused")):
                found.add((name, issubclass(cls, aha.errors.AhaError)))
    internal = {"ApiError"}  # the ranking app's HTTP answer (a status and one line), not raised to a person's terminal
    assert {name for name, is_aha in found if not is_aha} <= internal
    unlisted = {name for name, _ in found if name not in aha.errors.__doc__} - internal - {"AhaError"}
    assert not unlisted, f"not listed in aha.errors: {unlisted}"
    assert len(found) >= 15
