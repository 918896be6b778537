"""PPO (critic + GAE) and the critic-free estimators that share its loop (RLOO, REINFORCE++):
hand-computed maths, the critic's two shapes, and short runs through the trainer."""

import json
import math

import pytest
import torch

from aha.algos.advantages import (
    compute_advantages,
    discounted_returns,
    explained_variance,
    gae_advantages,
    rloo_advantages,
    token_level_rewards,
    whiten,
)
from aha.algos.losses import clipped_surrogate, clipped_value_loss
from aha.checkpoint import list_checkpoints
from aha.config import ConfigError, load_config
from aha.critic import Critic, CriticError, build_critic
from aha.modeling.logprobs import completion_forward
from aha.models import build_tiny
from aha.rl import train_rl
from aha.rl.batch import RolloutBatch
from aha.rl.forward import policy_forward
from aha.rl.optimize import micro_batch
from aha.rollout import Rollouts, pack_rollouts

# ----------------------------------------------------------------------------- pure maths, by hand


def test_gae_matches_the_hand_computation():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 1, λ = 0.9 (see the docstring):
    # δ = [0 + 0.6 - 0.5, 0 + 0.7 - 0.6, 1 + 0 - 0.7] = [0.1, 0.1, 0.3]
    # A2 = 0.3; A1 = 0.1 + 0.9·0.3 = 0.37; A0 = 0.1 + 0.9·0.37 = 0.433; R = A + V
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 5.0]])  # the 5.0 sits on padding and must not leak into A
    m = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=0.9)
    assert torch.allclose(adv, torch.tensor([[0.433, 0.37, 0.3, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.933, 0.97, 1.0, 0.0]]), atol=1e-6)


def test_gae_with_discount_and_its_limits():
    r = torch.tensor([[0.0, 2.0]])
    v = torch.tensor([[1.0, 1.5]])
    m = torch.ones(1, 2)
    # γ = 0.5, λ = 1: δ1 = 2 - 1.5 = 0.5; δ0 = 0 + 0.5·1.5 - 1 = -0.25; A0 = -0.25 + 0.5·0.5 = 0
    adv, ret = gae_advantages(r, v, m, gamma=0.5, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.0, 0.5]]))
    # λ = 1 → returns are the discounted Monte-Carlo returns, whatever the values
    assert torch.allclose(ret, discounted_returns(r, m, gamma=0.5))
    # λ = 0 → one-step TD errors
    adv0, _ = gae_advantages(r, v, m, gamma=0.5, lam=0.0)
    assert torch.allclose(adv0, torch.tensor([[-0.25, 0.5]]))


def test_token_rewards_and_returns_to_go():
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.0, 9.0], [0.4, 9.0, 9.0, 9.0]])
    r = token_level_rewards(torch.tensor([1.0, -1.0]), m, kl, beta=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, 1.0, 0.0], [-1.2, 0.0, 0.0, 0.0]]))
    assert torch.allclose(discounted_returns(r, m), torch.tensor([[0.85, 0.9, 1.0, 0.0], [-1.2, 0.0, 0.0, 0.0]]))
    # a fully masked row (a truncated completion under mask_truncated) gets nothing
    assert token_level_rewards(torch.tensor([3.0]), torch.zeros(1, 2)).abs().sum() == 0


def test_rloo_leaves_each_sample_out_of_its_own_baseline():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0]), group_size=3)
    # group 1 [1, 0, 0]: baselines [0, 0.5, 0.5]; group 2 [1, 3, 1]: baselines [2, 1, 2]
    assert torch.allclose(adv, torch.tensor([1.0, -0.5, -0.5, -1.0, 2.0, -1.0]))
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.ones(3), group_size=1)


