"""The guard inside the RL loop: KL to the reference is measured every step even at β = 0, and a KL budget stops the
run (or rolls back to the best weights) with the reason in guard.json and a checkpoint at the stopping step."""

from __future__ import annotations

import json

import pytest

from aha.config import load_config
from aha.rl import train_rl
from aha.track.metrics import read_metrics


@pytest.mark.parametrize("action", ["stop", "rollback"])
def test_a_kl_budget_stops_the_run_and_says_why(tmp_path, write_config, digits_reward, action):
    cfg = load_config(write_config({
        "rewards": [{"name": digits_reward}], "train": {"steps": 8, "lr": 3e-3}, "rl": {"beta": 0.0},
        "log": {"eval_every": 0, "save_every": 0},
        "guard": {"enabled": True, "action": action, "kl_budget": 1e-6, "proxy": digits_reward}}))
    run = tmp_path / "run"
    train_rl(cfg, run)
    rows = [r for r in read_metrics(run) if r["step"] > 0]
    assert all("kl" in r for r in rows) and rows[-1]["kl"] > 1e-6  # measured at β = 0
    stopped = json.loads((run / "guard.json").read_text())
    assert stopped["action"] == action and stopped["step"] == rows[-1]["step"] < 8
    assert "kl" in stopped["reason"].lower()
    assert (run / "checkpoints" / f"step-{stopped['step']}").is_dir()
