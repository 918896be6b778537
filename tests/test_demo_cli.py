"""``aha demo`` through the CLI. Every demo takes minutes even at its defaults (the CLI has no smaller setting; the
RLHF demo's quick setting is tested in test_demo_rlhf.py), so here the demo itself is replaced by a recorder: what
is tested is the command's part — which demo runs, with which output directory and seed, and the one-line
answers to a wrong name or a bad --out."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aha.cli import DEMOS, app

runner = CliRunner()


@pytest.fixture
def recorded(monkeypatch):
    """Each demo's ``run_demo`` replaced by one that records ``(name, out, seed)`` and checks ``out`` exists."""
    calls = []
    for name, (module, _) in DEMOS.items():

        def fake(out, seed=0, _name=name):
            assert Path(out).is_dir()  # the command creates it before the demo starts
            calls.append((_name, Path(out), seed))
            return {}

        monkeypatch.setattr(importlib.import_module(module), "run_demo", fake)
    return calls


def test_every_demo_runs_by_name_with_its_default_directory_and_seed(tmp_path, monkeypatch, recorded):
    monkeypatch.chdir(tmp_path)
    assert set(DEMOS) == {"alphago", "rlhf", "r1", "agent", "think"}
    demos = (
        ["demo"],
        ["demo", "rlhf", "--seed", "3"],
        ["demo", "r1", "-o", "mine"],
        ["demo", "agent"],
        ["demo", "think"],
    )
    for args in demos:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert recorded == [
        ("alphago", Path("runs/demo"), 0),
        ("rlhf", Path("runs/demo-rlhf"), 3),
        ("r1", Path("mine"), 0),
        ("agent", Path("runs/demo-agent"), 0),
        ("think", Path("runs/demo-think"), 0),
    ]


def test_an_unknown_demo_names_the_choices_and_runs_nothing(tmp_path, monkeypatch, recorded):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "alphazero"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # (click's error box wraps the line)
    assert "unknown demo 'alphazero'; choose one of: alphago, rlhf, r1, agent, think" in said
    assert recorded == [] and not (tmp_path / "runs").exists()


def test_an_out_that_is_a_file_is_one_line_and_runs_nothing(tmp_path, recorded):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    result = runner.invoke(app, ["demo", "rlhf", "-o", str(blocker)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: --out {blocker} is a file, not a directory"], result.output
    assert recorded == [] and blocker.read_text() == "x"


def test_a_bad_seed_is_refused_before_anything_runs(tmp_path, monkeypatch, recorded):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "rlhf", "--seed", "many"])
    assert result.exit_code == 2 and "'--seed'" in result.output and "Traceback" not in result.output
    assert recorded == [] and not (tmp_path / "runs").exists()
