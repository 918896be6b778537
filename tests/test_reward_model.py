"""Reward models: the losses on hand-computed values, a tiny RM that learns a preference, plain-transformers loading,
resume, and the rm: reward inside a GRPO run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, merge, rm_config, sevens

from aha.algos.preference import (
    bradley_terry_loss,
    kendall_tau_b,
    plackett_luce_loss,
    ranking_bt_loss,
    ranking_metrics,
    reward_centering,
)
from aha.config import load_config


def test_bradley_terry_by_hand():
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5])).item() == pytest.approx(
        math.log(1 + math.exp(-1.5))
    )
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0).item() == pytest.approx(math.log(2))
    w = torch.tensor([1.0, 3.0])
    got = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), weight=w).item()
    assert got == pytest.approx((math.log(1 + math.exp(-1)) + 3 * math.log(2)) / 4)
    # a ranking weighs once: the mean over its 3 pairs
    s = torch.tensor([2.0, 1.0, 0.0])
    assert ranking_bt_loss(s, [[0], [1], [2]]).item() == pytest.approx(
        (2 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 3
    )


def test_plackett_luce_by_hand_with_ties():
    s = torch.tensor([2.0, 1.0, 0.0])
    e = math.e
    assert plackett_luce_loss(s, [[0], [1], [2]]).item() == pytest.approx(
        ((math.log(e**2 + e + 1) - 2) + (math.log(e + 1) - 1)) / 2
    )
    # a pair: PL = BT
    assert plackett_luce_loss(torch.tensor([0.3, -0.2]), [[0], [1]]).item() == pytest.approx(
        math.log(1 + math.exp(-0.5))
    )
    # ties (Breslow): 0 and 2 share first place, each chosen from {0, 1, 2}
    t = torch.tensor([1.0, 0.0, 1.0])
    assert plackett_luce_loss(t, [[0, 2], [1]]).item() == pytest.approx(math.log(2 * e + 1) - 1)
    assert ranking_bt_loss(t, [[0, 2], [1]]).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # per head
    assert plackett_luce_loss(torch.stack([s, s], 1), [[0], [1], [2]]).shape == (2,)


def test_centering_and_metrics():
    assert reward_centering(torch.tensor([1.0, 3.0, -1.0, -1.0]), [[0, 1], [2, 3]], 0.1).item() == pytest.approx(0.25)
    assert kendall_tau_b([3.0, 2.0, 1.0], [[0, 1], [2]]) == pytest.approx(2 / math.sqrt(6))
    m = ranking_metrics([[0.0, 1.0, 2.0]], [[[2], [1], [0]]])
    assert m == {"pairwise_accuracy": 1.0, "margin": pytest.approx(4 / 3), "top1_accuracy": 1.0, "kendall_tau": 1.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from aha.rm import train_reward_model

    root = tmp_path_factory.mktemp("rm")
    data = sevens(root / "sevens.jsonl")
    last = train_reward_model(rm_config(data, loss="pl", num_heads=3), root / "run")
    return root, data, last


def test_rm_learns_the_preference_on_held_out_rankings(trained):
    _, _, last = trained
    assert last["eval/pairwise_accuracy"] > 0.8
    assert last["eval/kendall_tau"] > 0.5 and "eval/ensemble_std" in last


def test_plain_transformers_ranks_like_the_rm_reward(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aha.rewards import resolve_reward

    root, _, _ = trained
    d = root / "run" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    better, worse = "77177077", "12345680"  # a held-out pair the hidden preference orders
    with torch.no_grad():
        hf = [model(**tok("n:" + c, return_tensors="pt")).logits[0, 0].item() for c in (better, worse)]
    reward = resolve_reward(f"rm:{d}")
    ours = reward(["n:", "n:"], [better, [{"role": "assistant", "content": worse}]])
    assert hf[0] > hf[1] and ours[0] > ours[1]
    assert ours == pytest.approx(hf, abs=1e-4)  # the saved score head is the ensemble's mean head
    assert reward.num_heads == 3 and reward.last_metrics["ensemble_std"] > 0
    conservative = resolve_reward(f"rm:{d}", {"std_coef": 1.0})
    assert conservative(["n:"], [better])[0] < ours[0]


def test_the_rm_reward_says_how_far_samples_are_from_its_training_data(trained):
    """The stage saves its data's support; the rm: reward measures held-out completions at distance 1 (the unit:
    the stage and the reward read the same features), its training data about there, and texts unlike any it
    learned from far off (the guard's no-gold signal)."""
    from aha.rewards import resolve_reward
    from aha.rewards.support import SUPPORT_FILE

    root, data, _ = trained
    d = root / "run" / "model"
    assert (d / SUPPORT_FILE).is_file()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    n_eval = max(1, round(len(rows) * 0.1))  # reward_model.eval_fraction's default: the last 10% held out
    reward = resolve_reward(f"rm:{d}")

    def measure(texts):
        reward(["n:"] * len(texts), texts)
        return reward.last_metrics["support_distance"], reward.last_metrics["ood_fraction"]

    held_out, ood = measure([c for r in rows[-n_eval:] for c in r["completions"]])
    assert held_out == pytest.approx(1.0, rel=1e-3) and ood <= 0.02
    train, _ = measure([c for r in rows[:50] for c in r["completions"]])
    assert 0.7 < train < 1.1
    far, ood = measure(["abcdefghijklmnopqrstuvwxyzabcdefgh", "zzzzzzzzzzzzzzzzzzzzzzz", "hello, world. hello!"])
    assert far > 2 and ood == 1.0


def test_support_is_measured_as_the_reward_measures_even_when_trained_in_bf16(tmp_path):
    """Trained under bf16 autocast, the support is still fitted on the saved model's fp32 features (the rm: reward's),
    so the held-out completions are at distance 1 there too."""
    from aha.rewards import resolve_reward
    from aha.rm import train_reward_model

    data = sevens(tmp_path / "sevens.jsonl", n=120)
    cfg = rm_config(data, num_heads=2)
    cfg.train.steps, cfg.train.precision = 6, "bf16"
    train_reward_model(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    held_out = [c for r in rows[-max(1, round(len(rows) * 0.1)) :] for c in r["completions"]]
    reward = resolve_reward(f"rm:{tmp_path / 'run' / 'model'}")
    reward(["n:"] * len(held_out), held_out)
    assert reward.last_metrics["support_distance"] == pytest.approx(1.0, rel=1e-3)
    assert (tmp_path / "run" / "checkpoints" / "step-6" / "model" / "aha_support.safetensors").is_file()


def test_rm_spec_errors_are_one_line(tmp_path, trained):
    from aha.rewards import RewardConfigError, resolve_reward

    with pytest.raises(RewardConfigError, match="not found"):
        resolve_reward(f"rm:{tmp_path / 'nope'}")
    with pytest.raises(RewardConfigError, match="unknown args"):
        resolve_reward(f"rm:{trained[0] / 'run' / 'model'}", {"stdcoef": 1})


def test_resume_continues_the_same_run(tmp_path):
    from aha.rm import train_reward_model
    from aha.track.metrics import read_metrics

    data = sevens(tmp_path / "s.jsonl", n=120)
    cfg = rm_config(data, num_heads=2)
    train_reward_model(cfg, tmp_path / "full")
    train_reward_model(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 20})}), tmp_path / "cut")
    train_reward_model(cfg, tmp_path / "cut", resume=True)
    full = {r["step"]: r for r in read_metrics(tmp_path / "full")}
    cut = {r["step"]: r for r in read_metrics(tmp_path / "cut")}
    assert cut[40]["loss/rm"] == pytest.approx(full[40]["loss/rm"], rel=1e-4)
    assert cut[40]["eval/pairwise_accuracy"] == pytest.approx(full[40]["eval/pairwise_accuracy"])


