"""The README's "Train on your own data" section runs as shown: its files written as they stand, its commands typed
as they stand, and its Python example run as it stands; plus the Python API's contract."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import aha as aha_cli

import aha
from aha.errors import AhaError

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str, end: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    return text[start : text.index(end, start)]


def test_the_own_data_example_runs_as_shown(tmp_path, monkeypatch):
    part = section("## Train on your own data", "### From Python")
    files = re.findall(r"`([\w./-]+)`:\n\n```\w*\n(.*?)```", part, re.S)
    assert [name for name, _ in files] == ["words.jsonl", "my_rewards.py", "mine.yaml"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    assert len((tmp_path / "words.jsonl").read_text().splitlines()) == 10
    commands = re.search(r"```bash\n(.*?)```", part, re.S).group(1).strip().splitlines()
    monkeypatch.chdir(tmp_path)
    train = aha_cli(*shlex.split(commands[0])[1:])
    assert train.exit_code == 0, train.output
    assert "words.jsonl: 8 rows to train on, the last 2 held out" in train.output
    assert train.stdout.startswith("done: runs/mine")
    evaluated = aha_cli(*shlex.split(commands[1])[1:])
    assert evaluated.exit_code == 0, evaluated.output
    out = json.loads(evaluated.stdout)
    assert out["task"] == "words" and out["n"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "runs/mine/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 30 and "reward/accuracy/mean" in metrics[-1]
    # greedy, the step-30 weights, the same 2 held-out rows: the accuracy the run logged at its last step
    assert out["accuracy"] == metrics[-1]["eval/accuracy"]


def test_the_python_example_runs_as_shown(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", section("### From Python", "\n## "), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    reward_mean, model = capsys.readouterr().out.strip().splitlines()[-2].split()
    last = json.loads((tmp_path / "runs/from-python/metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 10 and float(reward_mean) == last["reward/mean"]  # the summary is the run's last row
    assert Path(model) == Path("runs/from-python/checkpoints/step-10/model") and (tmp_path / model).is_dir()
    assert (tmp_path / "runs/from-python/data/train.parquet").is_file()  # the in-memory dataset, kept with the run


def test_the_python_api_takes_callables_lists_and_resumes(tmp_path):
    calls = []

    def first_char(prompts, completions, solution, **kw):
        calls.append(len(completions))
        return [float(c[:1] == s[:1]) for c, s in zip(completions, solution)]

    rows = [{"prompt": f"{w}=", "solution": w[::-1]} for w in ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]]
    config = {
        "model": {"name": "tiny:layers=1,hidden=32,heads=2,ff=64"},
        "task": {"answer_column": "solution"},
        "rollout": {"group_size": 4, "max_new_tokens": 3},
        "rl": {"prompts_per_step": 2},
        "train": {"steps": 2, "precision": "fp32"},
        "log": {"save_every": 2, "tensorboard": False},
    }
    summary = aha.train(config, reward_funcs={"first": first_char}, train_dataset=rows, out=tmp_path / "run")
    assert summary["stage"] == "rl" and Path(summary["model"]).is_dir() and calls
    assert "reward/first/mean" in summary["metrics"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "py:first" in saved and "train.jsonl" in saved  # reproducible: the data and the function's name
    again = aha.train(
        config,
        reward_funcs={"first": first_char},
        train_dataset=rows,
        out=tmp_path / "run",
        overrides={"train.steps": 3},
        resume=True,
    )
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert again["metrics"]
    with pytest.raises(AhaError, match="already holds a run"):
        aha.train(config, reward_funcs=[first_char], train_dataset=rows, out=tmp_path / "run")
    with pytest.raises(AhaError, match="reward_funcs"):
        aha.train(config, reward_funcs=[42], train_dataset=rows, out=tmp_path / "other")
    with pytest.raises(AhaError, match="unknown field"):
        aha.load_config({"rl": {"betta": 1}})
