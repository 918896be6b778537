"""aha.algos on multi-turn batches: the environment's tokens (mask 0) between the model's turns are context. The
returns and GAE skip them (the model's tokens get what they would get with those tokens cut out), and they come
out 0."""

from __future__ import annotations

import torch

from aha.algos.advantages import discounted_returns, gae_advantages, token_level_rewards


def _cut(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return x[:, keep.bool()[0]]


def test_gae_skips_environment_tokens_as_if_they_were_cut_out():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1, 0]], dtype=torch.float32)  # model, env, model, env, model, pad
    values = torch.randn(1, 9, generator=g)
    rewards = token_level_rewards(torch.tensor([1.0]), mask, torch.rand(1, 9, generator=g), beta=0.1)
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    short = _cut(mask, mask)
    ref_adv, ref_ret = gae_advantages(_cut(rewards, mask), _cut(values, mask), short, gamma=0.9, lam=0.8)
    assert torch.allclose(_cut(adv, mask), ref_adv) and torch.allclose(_cut(ret, mask), ref_ret)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)
    assert adv[0, 0] != 0  # the first turn's tokens see the reward that comes after the environment's answer


def test_returns_skip_environment_tokens():
    mask = torch.tensor([[1, 0, 1]], dtype=torch.float32)
    out = discounted_returns(torch.tensor([[0.0, 5.0, 1.0]]), mask, gamma=0.5)
    assert out.tolist() == [[0.5, 0.0, 1.0]]  # the environment token's reward (5) is not the model's


def test_single_turn_results_are_the_old_recursions_bit_for_bit():
    # the recursion as it was before multi-turn: a masked position reset the running sums to 0
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    values, rewards = torch.randn(3, 5, generator=g) * mask, torch.randn(3, 5, generator=g) * mask
    adv, running = torch.zeros_like(rewards), torch.zeros(3)
    for t in reversed(range(5)):
        nxt = values[:, t + 1] if t + 1 < 5 else torch.zeros(3)
        running = (rewards[:, t] + 0.9 * nxt - values[:, t] + 0.9 * 0.95 * running) * mask[:, t]
        adv[:, t] = running
    new, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.95)
    assert torch.equal(new, adv)
    ret, running = torch.zeros_like(rewards), torch.zeros(3)
    for t in reversed(range(5)):
        running = (rewards[:, t] + 0.9 * running) * mask[:, t]
        ret[:, t] = running
    assert torch.equal(discounted_returns(rewards, mask, gamma=0.9), ret)
