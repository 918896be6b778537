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
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": digits_reward}],
                "train": {"steps": 8, "lr": 3e-3},
                "rl": {"beta": 0.0},
                "log": {"eval_every": 0, "save_every": 0},
                "guard": {"enabled": True, "action": action, "kl_budget": 1e-6, "proxy": digits_reward},
            }
        )
    )
    run = tmp_path / "run"
    train_rl(cfg, run)
    rows = [r for r in read_metrics(run) if r["step"] > 0]
    assert all("kl" in r for r in rows) and rows[-1]["kl"] > 1e-6  # measured at β = 0
    stopped = json.loads((run / "guard.json").read_text())
    assert stopped["action"] == action and stopped["step"] == rows[-1]["step"] < 8
    assert "kl" in stopped["reason"].lower()
    assert (run / "checkpoints" / f"step-{stopped['step']}").is_dir()


def test_rollback_restores_the_weights_that_sampled_the_best_step(tmp_path, write_config, digits_reward):
    """With guard.window 1 the best step is judged by its own samples, which the weights *before* its update wrote.
    Step 1 is the best (no KL yet) and step 2 breaks the budget: the rollback must give back the starting weights,
    not step 1's update."""
    from safetensors.torch import load_file

    def run(name, steps, lr, guard):
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "train": {"steps": steps, "lr": lr},
                    "rl": {"beta": 0.0},
                    "log": {"eval_every": 0, "save_every": 0},
                    "guard": guard,
                }
            )
        )
        train_rl(cfg, tmp_path / name)
        return tmp_path / name

    start = run("start", 1, 1e-30, {"enabled": False})  # a step far below fp32 resolution: the starting weights
    rolled = run(
        "rolled",
        8,
        3e-3,
        {"enabled": True, "action": "rollback", "kl_budget": 1e-6, "window": 1, "proxy": digits_reward},
    )
    stopped = json.loads((rolled / "guard.json").read_text())
    assert stopped["action"] == "rollback" and stopped["best_step"] == 1 and stopped["step"] == 2
    before = load_file(start / "checkpoints" / "step-1" / "model" / "model.safetensors")
    after = load_file(rolled / "checkpoints" / "step-2" / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    # equal but for the 1e-30 step on zero weights (one update at lr 3e-3 moves them by ~1e-3)
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 1e-20