def test_critic_init_from_an_rm(trained):
    from aha.critic import _critic_from_reward_model
    from aha.rm import load_reward_model

    d = trained[0] / "run" / "model"
    critic = _critic_from_reward_model(d, 32)
    rm = load_reward_model(d)
    assert torch.allclose(critic.head.weight, rm.heads.mean(0, keepdim=True), atol=1e-6)


def test_rm_reward_in_a_grpo_run(tmp_path, trained):
    from aha.rl import train_rl

    d = trained[0] / "run" / "model"
    cfg = load_config(None, [], **merge(TINY, {"rewards": [{"name": f"rm:{d}", "weight": 1.0}]}))
    last = train_rl(cfg, tmp_path / "rl")
    assert math.isfinite(last["reward/mean"]) and last["reward/mean"] == pytest.approx(last["reward/rm/mean"])
    # what the run logged for a sample is the reward model's score of that completion
    from aha.rewards import resolve_reward

    samples = [json.loads(line) for line in (tmp_path / "rl" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(set(s["rewards"]) == {"rm"} for s in samples)
    scores = resolve_reward(f"rm:{d}")([s["prompt"] for s in samples], [s["completion"] for s in samples])
    assert [s["rewards"]["rm"] for s in samples] == pytest.approx(scores, rel=1e-4, abs=1e-5)