def test_whiten_and_explained_variance():
    m = torch.tensor([[1, 1, 1, 0]])
    w = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), m)
    assert torch.allclose(w, torch.tensor([[-1.2247, 0.0, 1.2247, 0.0]]), atol=1e-4)
    ret = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    assert explained_variance(ret, ret, m) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 2.0), ret, m) == pytest.approx(0.0, abs=1e-6)
    # V = [1, 1, 1]: R − V = [0, 1, 2], var 2/3 = var(R) → 0
    assert explained_variance(torch.ones_like(ret), ret, m) == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(ret, torch.ones_like(ret), m) == 0.0  # constant returns: defined as 0, not NaN


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.5, 0.5]])
    ret = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[0.9, 0.6]], requires_grad=True)
    loss, clipped = clipped_value_loss(v, old, ret, clip_range=0.2)
    # V = 0.9 → V_clip = 0.7: max(0.01, 0.09)/2 = 0.045, clipped; V = 0.6: 0.16/2 = 0.08, not clipped
    assert torch.allclose(loss, torch.tensor([[0.045, 0.08]]))
    assert clipped.tolist() == [[True, False]]
    loss.sum().backward()
    assert torch.allclose(v.grad, torch.tensor([[0.0, -0.4]]))  # clipped → no gradient; else V − R
    plain, none_clipped = clipped_value_loss(v.detach(), old, ret, clip_range=None)
    assert torch.allclose(plain, torch.tensor([[0.005, 0.08]])) and not none_clipped.any()


def test_surrogate_takes_per_token_advantages():
    logp = torch.log(torch.tensor([[0.6, 0.3]]))
    old = torch.log(torch.tensor([[0.4, 0.3]]))  # ratios 1.5 and 1.0
    per_token, clipped = clipped_surrogate(logp, old, torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), 0.2)
    assert torch.allclose(per_token, torch.tensor([[-2.4, 1.0]]))
    assert clipped.tolist() == [[True, False]]


def test_compute_advantages_dispatch():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    m = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    kl = torch.full((4, 2), 0.1)
    grpo, _ = compute_advantages("grpo", scores, m, 4, kl=kl, beta=1.0)
    assert grpo.shape == (4,) and torch.allclose(grpo, torch.tensor([0.866, -0.866, -0.866, 0.866]), atol=1e-3)
    # rloo puts β·Σ KL into the sequence reward: [0.8, -0.1, -0.2, 0.8]
    rloo, _ = compute_advantages("rloo", scores, m, 4, kl=kl, beta=1.0)
    assert torch.allclose(rloo, rloo_advantages(torch.tensor([0.8, -0.1, -0.2, 0.8]), 4))
    rpp, none = compute_advantages("reinforce++", scores, m, 4, kl=kl, beta=1.0)
    assert none is None and rpp.shape == (4, 2)
    returns = torch.tensor([[0.8, 0.9], [-0.1, 0.0], [-0.2, -0.1], [0.8, 0.9]])
    assert torch.allclose(rpp, whiten(returns, m))
    values = torch.full((4, 2), 0.25)
    adv, ret = compute_advantages("ppo", scores, m, 4, kl=kl, beta=1.0, values=values, lam=1.0, whiten_advantages=False)
    assert torch.allclose(ret, returns * m)  # λ = 1, γ = 1: Monte-Carlo returns
    assert torch.allclose(adv, (returns - 0.25) * m)
    with pytest.raises(ValueError, match="critic"):
        compute_advantages("ppo", scores, m, 4)


# ----------------------------------------------------------------------------- the critic


def _cfg(write_config, extra):
    return load_config(write_config(extra))


def _critic_of(cfg, policy, device):
    """The critic a run builds from its config's ``critic`` section and ``rl.algo``."""
    return build_critic(cfg.critic, cfg.rl.algo, policy, device)


def test_separate_critic_copies_the_trunk_and_head_critic_shares_it(write_config):
    policy, _ = build_tiny("tiny:layers=1,hidden=32,heads=2,ff=64", None, 0)
    ids = torch.randint(3, 20, (2, 6))
    attn = torch.ones_like(ids)
    sep = _critic_of(_cfg(write_config, {"rl": {"algo": "ppo"}}), policy, torch.device("cpu"))
    assert not sep.shared
    assert all(p.data_ptr() != q.data_ptr() for p in sep.trunk.parameters() for q in policy.parameters())
    assert torch.equal(sep.trunk.embed_tokens.weight, policy.model.embed_tokens.weight)
    logp, _, values = policy_forward(policy, sep, ids, attn, 3)
    assert logp.shape == values.shape == (2, 3)
    # the value at completion position t reads the hidden state that predicts token t (index −C−1 … −2)
    hidden = policy.model(input_ids=ids, attention_mask=attn).last_hidden_state
    assert torch.allclose(values, sep.head(hidden[:, -4:-1]).squeeze(-1), atol=1e-5)

    head = _critic_of(
        _cfg(write_config, {"rl": {"algo": "ppo"}, "critic": {"kind": "head"}}), policy, torch.device("cpu")
    )
    assert head.shared and sum(p.numel() for p in head.parameters()) == 33  # 32 weights + 1 bias
    _, _, hv = policy_forward(policy, head, ids, attn, 3)
    assert torch.allclose(hv, head.head(hidden[:, -4:-1]).squeeze(-1), atol=1e-5)
    assert _critic_of(_cfg(write_config, {}), policy, torch.device("cpu")) is None  # grpo: no critic


