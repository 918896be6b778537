"""The update phase: μ passes over the batch × ``rl.num_minibatches`` shuffled minibatches, one optimizer step
each, with gradient accumulation over micro-batches. Per micro-batch:

    loss = aggregate(policy_loss(ρ, A) [× w] [+ β·KL to the reference: GRPO]) [− c_H·entropy] [+ c_V·value loss]

where ``w = min(π_old/π_behaviour, rl.is_cap)`` per token (or per completion) corrects a batch sampled from older
weights (``rollout.asynchronous``: :mod:`aha.algos.offpolicy`).

An optimizer step whose loss or gradient norm is not finite is skipped (:func:`aha.optim.finite_step`): the
weights, the optimizer's state and the learning-rate schedule stay as they were (as Megatron and DeepSpeed skip an
overflowing fp16 step).

With ``distributed.trainers`` > 1 the ranks (:mod:`aha.rl.ranks`) each take a share of every minibatch's
rows, keep its normalisers, and sum their gradients before the clip and the step: the one-process update.

Returns the statistics of the pass: the ratios and KLs each a mean over the batch's completion tokens and the μ
passes (the same however the batch is split into minibatches, micro-batches and ranks); losses and gradient norms a
mean over the optimizer steps (NaN where a skipped step's was); and what was not finite in the first skipped
optimizer step, or None when every one was taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aha.algos.advantages import AdvantageEstimator
from aha.algos.kl import kl_estimate
from aha.algos.losses import (
    aggregate_loss,
    approx_kl,
    clipped_value_loss,
    masked_mean,
    policy_loss,
)
from aha.algos.offpolicy import importance_weight_stats, truncated_importance_weights
from aha.config.objective import RLConfig
from aha.critic import Critic
from aha.data.sampler import length_groups
from aha.modeling.options import autocast, lean_activations
from aha.optim import finite_step
from aha.rl.batch import RolloutBatch
from aha.rl.forward import policy_forward


@dataclass(frozen=True)
class UpdateSettings:
    """What the update reads of the config: the ``rl`` section, and of the others only these numbers."""

    rl: RLConfig
    temperature: float  # rollout.temperature: the logprobs are the sampling distribution's
    max_new_tokens: int  # rollout.max_new_tokens: Dr. GRPO's constant normaliser
    micro_batch_size: int  # train.micro_batch_size
    max_grad_norm: float  # train.max_grad_norm
    value_clip_range: float | None = None  # critic.clip_range
    vf_coef: float = 0.0  # critic.vf_coef
    lean_activations: bool | str = "auto"  # model.lean_activations
    off_policy: bool = False  # rollout.asynchronous: the batch's sampler is older than π_old (truncated IS weights)
    group_by_length: bool = False  # train.group_by_length: micro-batches of like lengths, each cut to its own

    @classmethod
    def of(cls, cfg) -> UpdateSettings:
        """From a RunConfig: the builder's one look at the whole config."""
        ro, tr = cfg.rollout, cfg.train
        return cls(
            cfg.rl,
            ro.temperature,
            ro.max_new_tokens,
            tr.micro_batch_size,
            tr.max_grad_norm,
            cfg.critic.clip_range,
            cfg.critic.vf_coef,
            cfg.model.lean_activations,
            cfg.rollout.asynchronous,
            tr.group_by_length,
        )

    @property
    def updates(self) -> int:
        """Optimizer steps per batch of rollouts: μ passes × minibatches."""
        return updates_per_batch(self.rl)


@dataclass
class OptimizerStep:
    """The optimizer-step part: what turns a scored batch into new weights. The trainer holds one; so does each
    data-parallel rank 1..M−1 (:mod:`aha.rl.ranks`), built from rank 0's weights and optimizer state."""

    settings: UpdateSettings
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # the optimizer's LRScheduler (aha.optim.make_optimizer)
    estimator: AdvantageEstimator  # rl.algo
    device: torch.device
    amp: torch.dtype | None  # bf16 autocast, or None = fp32
    critic: Critic | None = None  # PPO's value model
    trainers: Any = None  # rank 0's TrainerGroup (aha.rl.ranks) when distributed.trainers > 1

    @property
    def updates(self) -> int:
        return self.settings.updates


def minibatches(n: int, k: int, device) -> list[torch.Tensor]:
    """Row indices of ``k`` minibatches covering the batch once; shuffled when there is more than one."""
    order = torch.randperm(n) if k > 1 else torch.arange(n)
    return [chunk.to(device) for chunk in order.tensor_split(k) if len(chunk)]


def updates_per_batch(rl) -> int:
    """Optimizer steps per batch of rollouts: μ passes × minibatches (``rl``: the config's RLConfig)."""
    return rl.mu * rl.num_minibatches


def update(opt: OptimizerStep, batch: RolloutBatch) -> tuple[dict, str | None]:
    """The update phase; with ``distributed.trainers`` > 1 the data-parallel ranks share every minibatch."""
    rl = opt.settings.rl
    plan = [minibatches(len(batch), rl.num_minibatches, opt.device) for _ in range(rl.mu)]
    if opt.trainers is not None:  # (aha.rl.ranks) rank 0 is this process; the others take the same plan
        return opt.trainers.update(batch, plan)
    return update_rows(opt, batch, plan)


