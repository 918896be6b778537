"""Learning tests: the reward and held-out accuracy rise. Marked slow (a minute or two each on 2 cores)."""

import json

import pytest

from aha.config import load_config
from aha.demos.alphago import run_demo
from aha.rl import train_rl


def _evals(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r], rows


@pytest.mark.slow
def test_grpo_arithmetic_tiny_learns(tmp_path):
    """The recipe's held-out greedy accuracy rises by ≥ 30 points over its step-0 value, with μ = 2
    clipping engaged on the way."""
    cfg = load_config(
        "recipes/arithmetic-tiny.yaml",
        ["log.progress=false", "log.tensorboard=false", "log.save_every=0", "train.precision=fp32"],
    )  # the recipe's 500 steps
    train_rl(cfg, tmp_path)
    evals, rows = _evals(tmp_path)
    start, best = evals[0][1], max(acc for _, acc in evals[1:])
    assert evals[0][0] == 0
    assert best - start >= 0.30, f"eval/accuracy went {evals}"
    assert any(r.get("clip_ratio", 0) > 0 for r in rows), "μ = 2 should engage the clip on the second pass"
    late = [r["reward/mean"] for r in rows[-20:] if "reward/mean" in r]
    early = [r["reward/mean"] for r in rows[1:21] if "reward/mean" in r]
    assert sum(late) / len(late) > sum(early) / len(early) + 0.2


@pytest.mark.slow
def test_demo_rl_surpasses_the_teacher_sft_does_not(tmp_path):
    """The AlphaGo lesson: SFT lands near the teacher (not above it), RL goes well past it."""
    s = run_demo(tmp_path, seed=0)
    assert s["rl_accuracy"] >= s["teacher_accuracy"] + 0.25
    assert s["teacher_accuracy"] - 0.20 <= s["sft_accuracy"] <= s["teacher_accuracy"] + 0.05
    # the teacher's blind spot is where RL wins: SFT copies the dropped carry, RL fixes it
    assert s["per_class"]["sft"]["carry into hundreds"] < 0.2 < 0.8 < s["per_class"]["rl"]["carry into hundreds"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "summary.json").is_file()


@pytest.mark.slow
def test_ppo_arithmetic_tiny_learns(tmp_path):
    """The PPO recipe (separate critic, GAE; its 500 steps) raises held-out greedy accuracy by ≥ 30 points, and its critic
    learns: the value loss falls and the value estimates track the rising reward."""
    cfg = load_config(
        "recipes/arithmetic-tiny-ppo.yaml",
        ["log.progress=false", "log.tensorboard=false", "log.save_every=0", "train.precision=fp32"],
    )
    train_rl(cfg, tmp_path)
    evals, rows = _evals(tmp_path)
    start, best = evals[0][1], max(acc for _, acc in evals[1:])
    assert best - start >= 0.30, f"eval/accuracy went {evals}"
    steps = [r for r in rows if "loss/value" in r]
    first, late = steps[:5], steps[-20:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(late, "loss/value") < mean(first, "loss/value") / 2
    assert mean(late, "value/mean") > mean(first, "value/mean") + 0.3
    assert mean(late, "value/explained_variance") > mean(first, "value/explained_variance")