def test_critic_initialised_from_a_reward_model(write_config, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    rm = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
            pad_token_id=0,
        )
    )
    rm.save_pretrained(tmp_path / "rm")
    policy, _ = build_tiny("tiny:layers=1,hidden=32,heads=2,ff=64", None, 0)
    critic = _critic_of(
        _cfg(write_config, {"rl": {"algo": "ppo"}, "critic": {"init_from": str(tmp_path / "rm")}}),
        policy,
        torch.device("cpu"),
    )
    assert torch.equal(critic.head.weight, rm.score.weight)
    assert torch.equal(critic.trunk.embed_tokens.weight, rm.model.embed_tokens.weight)
    with pytest.raises(CriticError, match="not a local HF model directory"):
        _critic_of(
            _cfg(write_config, {"rl": {"algo": "ppo"}, "critic": {"init_from": str(tmp_path / "nope")}}),
            policy,
            torch.device("cpu"),
        )
    with pytest.raises(CriticError, match="separate"):
        _critic_of(
            _cfg(write_config, {"rl": {"algo": "ppo"}, "critic": {"kind": "head", "init_from": str(tmp_path / "rm")}}),
            policy,
            torch.device("cpu"),
        )


def test_config_refuses_leave_one_out_without_a_group(write_config):
    with pytest.raises(ConfigError, match="group_size"):
        load_config(write_config({"rl": {"algo": "rloo"}, "rollout": {"group_size": 1}}))
    with pytest.raises(ConfigError, match="rl.algo"):
        load_config(write_config({"rl": {"algo": "a2c"}}))


# ----------------------------------------------------------------------------- through the trainer


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["separate", "head"])
def test_ppo_run_logs_the_critic_metrics_and_trains_both(write_config, digits_reward, tmp_path, kind):
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": digits_reward}],
                "rl": {"algo": "ppo", "beta": 0.05, "mu": 2, "num_minibatches": 2},
                "critic": {"kind": kind, "lr": 1e-2},
                "train": {"steps": 3},
                "log": {"save_every": 0},
            }
        )
    )
    train_rl(cfg, tmp_path / "run")
    rows = [r for r in _rows(tmp_path / "run") if r["step"] > 0]
    for key in (
        "loss/value",
        "value/mean",
        "value/explained_variance",
        "approx_kl",
        "clip_ratio",
        "value/clip_ratio",
        "kl",
    ):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["loss/value"] < rows[0]["loss/value"]  # the critic learns to predict the returns
    assert any(r["approx_kl"] > 0 for r in rows)  # 4 optimizer steps per batch: the policy moves off the sampler's
    state = torch.load(list_checkpoints(tmp_path / "run")[-1] / "trainer_state.pt", weights_only=False)
    assert "head.weight" in state["critic"] and (kind == "head") == (
        not any(k.startswith("trunk.") for k in state["critic"])
    )


def test_ppo_refuses_a_checkpoint_without_a_critic(write_config, digits_reward, tmp_path):
    from aha.checkpoint import CheckpointError

    base = {"rewards": [{"name": digits_reward}], "train": {"steps": 2}, "log": {"eval_every": 0}}
    train_rl(load_config(write_config(base)), tmp_path / "run")
    with pytest.raises(CheckpointError, match="no critic"):
        train_rl(
            load_config(write_config({**base, "rl": {"algo": "ppo"}, "train": {"steps": 4}})),
            tmp_path / "run",
            resume=True,
        )