def update_rows(
    opt: OptimizerStep, batch: RolloutBatch, plan: list[list[torch.Tensor]], share=None
) -> tuple[dict, str | None]:
    """The passes and minibatches ``plan`` holds (each pass's minibatches of row indices), one optimizer step each.
    ``share`` (a :class:`~aha.rl.ranks.Share`: one data-parallel rank's part) takes that rank's rows of
    every minibatch, with the whole minibatch's normalisers, and sums the gradients, the loss and the statistics over
    the ranks; None: one process takes every row."""
    st, rl = opt.settings, opt.settings.rl
    mask = batch.mask
    stats = dict.fromkeys(["loss/policy", "kl", "clip_ratio", "entropy", "grad_norm", "approx_kl"], 0.0)
    if opt.critic is not None:
        stats.update(dict.fromkeys(["loss/value", "value/clip_ratio", "value/grad_norm"], 0.0))
    if st.off_policy:
        stats.update(dict.fromkeys(["is/weight_mean", "is/weight_max", "is/clipped_share"], 0.0))
    skipped = None
    for it, passes in enumerate(plan):
        for mb_rows in passes:
            opt.optimizer.zero_grad(set_to_none=True)
            mb_loss = 0.0
            mb_seq, mb_tok = len(mb_rows), mask[mb_rows].sum().clamp(min=1).item()  # the whole minibatch's
            for rows_idx in micro_rows(batch, mb_rows if share is None else share.rows(mb_rows), st):
                mb_loss += micro_batch_backward(opt, batch, rows_idx, it, mb_seq, mb_tok, stats)
            problem = clip_and_step(opt, mb_loss, stats, share)  # None: the step was taken
            if problem is not None and skipped is None:
                skipped = f"{problem} (pass {it + 1})" if rl.mu > 1 else problem
    if share is not None:  # the ranks' shares of the statistics (the gradient norms are already the same on each)
        stats = share.sum_stats(stats, same={"grad_norm", "value/grad_norm"})
    if opt.device.type == "cuda":  # kernels run asynchronously: the update ends when they have
        torch.cuda.synchronize(opt.device)
    return stats, skipped


def micro_rows(batch: RolloutBatch, rows: torch.Tensor, st: UpdateSettings) -> list[torch.Tensor]:
    """``rows`` in micro-batches of ``train.micro_batch_size``, or (``train.group_by_length``) of like lengths
    (:func:`~aha.data.sampler.length_groups`), which :func:`micro_batch` then cuts to their own longest."""
    if not st.group_by_length:
        return list(rows.split(st.micro_batch_size))
    lengths = batch.tensors["attention_mask"][rows].sum(1).tolist()
    return [rows[group] for group in length_groups(lengths, st.micro_batch_size)]


def micro_batch_backward(
    opt: OptimizerStep, batch: RolloutBatch, rows_idx: torch.Tensor, it: int, mb_seq: int, mb_tok: float, stats: dict
) -> float:
    """One micro-batch's forward pass, loss (normalised by its minibatch's ``mb_seq`` sequences and ``mb_tok``
    tokens) and backward pass, in pass ``it``; adds its share of the statistics to ``stats``; returns its loss."""
    st, rl, critic, updates = opt.settings, opt.settings.rl, opt.critic, opt.updates
    n_tok = batch.mask.sum().clamp(min=1).item()
    mb = micro_batch(batch, rows_idx, cut=st.group_by_length)
    w = mb["mask"].sum().item() / n_tok / rl.mu  # this micro-batch's share of the step's token means
    with autocast(opt.device, opt.amp):
        logp, entropy, values = policy_forward(
            opt.policy,
            critic,
            mb["input_ids"],
            mb["attention_mask"],
            mb["mask"].shape[1],
            st.temperature,
            "grad" if rl.entropy_coef > 0 else ("detached" if it == 0 else "none"),
            lean=lean_activations(st.lean_activations, opt.policy, opt.device, mb["input_ids"].numel(), opt.amp),
        )
    logp = logp.float()
    # exactly on-policy (one update per batch): π_old = π_θ, the ratio is 1 and only its gradient matters
    mb_old = logp.detach() if updates == 1 else mb["old_logp"]
    per_token, clipped = policy_loss(rl.policy_loss)(
        logp,
        mb_old,
        mb["advantages"],
        mb["mask"],
        epsilon_low=rl.epsilon_low,
        epsilon_high=rl.epsilon_high,
        level=rl.importance_sampling_level,
        dual_clip=rl.dual_clip,
    )
    if st.off_policy:  # asynchronous rollouts: each token's loss × min(π_old/π_behaviour, C) (aha.algos.offpolicy)
        weights, capped = truncated_importance_weights(mb_old, mb["sampler_logp"], mb["mask"], rl.is_cap, rl.is_level)
        per_token = per_token * weights
        add_weight_stats(stats, importance_weight_stats(weights, capped, mb["mask"]), w)
    pg_loss = aggregate_loss(per_token, mb["mask"], rl.loss_type, st.max_new_tokens, mb_seq, mb_tok)
    loss = pg_loss
    if batch.ref_logp is not None and not opt.estimator.kl_in_reward and rl.beta > 0:  # GRPO: β·KL in the loss
        kl = kl_estimate(logp, mb["ref_logp"], rl.kl_estimator)
        loss = aggregate_loss(per_token + rl.beta * kl, mb["mask"], rl.loss_type, st.max_new_tokens, mb_seq, mb_tok)
        stats["kl"] += masked_mean(kl.detach(), mb["mask"]).item() * w
    if rl.entropy_coef > 0:
        loss = loss - rl.entropy_coef * aggregate_loss(entropy, mb["mask"], "dapo", 0, mb_seq, mb_tok)
    if critic is not None:
        v_loss, v_clipped = clipped_value_loss(
            values,
            mb["values"],
            mb["returns"],
            st.value_clip_range,
        )
        v_loss = aggregate_loss(v_loss, mb["mask"], "dapo", 0, mb_seq, mb_tok)
        loss = loss + st.vf_coef * v_loss
        stats["loss/value"] += v_loss.item() / updates  # micro-batch shares sum to the minibatch's loss
        stats["value/clip_ratio"] += masked_mean(v_clipped.float(), mb["mask"]).item() * w
    loss.backward()
    stats["loss/policy"] += pg_loss.item() / updates
    stats["clip_ratio"] += masked_mean(clipped.float(), mb["mask"]).item() * w
    stats["approx_kl"] += approx_kl(logp, mb_old, mb["mask"]) * w
    if entropy is not None and it == 0:
        stats["entropy"] += (entropy.detach() * mb["mask"]).sum().item() / n_tok
    return loss.item()


