"""The policy losses beyond the plain clip, against numbers worked out by hand: CISPO's clipped stop-gradient
weight, PPO's dual clip, and GSPO's aggregation (a mean over sequences, not over tokens)."""

from __future__ import annotations

import math

import pytest
import torch

from aha.algos.losses import aggregate_loss, cispo_surrogate, clipped_surrogate, policy_loss
from aha.config import ConfigError, load_config

LN = math.log


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ─────────────────────────────── CISPO ───────────────────────────────


def test_cispo_values_and_gradient_by_hand():
    # three tokens of one completion, log π_θ = [−1, −2, −0.5], with ratios ρ = [1.5, 1.1, 0.5] to the old policy
    logp = t([-1.0, -2.0, -0.5]).requires_grad_()
    old = logp.detach() - torch.log(t([1.5, 1.1, 0.5]))
    adv, mask = t([2.0, 2.0, -1.0]), torch.ones(1, 3)
    loss, clipped = cispo_surrogate(logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2)
    # weight = sg(clip(ρ, 0.8, 1.2)) = [1.2, 1.1, 0.8]; loss_t = −w·A·log π:
    #   −1.2·2·(−1) = 2.4;  −1.1·2·(−2) = 4.4;  −0.8·(−1)·(−0.5) = −0.4
    assert loss[0].tolist() == pytest.approx([2.4, 4.4, -0.4], abs=1e-5)
    assert clipped[0].tolist() == [True, False, True]  # the weight was clipped (ρ = 1.5 and 0.5)
    # dapo mean over 3 tokens: (2.4 + 4.4 − 0.4) / 3 = 2.13333; ∂/∂log π_t = −w·A / 3 = [−0.8, −0.73333, 0.26667]:
    # the stop-gradient keeps ρ out of the gradient, and a clipped token still gets one (scaled, not removed)
    total = aggregate_loss(loss, mask, "dapo", 3)
    assert total.item() == pytest.approx(6.4 / 3, abs=1e-5)
    total.backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.8, -2.2 / 3, 0.8 / 3], abs=1e-5)

    # the clipped surrogate on the same tokens drops the two clipped tokens' gradient entirely
    logp2 = logp.detach().clone().requires_grad_()
    surrogate, _ = clipped_surrogate(logp2, old, adv, mask, 0.2, 0.2)
    aggregate_loss(surrogate, mask, "dapo", 3).backward()
    assert logp2.grad[0].tolist() == pytest.approx([0.0, -1.1 * 2 / 3, 0.0], abs=1e-5)


def test_cispo_without_a_lower_bound_as_in_the_paper():
    # ε_low = 1 (clip at 0: no lower bound): ρ = 0.5 keeps its weight 0.5 → loss −0.5·(−1)·(−0.5) = −0.25, gradient +0.5
    logp = t([-0.5]).requires_grad_()
    loss, clipped = cispo_surrogate(logp, logp.detach() - LN(0.5), t(-1.0), torch.ones(1, 1), 1.0, 0.28)
    assert loss.item() == pytest.approx(-0.25, abs=1e-6) and not clipped.item()
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(0.5, abs=1e-6)


