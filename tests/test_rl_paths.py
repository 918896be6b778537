"""RL paths that had no test of their own (issue 13): the KL reference after the imitation steps (LoRA and full
fine-tuning alike), the entropy bonus, old logprobs recomputed, gradient checkpointing, and RLOO and REINFORCE++
actually learning. Each runs a few steps of a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from aha.config import load_config
from aha.models import load_policy
from aha.rl import train_rl
from aha.rl.parts import build_parts
from aha.run import Run
from aha.tasks import build_task
from aha.track.metrics import read_metrics

CONSTANT_REWARD = "def constant(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"


def steps_of(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["step"] > 0]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_kl_reference_is_the_model_after_the_imitation_steps(tmp_path, write_config, lora):
    cfg = load_config(
        write_config(
            {
                "model": {"lora": {"enabled": lora, "r": 4}},
                "rl": {"beta": 0.1},
                "sft": {"imitation_steps": 5, "imitation_lr": 1e-2},
                "train": {"batch_size": 16},
            }
        )
    )
    parts = build_parts(cfg, Run(cfg, tmp_path / "run", False, "test"))
    trained = parts.policy.model
    ids = torch.randint(0, trained.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    model, adapters_off = parts.policy.reference()
    assert (model is trained) == lora  # under LoRA: the policy with its adapters switched off
    with torch.no_grad():
        with adapters_off:
            ref = torch.log_softmax(model(input_ids=ids).logits, -1)
        policy = torch.log_softmax(trained(input_ids=ids).logits, -1)
        start, _ = load_policy(
            cfg.model.model_copy(update={"lora": cfg.model.lora.model_copy(update={"enabled": False})}),
            parts.task.alphabet,
            cfg.train.seed,
        )
        before = torch.log_softmax(start(input_ids=ids).logits, -1)
    assert torch.equal(ref, policy)  # step 0: KL exactly 0
    assert (ref - before).abs().max() > 0.05  # and that model is the imitated one, not the one before imitation


def test_gspo_with_a_token_mean_says_so(tmp_path, write_config, capsys):
    cfg = load_config(write_config({"rl": {"importance_sampling_level": "sequence", "loss_type": "dapo"}}))
    build_parts(cfg, Run(cfg, tmp_path / "run", False, "test"))
    assert "weighs each sequence by its length" in capsys.readouterr().err
    cfg = load_config(write_config({"rl": {"importance_sampling_level": "sequence"}}))
    build_parts(cfg, Run(cfg, tmp_path / "run2", False, "test"))
    assert "weighs each sequence" not in capsys.readouterr().err


def test_entropy_bonus_alone_raises_the_policy_entropy(tmp_path, write_config):
    # a constant reward: every group agrees, advantages are exactly 0, so the entropy bonus is all that moves the
    # weights. Without it the policy stays put; with it the entropy climbs towards its maximum, ln(vocabulary).
    reward = tmp_path / "constant.py"
    reward.write_text(CONSTANT_REWARD)

    def run(coef: float) -> list[float]:
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": f"{reward}:constant"}],
                    "rl": {"entropy_coef": coef},
                    "train": {"steps": 6, "lr": 1e-2},
                    "log": {"eval_every": 0, "save_every": 0},
                }
            )
        )
        train_rl(cfg, tmp_path / f"coef-{coef}")
        return [r["entropy"] for r in steps_of(tmp_path / f"coef-{coef}")]

    without, with_bonus = run(0.0), run(0.5)
    cfg = load_config(write_config())
    vocab = load_policy(cfg.model, build_task(cfg.task).alphabet, 0)[0].config.vocab_size
    gap = [math.log(vocab) - h for h in with_bonus]  # how far below the uniform policy's entropy
    assert with_bonus[0] == pytest.approx(without[0], abs=1e-6)  # step 1 measures the same starting policy
    assert all(abs(h - without[0]) < 0.5 * gap[0] for h in without), without  # batches differ, the policy does not
    assert gap[-1] < 0.3 * gap[0], with_bonus


def test_recomputed_old_logprobs_match_the_samplers_in_fp32(tmp_path, write_config, digits_reward, monkeypatch):
    import aha.rl.phases

    passes, real = [], aha.rl.phases.no_grad_pass

    def counted(*args, **kwargs):
        passes.append(kwargs.get("logprobs", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(aha.rl.phases, "no_grad_pass", counted)

    def run(mode: str) -> list[dict]:
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "rl": {"mu": 2, "old_logprobs": mode},
                    "train": {"steps": 3},
                    "log": {"eval_every": 0, "save_every": 0},
                }
            )
        )
        train_rl(cfg, tmp_path / mode)
        return steps_of(tmp_path / mode)

    sampler = run("sampler")
    assert passes == []  # the sampler's own logprobs: no extra pass
    recomputed = run("recompute")
    assert passes == [True] * 3  # one no-grad pass per step
    assert any(r["clip_ratio"] > 0 or r["approx_kl"] > 0 for r in recomputed)  # μ = 2: the ratio left 1
    for a, b in zip(sampler, recomputed):
        for key in ("loss/policy", "approx_kl", "grad_norm", "reward/mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_gradient_checkpointing_computes_the_same_update(tmp_path, write_config, digits_reward, monkeypatch):
    import aha.build

    kept, real = [], aha.build.load_policy

    def load_and_keep(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        kept.append(model)
        return model, tok

    monkeypatch.setattr(aha.build, "load_policy", load_and_keep)

    def run(on: bool) -> list[dict]:
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "model": {"gradient_checkpointing": on},
                    "rl": {"mu": 2},
                    "train": {"steps": 2},
                    "log": {"eval_every": 0, "save_every": 0},
                }
            )
        )
        train_rl(cfg, tmp_path / str(on))
        return steps_of(tmp_path / str(on))

    plain, checkpointed = run(False), run(True)
    assert not kept[0].is_activation_checkpointing and kept[1].is_activation_checkpointing
    assert plain[-1]["grad_norm"] > 0
    for a, b in zip(plain, checkpointed):
        for key in ("loss/policy", "grad_norm", "approx_kl", "reward/mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)


@pytest.mark.parametrize("algo", ["rloo", "reinforce++"])
def test_critic_free_estimators_learn(tmp_path, write_config, digits_reward, algo):
    """A dense reward (the share of digits among a completion's 3 characters) rises well above its start."""
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": digits_reward}],
                "rl": {"algo": algo},
                "train": {"steps": 30, "lr": 3e-3},
                "log": {"eval_every": 0, "save_every": 0},
            }
        )
    )
    train_rl(cfg, tmp_path / algo)
    rewards = [r["reward/mean"] for r in steps_of(tmp_path / algo)]
    early, late = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert late > early + 0.25, rewards
