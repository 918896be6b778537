"""What train.* and log.keep_checkpoints promise, read back from tiny runs: the logged ``lr`` follows the warm-up and
the linear / cosine decay step by step, ``grad_norm`` is the norm before clipping while the update is clipped to
``max_grad_norm``, and only the newest ``keep_checkpoints`` checkpoints stay on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, merge

from aha.api import train

LR = 1e-3


def run(tmp_path: Path, reward: str, name: str, **sections) -> list[dict]:
    """A tiny GRPO run with ``sections`` merged into TINY (no eval); its metrics rows of the training steps."""
    base = {"rewards": [{"name": reward}], "train": {"lr": LR}, "log": {"eval_every": 0}}
    out = tmp_path / name
    train(merge(merge(TINY, base), sections), out=out)
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r]


# ----------------------------------------------------------------------------- LR warm-up and schedule


def linear(i: int, warmup: int, total: int) -> float:
    """The multiplier after ``i`` optimizer steps: (i+1)/(warmup+1) while warming up, then down to 0 at ``total``."""
    return (i + 1) / (warmup + 1) if i < warmup else 1 - (i - warmup) / (total - warmup)


def cosine(i: int, warmup: int, total: int) -> float:
    return (i + 1) / (warmup + 1) if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_logged_lr_follows_the_warmup_and_the_schedule(tmp_path, digits_reward, schedule):
    """Step s logs the rate the scheduler holds after its s-th optimizer step (the next update's rate, as the HF
    Trainer logs it): warm-up 2 over 6 steps gives 2/3, 1, then the decay to 0 at the last step."""
    rows = run(tmp_path, digits_reward, schedule, train={"steps": 6, "warmup_steps": 2, "lr_schedule": schedule})
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    formula = linear if schedule == "linear" else cosine
    expected = [LR * formula(s, 2, 6) for s in range(1, 7)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    if schedule == "linear":  # the same, by hand
        assert [r["lr"] / LR for r in rows] == pytest.approx([2 / 3, 1, 0.75, 0.5, 0.25, 0.0], abs=1e-12)
    else:
        assert [r["lr"] / LR for r in rows] == pytest.approx(
            [2 / 3, 1, (1 + 0.5**0.5) / 2, 0.5, (1 - 0.5**0.5) / 2, 0.0], abs=1e-12
        )


def test_the_schedule_counts_optimizer_steps_not_rl_steps(tmp_path, digits_reward):
    """rl.mu = 2: two optimizer steps per RL step, so 3 RL steps are 6 optimizer steps of the schedule."""
    rows = run(
        tmp_path, digits_reward, "mu2", rl={"mu": 2}, train={"steps": 3, "warmup_steps": 2, "lr_schedule": "linear"}
    )
    assert [r["lr"] / LR for r in rows] == pytest.approx([linear(2, 2, 6), linear(4, 2, 6), linear(6, 2, 6)])
    assert [r["lr"] / LR for r in rows] == pytest.approx([1.0, 0.5, 0.0])


# ----------------------------------------------------------------------------- max_grad_norm


def first_moment_norm(run_dir: Path) -> float:
    """‖Adam's first moment‖ after the run's only step: (1 − β1) × the gradient the optimizer was given."""
    state = torch.load(run_dir / "checkpoints" / "step-1" / "trainer_state.pt", weights_only=False)["optimizer"]
    return math.sqrt(sum(float(s["exp_avg"].double().pow(2).sum()) for s in state["state"].values()))


def test_grad_norm_is_logged_before_clipping_and_the_update_is_clipped(tmp_path, digits_reward):
    """The same first step (same seed, same rollouts) with max_grad_norm far above the gradient's norm and far below
    it: both log the same pre-clip norm, and the gradient Adam received is the full one in the first run and one of
    norm max_grad_norm in the second. (Adam's first step moves every weight by about lr whatever the gradient's scale,
    so the clip is read from the optimizer's first moment, not from the weights.)"""
    loose = run(tmp_path, digits_reward, "loose", train={"steps": 1, "max_grad_norm": 1e6})[0]
    tight = run(tmp_path, digits_reward, "tight", train={"steps": 1, "max_grad_norm": 1e-3})[0]
    beta1 = TINY["train"].get("adam_betas", (0.9, 0.99))[0]
    norm = loose["grad_norm"]
    assert norm > 1e-1  # far above the tight limit, so clipping changes the update
    assert tight["grad_norm"] == pytest.approx(norm, rel=1e-6)  # logged before the clip, not after
    assert first_moment_norm(tmp_path / "loose") == pytest.approx((1 - beta1) * norm, rel=1e-4)  # unclipped
    assert first_moment_norm(tmp_path / "tight") == pytest.approx((1 - beta1) * 1e-3, rel=1e-4)  # clipped to 1e-3


# ----------------------------------------------------------------------------- keep_checkpoints


@pytest.mark.parametrize("keep", [1, 2])
def test_only_the_newest_keep_checkpoints_stay(tmp_path, digits_reward, keep):
    run(tmp_path, digits_reward, "run", train={"steps": 4}, log={"save_every": 1, "keep_checkpoints": keep})
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())  # nothing else: no half-written dirs
    assert left == [f"step-{s}" for s in range(5 - keep, 5)]
