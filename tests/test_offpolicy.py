"""The truncated importance weights of asynchronous rollouts (aha.algos.offpolicy) against numbers worked out by hand,
how they enter the loss, and the config that switches them on."""

from __future__ import annotations

import math

import pytest
import torch

from aha.algos.losses import aggregate_loss, clipped_surrogate
from aha.algos.offpolicy import importance_weight_stats, truncated_importance_weights
from aha.config import ConfigError, load_config

LN = math.log


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_token_weights_are_the_ratio_to_the_sampler_capped():
    # log π_old − log π_behaviour = [ln 1.5, ln 3, −ln 2]; the third token of row 2 is padding
    behaviour = t([-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0])
    old = behaviour + t([LN(1.5), LN(3.0), -LN(2.0)], [0.0, LN(0.25), LN(100.0)])
    mask = t([1, 1, 1], [1, 1, 0])
    w, clipped = truncated_importance_weights(old, behaviour, mask, cap=2.0)
    assert w[0].tolist() == pytest.approx([1.5, 2.0, 0.5], abs=1e-6)  # 3 is capped at C = 2
    assert w[1, :2].tolist() == pytest.approx([1.0, 0.25], abs=1e-6)
    assert clipped.tolist() == [[False, True, False], [False, False, False]]  # padding never counts
    # mean over the 5 counted tokens (1.5 + 2 + 0.5 + 1 + 0.25) / 5 = 1.05; max 2; clipped 1 of 5
    assert importance_weight_stats(w, clipped, mask) == pytest.approx(
        {"is/weight_mean": 1.05, "is/weight_max": 2.0, "is/clipped_share": 0.2}
    )


def test_sequence_weights_are_the_exp_of_the_summed_log_ratios_capped():
    behaviour = t([-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0])
    old = behaviour + t([LN(1.5), LN(3.0), -LN(2.0)], [LN(0.5), LN(1.2), LN(100.0)])
    mask = t([1, 1, 1], [1, 1, 0])
    w, clipped = truncated_importance_weights(old, behaviour, mask, cap=2.0, level="sequence")
    # row 1: 1.5·3·0.5 = 2.25 → 2 (capped) on every token; row 2: 0.5·1.2 = 0.6 (the padding's 100 left out)
    assert w[0].tolist() == pytest.approx([2.0] * 3, abs=1e-6) and clipped[0].all()
    assert w[1].tolist() == pytest.approx([0.6] * 3, abs=1e-6) and not clipped[1].any()
    with pytest.raises(ValueError, match="token' or 'sequence"):
        truncated_importance_weights(old, behaviour, mask, 2.0, level="turn")


def test_the_weight_scales_a_tokens_loss_and_gradient_but_carries_none_itself():
    # one token, on-policy for the trainer (ρ = 1), A = 2, sampled by a policy that found it half as likely: w = 2
    logp = t([-1.0]).requires_grad_()
    behaviour = t([-1.0 - LN(2.0)])
    per_token, _ = clipped_surrogate(logp, logp.detach(), t(2.0), torch.ones(1, 1))
    w, _ = truncated_importance_weights(logp, behaviour, torch.ones(1, 1), cap=5.0)
    assert not w.requires_grad
    loss = aggregate_loss(per_token * w, torch.ones(1, 1), "dapo", 1)
    assert loss.item() == pytest.approx(-4.0, abs=1e-6)  # −ρ·A·w = −1·2·2
    loss.backward()
    assert logp.grad.item() == pytest.approx(-4.0, abs=1e-6)  # d(−ρ·A·w)/d log π = −ρ·A·w


def test_the_sampler_agreeing_with_the_trainer_gives_weight_one():
    logp = torch.randn(3, 4)
    w, clipped = truncated_importance_weights(logp, logp.clone(), torch.ones(3, 4), cap=2.0, level="sequence")
    assert torch.equal(w, torch.ones(3, 4)) and not clipped.any()


def test_asynchronous_rollouts_need_ray_workers_and_say_so(write_config):
    with pytest.raises(ConfigError, match="rollout.asynchronous needs distributed.backend: ray"):
        load_config(write_config({"rollout": {"asynchronous": True}}))
    with pytest.raises(ConfigError, match="rl.dynamic_sampling"):
        load_config(
            write_config(
                {"rollout": {"asynchronous": True}, "distributed": {"backend": "ray"}, "rl": {"dynamic_sampling": True}}
            )
        )
    with pytest.raises(ConfigError, match="max_staleness"):
        load_config(write_config({"rl": {"max_staleness": 0}}))
    with pytest.raises(ConfigError, match="is_cap"):
        load_config(write_config({"rl": {"is_cap": 0.5}}))
    cfg = load_config(write_config({"rollout": {"asynchronous": True}, "distributed": {"backend": "ray"}}))
    assert (cfg.rl.max_staleness, cfg.rl.is_cap, cfg.rl.is_level) == (1, 2.0, "token")