@pytest.mark.parametrize("algo", ["rloo", "reinforce++", "reinforce++_baseline"])
def test_critic_free_estimators_run_and_keep_no_critic(write_config, digits_reward, tmp_path, algo):
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": digits_reward}],
                "rl": {"algo": algo, "beta": 0.1},
                "train": {"steps": 2},
                "log": {"eval_every": 0},
            }
        )
    )
    last = train_rl(cfg, tmp_path / "run")
    # step 2 samples from the policy after one update: it has left the reference, so its KL (β = 0.1) is not 0
    assert last["kl"] > 0 and math.isfinite(last["loss/policy"]) and last["grad_norm"] > 0
    assert "loss/value" not in last
    state = torch.load(list_checkpoints(tmp_path / "run")[-1] / "trainer_state.pt", weights_only=False)
    assert "critic" not in state


def test_critic_class_without_trunk_is_shared():
    assert Critic(8).shared and not Critic(8, trunk=torch.nn.Identity()).shared


def test_ppo_losses_do_not_depend_on_the_micro_batch_split(write_config, digits_reward, tmp_path):
    """Gradient accumulation is bookkeeping: one step on the same rollouts logs the same policy and value
    losses whether the 16 sequences go through in one micro-batch or four, and when the four are rows of like
    lengths, each cut to its own longest (``train.group_by_length``)."""
    logged = {}
    for micro, grouped in ((16, False), (4, False), (4, True)):
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "rl": {"algo": "ppo"},
                    "train": {"steps": 1, "micro_batch_size": micro, "group_by_length": grouped},
                    "log": {"eval_every": 0},
                }
            )
        )
        logged[micro, grouped] = train_rl(cfg, tmp_path / f"micro-{micro}-{grouped}")
    for key in ("loss/policy", "loss/value", "value/mean", "entropy", "grad_norm"):
        for split in ((4, False), (4, True)):
            assert logged[split][key] == pytest.approx(logged[16, False][key], abs=1e-5), (key, split)
    assert logged[16, False]["loss/value"] > 0


def test_a_cut_micro_batch_drops_only_columns_that_are_padding_in_all_its_rows():
    """``micro_batch(..., cut=True)``: left of its rows' longest prompt and right of their longest completion go;
    every real token keeps its logprob (positions follow the attention mask), to float rounding."""
    model, tok = build_tiny("tiny:layers=2,hidden=32,heads=2,ff=64,ctx=32", "0123456789")
    prompts, completions = [[5, 6, 7, 8], [5, 6], [9, 9, 9]], [[1, 2], [3, 4, 5, 6, 7], [2]]
    roll = Rollouts(prompts, completions, [[-1.0] * len(c) for c in completions], ["stop"] * 3)
    tensors = pack_rollouts(roll, tok.pad_token_id, torch.device("cpu"))
    batch = RolloutBatch(1, [{}] * 3, roll, [""] * 3, [0.0] * 3, {}, tensors=tensors)
    batch.old_logp, batch.advantages = tensors["sampler_logp"], torch.tensor([1.0, -1.0, 0.5])
    for rows, shape in (([0, 2], (2, 4 + 2)), ([1, 2], (2, 3 + 5))):
        whole = micro_batch(batch, torch.tensor(rows))
        cut = micro_batch(batch, torch.tensor(rows), cut=True)
        assert whole["input_ids"].shape == (2, 4 + 5) and cut["input_ids"].shape == shape
        assert cut["mask"].shape == cut["old_logp"].shape == (2, shape[1] - (4 if rows[0] == 0 else 3))
        assert torch.equal(cut["advantages"], whole["advantages"])
        with torch.no_grad():
            full = completion_forward(model, whole["input_ids"], whole["attention_mask"], 5)[0]
            short = completion_forward(model, cut["input_ids"], cut["attention_mask"], cut["mask"].shape[1])[0]
        n = cut["mask"].shape[1]
        assert torch.equal(whole["mask"][:, n:], torch.zeros_like(whole["mask"][:, n:]))  # only padding went
        assert torch.allclose(full[:, :n] * cut["mask"], short * cut["mask"], atol=1e-5)