# [B, C]: a column a completion token
_PER_TOKEN = ("mask", "sampler_logp", "old_logp", "ref_logp", "values", "returns")


def micro_batch(batch: RolloutBatch, rows_idx: torch.Tensor, cut: bool = False) -> dict[str, torch.Tensor]:
    """The rows ``rows_idx`` of the batch's tensors (``[left-padded prompt | right-padded completion]`` and the
    per-token ones) and of its old logprobs, advantages, reference logprobs, values and returns (those it has).
    ``cut``: without the columns that are padding in every one of these rows (left of their longest prompt, right of
    their longest completion): the same numbers for every real token, on a shorter sequence. Positions follow the
    attention mask (:func:`~aha.modeling.logprobs.completion_forward`), so cutting left padding moves nothing."""
    named = {"old_logp": batch.old_logp, "advantages": batch.advantages, "ref_logp": batch.ref_logp}
    named |= {"values": batch.values, "returns": batch.returns}
    mb = {k: v[rows_idx] for k, v in {**batch.tensors, **named}.items() if v is not None}
    if not cut:
        return mb
    attention, C = mb["attention_mask"], mb["mask"].shape[1]
    P = attention.shape[1] - C
    keep = max(1, int(attention[:, P:].sum(1).max()))  # the longest completion here
    start = P - int(attention[:, :P].sum(1).max())  # left of the longest prompt here
    for k, v in mb.items():
        if k in ("input_ids", "attention_mask"):
            mb[k] = v[:, start : P + keep]
        elif k in _PER_TOKEN or (k == "advantages" and v.dim() == 2):
            mb[k] = v[:, :keep]
    return mb


def add_weight_stats(stats: dict, weights: dict, share: float) -> None:
    """A micro-batch's importance-weight statistics into the pass's: means by its ``share`` of the tokens, the max."""
    stats["is/weight_mean"] += weights["is/weight_mean"] * share
    stats["is/clipped_share"] += weights["is/clipped_share"] * share
    stats["is/weight_max"] = max(stats["is/weight_max"], weights["is/weight_max"])


def clip_and_step(opt: OptimizerStep, mb_loss: float, stats: dict, share=None) -> str | None:
    """Sum the ranks' gradients (``share``), clip them, and step the optimizer and the schedule unless the loss or a
    gradient norm is not finite; adds the norms to ``stats``. Returns what was not finite, or None."""
    policy, critic, st, updates = opt.policy, opt.critic, opt.settings, opt.updates
    if share is not None:  # data-parallel: every rank now holds the sums over all ranks (one all-reduce)
        mb_loss = share.sum_gradients([policy] if critic is None else [policy, critic], mb_loss)
    grad_norms = [torch.nn.utils.clip_grad_norm_(policy.parameters(), st.max_grad_norm).item()]
    stats["grad_norm"] += grad_norms[0] / updates
    if critic is not None:
        grad_norms.append(torch.nn.utils.clip_grad_norm_(critic.parameters(), st.max_grad_norm).item())
        stats["value/grad_norm"] += grad_norms[1] / updates
    problem = finite_step(opt.optimizer, mb_loss, *grad_norms)
    if problem is None:
        opt.scheduler.step()
    return problem
