"""The reward-model stage's loop, read top to bottom: build the parts once, then train steps with eval and
checkpoints on the shared run skeleton, then publish the final model and its support (see :mod:`aha.rm`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from aha.algos.preference import plackett_luce_loss, ranked_pairs, ranking_bt_loss, ranking_metrics, reward_centering
from aha.checkpoint import resume_from, training_state, write_manifest
from aha.config import RunConfig
from aha.data.preferences import PreferenceRow
from aha.data.sampler import PromptSampler
from aha.errors import TrainingError
from aha.modeling.device import pick_device, seed_everything
from aha.modeling.options import autocast, set_attention, training_attention
from aha.modeling.precision import decide
from aha.models import DEFAULT_ALPHABET
from aha.optim import make_optimizer
from aha.rewards.learned import CONFIG_KEY, _unwrap, encode_for_rm, pad_batch, pooled_hidden, render_text, rm_template
from aha.rm.stage import (
    EnsembleHeads,
    build_reward_backbone,
    publish_final_model,
    reward_model_dir,
    split_preferences,
    write_ensemble,
    write_support,
)
from aha.run import Run
from aha.threads import use_threads


@dataclass
class RMParts:
    """What the stage builds once from its sections (``reward_model``, ``train``, ``model``): the data, encoded; the
    backbone, its trunk and the ensemble heads; the optimizer, schedule and ranking order."""

    cfg: RunConfig
    device: torch.device
    amp: torch.dtype | None
    tok: Any
    model: torch.nn.Module
    trunk: Any  # the backbone's transformer (the pooled hidden state's source)
    heads: EnsembleHeads
    train_rows: list[PreferenceRow]
    eval_rows: list[PreferenceRow]
    train_ids: list[list[list[int]]]  # per ranking, per completion: token ids
    eval_ids: list[list[list[int]]]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: PromptSampler
    loss_of: Callable


def train_reward_model(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train a reward model on ``cfg.reward_model.path``; returns the last logged metrics.

    A step takes ``train.batch_size`` rankings (all their completions), forwarded ``train.micro_batch_size``
    sequences at a time (whole rankings per pass, since the loss couples a ranking's scores)."""
    run = Run(cfg, run_dir, resume, "reward model")
    rc, tr = cfg.reward_model, cfg.train
    t_start = time.perf_counter()
    p = build_parts(cfg)
    start = run.begin(lambda ckpt: resume_from(ckpt, p.model, p.optimizer, p.scheduler, p.sampler, p.heads))
    if not run.resuming:  # a fresh start: no final model of an earlier run either
        shutil.rmtree(reward_model_dir(run.dir), ignore_errors=True)
    last: dict = {}
    if run.eval_due(0):
        last = evaluate(p)
        run.log(0, last)
    for step in run.steps(start):
        last = train_step(p, step)
        if run.eval_due(step):
            last.update(evaluate(p))
        acc = {"acc": f"{last['eval/pairwise_accuracy']:.3f}"} if "eval/pairwise_accuracy" in last else {}
        run.log(step, last, shown={"loss": f"{last['loss/rm']:.3f}", **acc})
        if run.save_due(step):
            _sync_score(p.model, p.heads)
            ckpt = run.save(step, p.model, p.tok, training_state(p.optimizer, p.scheduler, p.sampler, p.heads))
            if rc.num_heads > 1:
                write_ensemble(ckpt / "model", p.heads)
                write_manifest(ckpt)  # (again: the manifest covers the heads too)
    publish_final_model(run.dir)
    if rc.support:  # where the training data lies in feature space: the rm: reward's support_distance
        write_support(
            run.dir,
            p.train_ids,
            p.eval_ids,
            p.device,
            tr.micro_batch_size,
            rc.support_samples,
            tr.seed,
            cfg.log.progress,
        )
    return {**run.finish(last), "time/total_s": time.perf_counter() - t_start}


