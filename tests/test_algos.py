"""GRPO maths (aha.algos) against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from aha.algos.advantages import group_relative_advantages, zero_std_groups
from aha.algos.kl import kl_estimate
from aha.algos.losses import aggregate_loss, clipped_surrogate, masked_mean
from aha.modeling.logprobs import completion_logprobs, entropy_from_logits, selective_log_softmax

LN = math.log


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ─────────────────────────────── log-probs ───────────────────────────────


def test_selective_log_softmax_hand_example():
    # logsumexp([2, 0, 0]) = ln(e² + 1 + 1) = ln(7.3891 + 2) = ln 9.3891 = 2.2395
    # index 0 → 2 − 2.2395 = −0.2395; index 1 → 0 − 2.2395 = −2.2395
    logits = t([2.0, 0.0, 0.0], [2.0, 0.0, 0.0])
    out = selective_log_softmax(logits, torch.tensor([0, 1]))
    assert out.tolist() == pytest.approx([-0.2395, -2.2395], abs=1e-4)


def test_selective_log_softmax_matches_log_softmax_gather_fp32_and_bf16():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    index = torch.randint(0, 50, (3, 7), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, index), ref, atol=1e-5)

    lb = logits.bfloat16()
    out = selective_log_softmax(lb, index)
    assert out.dtype == torch.float32  # bf16 rows are normalised in fp32
    ref32 = torch.log_softmax(lb.float(), -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out, ref32, atol=1e-5)
    ref16 = torch.log_softmax(lb, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1).float()
    assert torch.allclose(out, ref16, atol=0.1, rtol=0.02)  # bf16 keeps ~3 significant digits


def test_entropy_uniform_and_peaked():
    # uniform over V symbols → H = ln V
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(LN(4), abs=1e-6)
    assert entropy_from_logits(torch.full((2, 3, 10), 7.0)).flatten().tolist() == pytest.approx([LN(10)] * 6, abs=1e-5)
    # logits ln[2, 1, 1] → p = [0.5, 0.25, 0.25];
    # H = 0.5·ln 2 + 2·0.25·ln 4 = 0.3466 + 0.6931 = 1.0397 (= 1.5 ln 2)
    peaked = t([LN(2), 0.0, 0.0])
    assert entropy_from_logits(peaked).item() == pytest.approx(1.5 * LN(2), abs=1e-6)


def test_completion_logprobs_left_padding_matches_unpadded_forward():
    from aha.models import build_tiny

    model, tok = build_tiny("tiny:layers=1,hidden=32,heads=2,ff=64", "0123456789+=")
    model.eval()
    pad = tok.pad_token_id
    ids = lambda s: tok(s).input_ids  # noqa: E731
    # [left-padded prompt (width 5) | right-padded completion (width 3)]
    rows = [("12+3=", "15"), ("7+8=", "153")]
    input_ids, attn = [], []
    for prompt, comp in rows:
        p, c = ids(prompt), ids(comp)
        input_ids.append([pad] * (5 - len(p)) + p + c + [pad] * (3 - len(c)))
        attn.append([0] * (5 - len(p)) + [1] * (len(p) + len(c)) + [0] * (3 - len(c)))
    input_ids, attn = torch.tensor(input_ids), torch.tensor(attn)

    with torch.no_grad():
        logp, ent = completion_logprobs(model, input_ids, attn, completion_len=3, with_entropy=True)
        logp2, _ = completion_logprobs(model, input_ids, attn, completion_len=3, temperature=2.0)
        assert logp.shape == ent.shape == (2, 3)
        for b, (prompt, comp) in enumerate(rows):
            p, c = ids(prompt), ids(comp)
            full = model(input_ids=torch.tensor([p + c])).logits[0]  # no padding, default positions
            # the logit at position len(p) − 1 + j predicts completion token j
            pred = full[len(p) - 1 : len(p) - 1 + len(c)]
            target = torch.tensor(c).unsqueeze(-1)
            ref = torch.log_softmax(pred, -1).gather(-1, target).squeeze(-1)
            ref_t2 = torch.log_softmax(pred / 2, -1).gather(-1, target).squeeze(-1)
            ref_ent = -(torch.softmax(pred, -1) * torch.log_softmax(pred, -1)).sum(-1)
            assert torch.allclose(logp[b, : len(c)], ref, atol=1e-5)
            assert torch.allclose(logp2[b, : len(c)], ref_t2, atol=1e-5)
            assert torch.allclose(ent[b, : len(c)], ref_ent, atol=1e-5)
            assert not torch.allclose(ref, ref_t2)  # temperature really changed something
        # the test has teeth: attending to the pad of row 1 moves its log-probs by ~5e-3 ≫ 1e-5.
        # (RoPE is shift-invariant, so the position ids only have to be consistent, which they are.)
        unmasked = model(input_ids=input_ids[1:]).logits[0, 4:7]
        target = input_ids[1, 5:].unsqueeze(-1)
        wrong = torch.log_softmax(unmasked, -1).gather(-1, target).squeeze(-1)
        assert (wrong - logp[1]).abs().max() > 1e-3


# ─────────────────────────────── advantages ───────────────────────────────


def test_group_advantages_single_group():
    r = t(1.0, 0.0, 0.0, 1.0)
    # mean 0.5; deviations ±0.5; unbiased var = 4·0.25/3 = 1/3 → std 0.57735
    # 'group': 0.5 / (0.57735 + 1e-4) = 0.8659
    adv, std = group_relative_advantages(r, 4, "group")
    assert std.tolist() == pytest.approx([0.57735], abs=1e-5)
    assert adv.tolist() == pytest.approx([0.8659, -0.8659, -0.8659, 0.8659], abs=1e-4)
    adv, _ = group_relative_advantages(r, 4, "none")
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5], abs=1e-6)


def test_group_advantages_two_groups():
    # group 1 [1,0,0,1] → ±0.8659 as above
    # group 2 [0,0,0,2]: mean 0.5; deviations −.5,−.5,−.5,1.5; var = (3·0.25 + 2.25)/3 = 1 → std 1
    #   → [−0.5, −0.5, −0.5, 1.5] / 1.0001
    adv, std = group_relative_advantages(t(1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0), 4, "group")
    assert std.tolist() == pytest.approx([0.57735, 1.0], abs=1e-5)
    expected = [0.8659, -0.8659, -0.8659, 0.8659, -0.49995, -0.49995, -0.49995, 1.49985]
    assert adv.tolist() == pytest.approx(expected, abs=1e-4)


def test_group_advantages_batch_scale_and_zero_variance_group():
    r = t(1.0, 0.0, 3.0, 3.0)  # G = 2: groups [1, 0] and [3, 3]
    # group means 0.5, 3 → deviations [0.5, −0.5, 0, 0]
    # batch: mean 1.75; squares 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75; /3 = 2.25 → std 1.5
    #   → [0.5/1.5, −0.5/1.5, 0, 0] = [0.3333, −0.3333, 0, 0]
    adv, _ = group_relative_advantages(r, 2, "batch")
    assert adv.tolist() == pytest.approx([0.3333, -0.3333, 0.0, 0.0], abs=1e-4)
    # group: [1, 0] has var 2·0.25/1 = 0.5 → std 0.7071 → ±0.5/0.7071 = ±0.7070;
    # [3, 3] has std 0 → 0 / (0 + eps) = 0, not NaN
    adv, std = group_relative_advantages(r, 2, "group")
    assert not torch.isnan(adv).any()
    assert std.tolist() == pytest.approx([0.70711, 0.0], abs=1e-5)
    assert adv.tolist() == pytest.approx([0.7070, -0.7070, 0.0, 0.0], abs=1e-4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_relative_advantages(r, 2, "per-token")


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_group_whose_rewards_agree_gets_advantage_exactly_zero(scale):
    rewards = t(0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 0.0, 1.0)  # 0.7 has no exact float mean: rounding shows
    adv, _ = group_relative_advantages(rewards, 4, scale)
    assert torch.equal(adv[:4], torch.zeros(4))
    assert adv[4] > 0 > adv[5]


def test_zero_std_groups():
    assert zero_std_groups(t(1.0, 1.0, 0.0, 1.0), 2).tolist() == [True, False]
    assert zero_std_groups(t(0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0), 3).tolist() == [True, True, False]


# ─────────────────────────────── KL ───────────────────────────────


def test_kl_estimators_hand_values():
    logp, ref = t(-1.0), t(-1.5)
    # log r = ref − logp = −0.5
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.5)  # −log r
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.125)  # ½·0.25
    # k3 = e^{−0.5} − 1 + 0.5 = 0.60653 − 0.5 = 0.10653
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.10653, abs=1e-5)
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(logp, ref, "k4")


def test_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(1)
    logp, ref = -torch.rand(1000, generator=g) * 10, -torch.rand(1000, generator=g) * 10
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert kl_estimate(logp, logp, "k3").abs().max().item() == 0.0
    # k1 alone can be negative: log r = +0.5 → k1 = −0.5
    assert kl_estimate(t(-1.5), t(-1.0), "k1").item() == pytest.approx(-0.5)


def test_k3_kl_is_clamped_where_the_reference_is_far_more_likely():
    logp, ref = t(-60.0, -1.0), t(-0.5, -1.5)  # log r = 59.5 (clamped to 20) and -0.5
    kl = kl_estimate(logp, ref, "k3")
    assert torch.isfinite(kl).all()
    assert kl[0].item() == pytest.approx(math.exp(20.0) - 21, rel=1e-6)  # e^20 − 1 − 20
    assert kl[1].item() == pytest.approx(0.1065, abs=1e-4)  # the worked example above is unchanged


# ─────────────────────────────── clipped surrogate ───────────────────────────────


def surrogate(ratios, advs, **kw):
    """One token per completion; logp − old_logp = ln ρ."""
    logp = torch.log(t(*ratios)).unsqueeze(-1)
    loss, clipped = clipped_surrogate(logp, torch.zeros_like(logp), t(*advs), torch.ones_like(logp), **kw)
    return loss.squeeze(-1).tolist(), clipped.squeeze(-1).tolist()


def test_clipped_surrogate_token_level_hand_values():
    loss, clipped = surrogate([1.5, 1.5, 0.5, 0.5, 1.0], [2.0, -2.0, -1.0, 1.0, 3.0])
    # ρ=1.5, A=+2: min(3.0, 1.2·2=2.4) = 2.4 → loss −2.4, clipped
    # ρ=1.5, A=−2: min(−3.0, −2.4) = −3.0 → loss 3.0, not clipped (pessimistic bound)
    # ρ=0.5, A=−1: min(−0.5, 0.8·−1=−0.8) = −0.8 → loss 0.8, clipped
    # ρ=0.5, A=+1: min(0.5, 0.8) = 0.5 → loss −0.5, not clipped
    # ρ=1,   A=+3: loss −3
    assert loss == pytest.approx([-2.4, 3.0, 0.8, -0.5, -3.0], abs=1e-6)
    assert clipped == [True, False, True, False, False]


def test_clip_higher_is_asymmetric():
    # ρ=1.25, A=+1: with ε_high 0.28 the bound is 1.28 → min(1.25, 1.25) → loss −1.25, not clipped;
    # ρ=0.75, A=−1: ε_low stays 0.2 → min(−0.75, −0.8) = −0.8 → loss 0.8, clipped
    loss, clipped = surrogate([1.25, 0.75], [1.0, -1.0], epsilon_low=0.2, epsilon_high=0.28)
    assert loss == pytest.approx([-1.25, 0.8], abs=1e-6)
    assert clipped == [False, True]
    # symmetric ε = 0.2: ρ=1.25 clipped at 1.2 → loss −1.2
    loss, clipped = surrogate([1.25], [1.0], epsilon_low=0.2)
    assert loss == pytest.approx([-1.2], abs=1e-6)
    assert clipped == [True]


def test_sequence_level_ratio_gspo():
    # log ratios [ln 2, 0, 5 (pad)]; mean over unmasked = ln 2 / 2 → ρ = √2 = 1.41421 (pad ignored;
    # had it counted, ρ = e^{(0.693 + 5)/3} = 6.67)
    old = torch.zeros(1, 3)
    logp = t([LN(2), 0.0, 5.0]).requires_grad_()
    mask = t([1.0, 1.0, 0.0])
    # A = +1: min(1.41421, 1.2) → loss −1.2 on every token, clipped
    loss, clipped = clipped_surrogate(logp, old, t(1.0), mask, level="sequence")
    assert loss[0, :2].tolist() == pytest.approx([-1.2, -1.2], abs=1e-6)
    assert clipped[0, :2].tolist() == [True, True]
    # A = −1: min(−1.41421, −1.2) = −1.41421 → loss 1.41421, not clipped
    loss, clipped = clipped_surrogate(logp, old, t(-1.0), mask, level="sequence")
    assert loss[0, :2].tolist() == pytest.approx([math.sqrt(2)] * 2, abs=1e-5)
    assert clipped[0, :2].tolist() == [False, False]
    # grpo mean over the 2 tokens = ρ = exp((l0 + l1)/2) → ∂/∂l_t = ρ/2 = 0.70711 for both real tokens,
    # 0 for the pad: the gradient flows to every token of the sequence, not only where the ratio moved
    aggregate_loss(loss, mask, "grpo", 3).backward()
    assert logp.grad[0].tolist() == pytest.approx([0.70711, 0.70711, 0.0], abs=1e-5)
    with pytest.raises(ValueError, match="'token' or 'sequence'"):
        clipped_surrogate(logp, old, t(1.0), mask, level="segment")


def test_two_optimisation_passes_clip_and_zero_gradient():
    """μ > 1: the first pass sees ρ = 1; after an update ratios leave [0.8, 1.2] and clipping bites."""
    old = t([-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0])
    mask = t([1.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    adv = t(1.0, -1.0)

    # pass 1: logp = old → ρ = 1 everywhere, nothing clipped; dapo loss = Σ −A·ρ / 5 tokens,
    # so ∂/∂logp_t = −A·ρ·mask / 5 = row 0: −0.2 ×3; row 1: +0.2, +0.2, 0 (pad)
    logp = old.clone().requires_grad_()
    loss, clipped = clipped_surrogate(logp, old, adv, mask)
    assert masked_mean(clipped.float(), mask).item() == 0.0
    aggregate_loss(loss, mask, "dapo", 3).backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.2, -0.2, -0.2, 0.2, 0.2, 0.0], abs=1e-6)

    # pass 2: the policy moved; ρ = row 0 [1.5, 1, 0.5], row 1 [0.5, 1.5, 3 (pad)]
    logp = (old + torch.log(t([1.5, 1.0, 0.5], [0.5, 1.5, 3.0]))).requires_grad_()
    loss, clipped = clipped_surrogate(logp, old, adv, mask)
    # row 0 (A=+1): ρ=1.5 > 1.2 clipped; ρ=1 free; ρ=0.5 free (min picks 0.5 < 0.8)
    # row 1 (A=−1): ρ=0.5 < 0.8 clipped; ρ=1.5 free (min picks −1.5 < −1.2); pad masked
    assert (clipped & mask.bool()).tolist() == [[True, False, False], [True, False, False]]
    assert masked_mean(clipped.float(), mask).item() == pytest.approx(2 / 5)  # clip fraction 0.4 > 0
    aggregate_loss(loss, mask, "dapo", 3).backward()
    # free tokens: ∂(−ρA)/∂logp / 5 = −ρA/5 → row 0: −1/5 = −0.2, −0.5/5 = −0.1; row 1: +1.5/5 = 0.3
    # clipped tokens: the objective is the constant 1.2 (or −0.8) → gradient exactly 0
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -0.2, -0.1, 0.0, 0.3, 0.0], abs=1e-6)
    assert logp.grad[clipped & mask.bool()].abs().max().item() == 0.0


# ─────────────────────────────── aggregation ───────────────────────────────


def test_aggregate_loss_docstring_example():
    per_token = t([1.0, 1.0, 0.0, 0.0], [4.0, 7.0, 0.0, 0.0])  # the 7 is padding
    mask = t([1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    # grpo = (2/2 + 4/1) / 2 = 2.5; dapo = bnpo = (1+1+4)/3 = 2.0; dr_grpo = 6 / (2·4) = 0.75
    assert aggregate_loss(per_token, mask, "grpo", 4).item() == pytest.approx(2.5)
    assert aggregate_loss(per_token, mask, "dapo", 4).item() == pytest.approx(2.0)
    assert aggregate_loss(per_token, mask, "bnpo", 4).item() == pytest.approx(2.0)
    assert aggregate_loss(per_token, mask, "dr_grpo", 4).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(per_token, mask, "ppo", 4)


def micro_vs_full(lengths, loss_type, **totals):
    """Per-token loss = v_i · x², x = 1 (so ∂/∂x = 2·v_i·weight); row i has value v_i = i + 1."""
    mask = torch.zeros(4, 4)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    vals = t(1.0, 2.0, 3.0, 4.0).unsqueeze(-1)
    x_full = torch.ones(4, 4, requires_grad=True)
    full = aggregate_loss(vals * x_full**2, mask, loss_type, 4)
    full.backward()
    x = torch.ones(4, 4, requires_grad=True)
    micro = sum(
        aggregate_loss(vals[s] * x[s] ** 2, mask[s], loss_type, 4, **totals) for s in (slice(0, 2), slice(2, 4))
    )
    micro.backward()
    return full.item(), micro.item(), x_full.grad, x.grad


@pytest.mark.parametrize(
    "loss_type,totals,expected",
    [
        # lengths [3, 1, 2, 4], values [1, 2, 3, 4]; token sum = 3·1 + 1·2 + 2·3 + 4·4 = 27
        ("grpo", {"num_sequences": 4}, 2.5),  # per-sequence means 1,2,3,4 → 10/4
        ("dapo", {"num_tokens": 10}, 2.7),  # 27 / 10 tokens
        ("dr_grpo", {"num_sequences": 4}, 1.6875),  # 27 / (4 · 4)
    ],
)
def test_micro_batches_sum_to_full_batch(loss_type, totals, expected):
    full, micro, g_full, g_micro = micro_vs_full([3, 1, 2, 4], loss_type, **totals)
    assert full == pytest.approx(expected) and micro == pytest.approx(expected)
    assert torch.allclose(g_micro, g_full, atol=1e-7)
    assert g_full.abs().sum() > 0


def test_grpo_micro_batch_gradient_by_hand():
    _, _, _, g = micro_vs_full([3, 1, 2, 4], "grpo", num_sequences=4)
    # ∂/∂x = 2·v_i / (len_i · 4): row 0: 2/12 = 0.16667; row 1: 4/4 = 1; row 2: 6/8 = 0.75; row 3: 8/16 = 0.5
    assert g[:, 0].tolist() == pytest.approx([1 / 6, 1.0, 0.75, 0.5], abs=1e-6)
    assert g[1, 1:].abs().sum().item() == 0.0  # padding gets nothing


def test_bnpo_micro_batches_are_weighted_micro_batch_token_means():
    """bnpo promises a token mean *over each micro-batch*, weighted by its share of the sequences.

    So micro-batching changes it unless every micro-batch holds the same number of tokens."""
    # lengths [3, 1, 2, 4]: full = 27/10 = 2.7
    # micro A (rows 0-1): (3 + 2)/4 tokens = 1.25, × 2/4 = 0.625
    # micro B (rows 2-3): (6 + 16)/6 tokens = 3.6667, × 2/4 = 1.8333 → sum 2.4583 ≠ 2.7
    full, micro, _, _ = micro_vs_full([3, 1, 2, 4], "bnpo", num_sequences=4)
    assert full == pytest.approx(2.7)
    assert micro == pytest.approx(0.625 + 11 / 6)
    # lengths [3, 1, 2, 2]: 4 tokens per micro-batch. full = (3 + 2 + 6 + 8)/8 = 2.375
    # micro: 5/4·½ + 14/4·½ = 0.625 + 1.75 = 2.375, and the gradients agree
    full, micro, g_full, g_micro = micro_vs_full([3, 1, 2, 2], "bnpo", num_sequences=4)
    assert full == pytest.approx(2.375) and micro == pytest.approx(2.375)
    assert torch.allclose(g_micro, g_full, atol=1e-7)


def test_masked_mean():
    x = t([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    # (1 + 2 + 10) / 3 = 4.3333
    assert masked_mean(x, t([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])).item() == pytest.approx(13 / 3)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    assert masked_mean(x, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0
