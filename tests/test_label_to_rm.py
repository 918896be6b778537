"""End to end: rankings submitted through the ranking app's HTTP API → `aha label export` → `stage: reward_model`
trains on them and learns the labellers' preference (here: more 7s is better)."""

from __future__ import annotations

import json
import random

from label_env import Env
from typer.testing import CliRunner

from aha.cli import app as aha_cli
from aha.config import load_config
from aha.rm import train_reward_model


def test_api_rankings_export_and_train_a_reward_model(tmp_path):
    rng = random.Random(0)
    tasks = [
        {"prompt": f"q{i}", "completions": ["".join(rng.choice("17") for _ in range(6)) for _ in range(4)]}
        for i in range(120)
    ]
    env = Env(tmp_path, tasks, labelers=("alice",))
    submitted = 0
    while (resp := env.next("alice")).status_code == 200:
        task = resp.json()
        ranking = sorted(range(4), key=lambda j: -task["completions"][j].count("7"))
        assert env.rank("alice", task["task_id"], ranking).status_code == 201
        submitted += 1
    assert submitted == 120 and resp.status_code == 204

    prefs = tmp_path / "prefs.jsonl"
    result = CliRunner().invoke(aha_cli, ["label", "export", "--db", str(env.db), "--out", str(prefs)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    assert len(rows) == 120 and all(r["labeler"] == "alice" for r in rows)

    cfg = load_config(
        None,
        [
            f"reward_model.path={prefs}",
            "stage=reward_model",
            "model.name=tiny:layers=1,hidden=32,heads=2,ff=64",
            "reward_model.eval_fraction=0.2",
            "train.steps=60",
            "train.lr=3e-3",
            "train.batch_size=16",
            "train.precision=fp32",
            "log.eval_every=60",
            "log.save_every=0",
            "log.progress=false",
            "log.tensorboard=false",
            "log.report=false",
        ],
    )
    last = train_reward_model(cfg, tmp_path / "rm")
    assert last["eval/pairwise_accuracy"] > 0.75, last