def build_parts(cfg: RunConfig) -> RMParts:
    """Seeds, device, the rankings split and encoded, the backbone with its config note, the heads (the HF score head
    frozen: only where their mean is saved), and the optimizer with the heads as a second parameter group (they
    travel in the checkpoint's trainer state the same way, so a resumed ensemble continues exactly)."""
    rc, tr = cfg.reward_model, cfg.train
    seed_everything(tr.seed)
    device = pick_device(tr.device)
    amp = decide(tr.precision, device).train  # (a training pass: fp32 on a CPU under 'auto', see its rule)
    train_rows, eval_rows = split_preferences(cfg)
    plain_texts = [render_text(r.prompt, c, None, "plain") for r in train_rows + eval_rows for c in r.completions]
    alphabet = DEFAULT_ALPHABET + "".join(sorted(set("".join(plain_texts)) - set(DEFAULT_ALPHABET)))
    model, tok = build_reward_backbone(cfg, alphabet)
    use_threads(tr.threads)
    template = rm_template(rc.template, tok)
    note = {"template": template, "max_length": rc.max_length, "num_heads": rc.num_heads, "loss": rc.loss}
    setattr(_unwrap(model).config, CONFIG_KEY, note)

    def encode(rows: list[PreferenceRow]) -> list[list[list[int]]]:
        return [
            [encode_for_rm(render_text(r.prompt, c, tok, template), tok, rc.max_length) for c in r.completions]
            for r in rows
        ]

    train_ids, eval_ids = encode(train_rows), encode(eval_rows)
    model.to(device).train()
    hidden = cast(Any, _unwrap(model)).config.get_text_config().hidden_size  # (a transformers model's config)
    heads = EnsembleHeads(hidden, rc.num_heads, tr.seed + 17).to(device)
    for name, param in model.named_parameters():
        if "score" in name.split("."):
            param.requires_grad_(False)
    trunk = cast(Any, _unwrap(model)).base_model
    set_attention([_unwrap(model)], training_attention(tr.attention, device))
    optimizer, scheduler = make_optimizer(model, tr, tr.steps, heads, rc.head_lr)
    sampler = PromptSampler(len(train_rows), tr.seed)
    return RMParts(cfg, device, amp, tok, model, trunk, heads, train_rows, eval_rows, train_ids, eval_ids, optimizer,
                   scheduler, sampler, _loss_fn(rc.loss, rc.margin))  # fmt: skip


def scores(p: RMParts, seqs: list[list[int]]) -> torch.Tensor:
    """Every head's score of each sequence, ``[N, heads]`` (the trunk under autocast, the heads in fp32)."""
    ids, mask = pad_batch(seqs, p.tok.pad_token_id, p.device)
    with autocast(p.device, p.amp):
        pooled = pooled_hidden(p.trunk, ids, mask, p.tok.pad_token_id)
    return p.heads(pooled.float())


@torch.no_grad()
def evaluate(p: RMParts) -> dict:
    """Held-out ranking metrics of the ensemble mean; with several heads also their disagreement and the worst head."""
    rc, tr = p.cfg.reward_model, p.cfg.train
    p.model.eval()
    per_row = []
    for chunk in _chunks(p.eval_ids, tr.micro_batch_size):
        flat = scores(p, [s for i in chunk for s in p.eval_ids[i]])
        per_row += _split(flat, [len(p.eval_ids[i]) for i in chunk])
    p.model.train()
    rankings = [r.ranking for r in p.eval_rows]
    metrics = {f"eval/{k}": v for k, v in ranking_metrics([s.mean(-1).tolist() for s in per_row], rankings).items()}
    if rc.num_heads > 1:
        metrics["eval/ensemble_std"] = torch.cat([s.std(-1) for s in per_row]).mean().item()
        head_acc = [
            ranking_metrics([s[:, k].tolist() for s in per_row], rankings)["pairwise_accuracy"]
            for k in range(rc.num_heads)
        ]
        metrics["eval/head_pairwise_accuracy_min"] = min(head_acc)
    return metrics