def test_cispo_on_policy_gradient_is_the_surrogates():
    # μ = 1: ρ = 1, so both losses' gradients are −A per token (dapo: −A / n_tokens) though their values differ
    logp = t([-1.0, -3.0], [-0.2, -0.7])
    mask, adv = t([1.0, 1.0], [1.0, 0.0]), t(1.5, -0.5)
    grads = []
    for name in ("clip", "cispo"):
        x = logp.clone().requires_grad_()
        per_token, clipped = policy_loss(name)(x, x.detach(), adv, mask)
        assert not clipped.any()
        aggregate_loss(per_token, mask, "dapo", 2).backward()
        grads.append(x.grad)
    assert grads[0].flatten().tolist() == pytest.approx([-0.5, -0.5, 0.5 / 3, 0.0], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


# ─────────────────────────────── PPO's dual clip ───────────────────────────────


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    ratios, advs = [4.0, 2.0, 4.0, 0.5], [-2.0, -2.0, 2.0, -1.0]
    logp = torch.log(t(*ratios)).unsqueeze(-1).requires_grad_()  # old = 0 → ρ = exp(logp)
    old, mask = torch.zeros(4, 1), torch.ones(4, 1)
    loss, clipped = clipped_surrogate(logp, old, t(*advs), mask, dual_clip=3.0)
    # ρ=4,   A=−2: −min(−8, 1.2·−2) = 8 > 3·|A| = 6 → 6, clipped (gradient 0)
    # ρ=2,   A=−2: 4 ≤ 6 → 4, not clipped
    # ρ=4,   A=+2: −min(8, 2.4) = −2.4, clipped by the ordinary clip (the dual clip is for A < 0 only)
    # ρ=0.5, A=−1: −min(−0.5, −0.8) = 0.8 (ordinary clip) ≤ 3 → 0.8
    assert loss.squeeze(-1).tolist() == pytest.approx([6.0, 4.0, -2.4, 0.8], abs=1e-5)
    assert clipped.squeeze(-1).tolist() == [True, False, True, True]
    loss.sum().backward()
    # ∂(−ρA)/∂log ρ = −ρA: only the free token has one, 4
    assert logp.grad.squeeze(-1).tolist() == pytest.approx([0.0, 4.0, 0.0, 0.0], abs=1e-5)
    # without it the first token's loss is the unbounded 8 and its gradient 8
    plain, plain_clipped = clipped_surrogate(logp, old, t(*advs), mask)
    assert plain.squeeze(-1).tolist() == pytest.approx([8.0, 4.0, -2.4, 0.8], abs=1e-5)
    assert plain_clipped.squeeze(-1).tolist() == [False, False, True, True]


def test_dual_clip_config_must_exceed_one_and_goes_with_the_clip(write_config):
    assert load_config(write_config({"rl": {"dual_clip": 3}})).rl.dual_clip == 3.0
    with pytest.raises(ConfigError, match="rl.dual_clip"):
        load_config(write_config({"rl": {"dual_clip": 1.0}}))
    with pytest.raises(ConfigError, match="CISPO"):
        load_config(write_config({"rl": {"dual_clip": 3, "policy_loss": "cispo"}}))
    assert load_config(write_config({"rl": {"policy_loss": "cispo"}})).rl.policy_loss == "cispo"


# ─────────────────────────────── GSPO's aggregation ───────────────────────────────


def test_sequence_level_defaults_to_the_mean_over_sequences(write_config):
    # one sequence-level loss per completion, [1] over 1 token and [3, 3, 3] over 3: GSPO's objective is their
    # mean (1 + 3) / 2 = 2; a token mean would give (1 + 3·3) / 4 = 2.5, weighting the long one 3×
    per_token, mask = t([1.0, 0.0, 0.0], [3.0, 3.0, 3.0]), t([1.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert aggregate_loss(per_token, mask, "grpo", 3).item() == pytest.approx(2.0)
    assert aggregate_loss(per_token, mask, "dapo", 3).item() == pytest.approx(2.5)

    gspo = load_config(write_config({"rl": {"importance_sampling_level": "sequence"}}))
    assert gspo.rl.loss_type == "grpo"
    assert load_config(write_config()).rl.loss_type == "dapo"  # token level: unchanged
    chosen = load_config(write_config({"rl": {"importance_sampling_level": "sequence", "loss_type": "dapo"}}))
    assert chosen.rl.loss_type == "dapo"  # an explicit choice is kept (the run says what it does)


def test_renamed_sft_fields_say_their_new_names(write_config):
    for old, new in (("warmup_steps", "imitation_steps"), ("warmup_lr", "imitation_lr")):
        with pytest.raises(ConfigError) as err:
            load_config(write_config({"sft": {old: 3}}))
        assert str(err.value) == f"config error: sft.{old} was renamed to sft.{new}"
        with pytest.raises(ConfigError, match=f"renamed to sft.{new}"):
            load_config(write_config(), [f"sft.{old}=3"])
    assert load_config(write_config({"sft": {"imitation_steps": 3}})).sft.imitation_steps == 3