def train_step(p: RMParts, step: int) -> dict:
    """One optimizer step on ``train.batch_size`` rankings: head k weighs ranking r by w[r, k] ~ Poisson(1) (the
    online bootstrap) and its loss is the weighted mean; gradients accumulate over micro-batches; then clip and step."""
    rc, tr = p.cfg.reward_model, p.cfg.train
    t0 = time.perf_counter()
    batch = p.sampler.take(tr.batch_size)
    if rc.num_heads > 1 and rc.bootstrap:
        weights = torch.poisson(torch.ones(len(batch), rc.num_heads)).to(p.device)
    else:
        weights = torch.ones(len(batch), rc.num_heads, device=p.device)
    p.optimizer.zero_grad(set_to_none=True)
    loss_total, center_total, right, n_pairs = _accumulate(p, step, batch, weights)
    params = [q for g in p.optimizer.param_groups for q in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm)
    p.optimizer.step()
    p.scheduler.step()
    metrics = {
        "loss/rm": loss_total,
        "train/pairwise_accuracy": right / max(1, n_pairs),
        "grad_norm": grad_norm.item(),
        "lr": p.scheduler.get_last_lr()[0],
        "time/train_s": time.perf_counter() - t0,
    }
    if rc.center_coef:
        metrics["loss/center"] = center_total
    return metrics


def _accumulate(p: RMParts, step: int, batch: list[int], weights: torch.Tensor) -> tuple[float, float, float, int]:
    """Backward the batch's loss (+ reward centering) micro-batch by micro-batch; returns the summed loss and centering
    term, and the ranked pairs the ensemble mean orders right, of how many."""
    rc, tr = p.cfg.reward_model, p.cfg.train
    norm = weights.sum(0).clamp(min=1.0)
    loss_total = center_total = 0.0
    right: float  # (a count of pairs, summed as floats)
    right = n_pairs = 0
    for chunk in _chunks([p.train_ids[i] for i in batch], tr.micro_batch_size):
        seqs = [s for j in chunk for s in p.train_ids[batch[j]]]
        per_row = _split(scores(p, seqs), [len(p.train_ids[batch[j]]) for j in chunk])
        losses = torch.stack([p.loss_of(s, p.train_rows[batch[j]].ranking) for j, s in zip(chunk, per_row)])
        loss = ((losses * weights[chunk]).sum(0) / norm).mean()  # [rows, heads] → one number
        center = reward_centering(torch.cat(per_row), _groups(per_row), rc.center_coef).mean() * len(chunk) / len(batch)
        total = loss + center
        if not torch.isfinite(total):
            raise TrainingError(f"reward-model loss became {total.item()} at step {step}: try a lower train.lr")
        total.backward()
        loss_total += loss.item()
        center_total += center.item()
        for j, s in zip(chunk, per_row):
            mean = s.detach().mean(-1)
            for a, b in ranked_pairs(p.train_rows[batch[j]].ranking):
                right += float(mean[a] > mean[b])
                n_pairs += 1
    return loss_total, center_total, right, n_pairs


def _sync_score(model: nn.Module, heads: EnsembleHeads) -> None:
    """Write the heads' mean into the HF model's score head (every copy peft keeps of it) before a save."""
    mean = heads.weight.detach().mean(0, keepdim=True)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and "score" in name.split(".") and module.weight.shape == mean.shape:
                module.weight.copy_(mean.to(module.weight.dtype))


def _loss_fn(kind: str, margin: float):
    if kind == "pl":
        return plackett_luce_loss
    return lambda scores, tiers: ranking_bt_loss(scores, tiers, margin)


def _chunks(rankings: list[list], max_seqs: int) -> list[list[int]]:
    """Indices of ``rankings`` in groups of whole rankings holding at most ``max_seqs`` sequences (at least one)."""
    out: list[list[int]]
    cur: list[int]
    out, cur, n = [], [], 0
    for i, r in enumerate(rankings):
        if cur and n + len(r) > max_seqs:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += len(r)
    return out + ([cur] if cur else [])


def _split(flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(flat, sizes))


def _groups(per_row: list[torch.Tensor]) -> list[list[int]]:
    out, pos = [], 0
    for s in per_row:
        out.append(list(range(pos, pos + len(s))))
        pos += len(s)
    return out
