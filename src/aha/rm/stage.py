"""The reward-model stage (``stage: reward_model``) on the shared run skeleton (:class:`aha.run.Run`): a backbone
with ``reward_model.num_heads`` scalar heads, trained on rankings or pairs; the final model goes to ``RUN_DIR/model``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from aha.algos.preference import (
    plackett_luce_loss,
    ranked_pairs,
    ranking_bt_loss,
    ranking_metrics,
    reward_centering,
)
from aha.checkpoint import list_checkpoints, resume_from, training_state, write_manifest
from aha.config import RunConfig
from aha.data.preferences import PreferenceRow, read_preferences
from aha.data.sampler import PromptSampler
from aha.errors import TrainingError, first_line
from aha.modeling.device import pick_device, seed_everything
from aha.modeling.options import (
    autocast,
    autocast_dtype,
    set_attention,
    training_attention,
)
from aha.models import DEFAULT_ALPHABET, ModelLoadError, build_tiny, resolve_model_dir
from aha.optim import make_optimizer
from aha.rewards.learned import (
    CONFIG_KEY,
    ENSEMBLE_FILE,
    _unwrap,
    encode_for_rm,
    load_reward_model,
    pad_batch,
    pooled_hidden,
    render_text,
    rm_template,
)
from aha.rewards.support import fit_support
from aha.run import Run
from aha.tasks import DataError
from aha.threads import use_threads


def build_reward_backbone(cfg: RunConfig, alphabet: str):
    """``(model, tokenizer)``: a ``*ForSequenceClassification`` with one (fresh) score head, fp32 on CPU, LoRA
    (``task_type="SEQ_CLS"``) if configured. ``tiny[:spec]`` builds a Llama in code with a char tokenizer over
    ``alphabet``; anything else loads from ``init_from`` or ``model.name`` (an HF dir, a .gguf, an alias)."""
    from safetensors import SafetensorError
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LlamaForSequenceClassification,
    )

    name = str(cfg.init_from) if cfg.init_from is not None else cfg.model.name
    if cfg.init_from is not None and not Path(cfg.init_from).exists():
        raise ModelLoadError(
            f"init_from: {cfg.init_from} not found (an HF model directory, e.g. an SFT checkpoint's "
            "RUN/checkpoints/step-N/model)"
        )
    model: Any  # a transformers model (a peft one with LoRA)
    tok: Any  # its tokenizer
    if cfg.init_from is None and name.split(":")[0] == "tiny":
        lm, tok = build_tiny(name, alphabet, cfg.train.seed)
        config = lm.config
        config.num_labels = 1
        with torch.random.fork_rng():
            torch.manual_seed(cfg.train.seed)
            model = LlamaForSequenceClassification(config)
    elif name.startswith("hf:"):
        raise ModelLoadError(
            "model.name 'hf:…' is not supported by the reward-model stage yet; download the model "
            "and give its local directory"
        )
    else:
        path = resolve_model_dir(name)
        try:
            import transformers

            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # "score.weight newly initialised" is the point here
            try:
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
            finally:
                transformers.logging.set_verbosity(verbosity)
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, SafetensorError) as e:
            raise ModelLoadError(f"could not load a reward-model backbone from {path}: {first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="SEQ_CLS",
            ),
        )
    return model, tok


class EnsembleHeads(nn.Linear):
    """``num_heads`` bias-free scalar heads on the pooled hidden state, each drawn with its own seed."""

    def __init__(self, hidden: int, num_heads: int, seed: int):
        super().__init__(hidden, num_heads, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.weight.copy_(torch.randn(num_heads, hidden, generator=gen) / (hidden + 1) ** 0.5)


def _sync_score(model: nn.Module, heads: EnsembleHeads) -> None:
    """Write the heads' mean into the HF model's score head (every copy peft keeps of it) before a save."""
    mean = heads.weight.detach().mean(0, keepdim=True)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and "score" in name.split(".") and module.weight.shape == mean.shape:
                module.weight.copy_(mean.to(module.weight.dtype))


def write_ensemble(model_dir: Path, heads: EnsembleHeads) -> None:
    """``aha_ensemble.json`` beside the weights: every head (exact fp32 values; JSON floats round-trip)."""
    data = {
        "num_heads": heads.out_features,
        "weight": heads.weight.detach().float().cpu().tolist(),
        "note": "score.weight in model.safetensors is the mean of these heads (= the ensemble mean score)",
    }
    tmp = model_dir / (ENSEMBLE_FILE + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, model_dir / ENSEMBLE_FILE)


def _loss_fn(kind: str, margin: float):
    if kind == "pl":
        return plackett_luce_loss
    return lambda scores, tiers: ranking_bt_loss(scores, tiers, margin)


def split_preferences(cfg: RunConfig) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """``(train, held_out)``: eval_path's rows, or the last eval_fraction of path's rows (at least one)."""
    rc = cfg.reward_model
    rows = read_preferences(rc.path)
    if rc.eval_path is not None:
        return rows, read_preferences(rc.eval_path)
    n_eval = max(1, round(len(rows) * rc.eval_fraction))
    if len(rows) - n_eval < 1:
        raise DataError(
            f"{rc.path}: {len(rows)} row(s) cannot be split into training and held-out rows; add rows or "
            "set reward_model.eval_path"
        )
    return rows[:-n_eval], rows[-n_eval:]


def reward_model_dir(run_dir: Path) -> Path:
    """Where the stage leaves its final reward model: ``RUN_DIR/model``."""
    return Path(run_dir) / "model"


def train_reward_model(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train a reward model on ``cfg.reward_model.path``; returns the last logged metrics.

    A step takes ``train.batch_size`` rankings (all their completions), forwarded ``train.micro_batch_size``
    sequences at a time (whole rankings per pass, since the loss couples a ranking's scores)."""
    run = Run(cfg, run_dir, resume, "reward model")
    rc, tr = cfg.reward_model, cfg.train
    t_start = time.perf_counter()

    # ============================================================ data, model, heads
    seed_everything(tr.seed)
    device = pick_device(tr.device)
    amp = autocast_dtype(tr.precision, device)
    train_rows, eval_rows = split_preferences(cfg)

    plain_texts = [render_text(r.prompt, c, None, "plain") for r in train_rows + eval_rows for c in r.completions]
    alphabet = DEFAULT_ALPHABET + "".join(sorted(set("".join(plain_texts)) - set(DEFAULT_ALPHABET)))
    model, tok = build_reward_backbone(cfg, alphabet)
    use_threads(tr.threads)
    template = rm_template(rc.template, tok)
    setattr(
        _unwrap(model).config,
        CONFIG_KEY,
        {"template": template, "max_length": rc.max_length, "num_heads": rc.num_heads, "loss": rc.loss},
    )

    def encode(rows: list[PreferenceRow]) -> list[list[list[int]]]:
        return [
            [encode_for_rm(render_text(r.prompt, c, tok, template), tok, rc.max_length) for c in r.completions]
            for r in rows
        ]

    train_ids, eval_ids = encode(train_rows), encode(eval_rows)
    model.to(device).train()
    hidden = cast(Any, _unwrap(model)).config.get_text_config().hidden_size  # (a transformers model's config)
    heads = EnsembleHeads(hidden, rc.num_heads, tr.seed + 17).to(device)
    for name, p in model.named_parameters():  # the HF score head is only where the heads' mean is saved
        if "score" in name.split("."):
            p.requires_grad_(False)
    trunk = cast(Any, _unwrap(model)).base_model
    pad_id = tok.pad_token_id
    set_attention([_unwrap(model)], training_attention(tr.attention, device))
    # the heads are a second parameter group (make_optimizer's "critic" slot), and travel in the checkpoint's
    # trainer state the same way, so a resumed ensemble continues exactly
    optimizer, scheduler = make_optimizer(model, tr, tr.steps, heads, rc.head_lr)
    sampler = PromptSampler(len(train_rows), tr.seed)
    loss_of = _loss_fn(rc.loss, rc.margin)
    start = run.begin(lambda ckpt: resume_from(ckpt, model, optimizer, scheduler, sampler, heads))
    if not run.resuming:  # a fresh start: no final model of an earlier run either
        shutil.rmtree(reward_model_dir(run.dir), ignore_errors=True)

    def forward_scores(seqs: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_batch(seqs, pad_id, device)
        with autocast(device, amp):
            pooled = pooled_hidden(trunk, ids, mask, pad_id)
        return heads(pooled.float())  # [N, heads], the heads in fp32

    @torch.no_grad()
    def run_eval() -> dict:
        model.eval()
        per_row = []
        for chunk in _chunks(eval_ids, tr.micro_batch_size):
            flat = forward_scores([s for i in chunk for s in eval_ids[i]])
            per_row += _split(flat, [len(eval_ids[i]) for i in chunk])
        model.train()
        out = ranking_metrics([s.mean(-1).tolist() for s in per_row], [r.ranking for r in eval_rows])
        metrics = {f"eval/{k}": v for k, v in out.items()}
        if rc.num_heads > 1:
            metrics["eval/ensemble_std"] = torch.cat([s.std(-1) for s in per_row]).mean().item()
            head_acc = [
                ranking_metrics([s[:, k].tolist() for s in per_row], [r.ranking for r in eval_rows])[
                    "pairwise_accuracy"
                ]
                for k in range(rc.num_heads)
            ]
            metrics["eval/head_pairwise_accuracy_min"] = min(head_acc)
        return metrics

    def train_step(step: int) -> dict:
        t0 = time.perf_counter()
        batch = sampler.take(tr.batch_size)
        # bootstrap: head k weighs ranking r by w[r, k] ~ Poisson(1); the loss of head k is its weighted mean
        if rc.num_heads > 1 and rc.bootstrap:
            weights = torch.poisson(torch.ones(len(batch), rc.num_heads)).to(device)
        else:
            weights = torch.ones(len(batch), rc.num_heads, device=device)
        norm = weights.sum(0).clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss_total = center_total = 0.0
        right: float  # (a count of pairs, summed as floats)
        right = n_pairs = 0
        for chunk in _chunks([train_ids[i] for i in batch], tr.micro_batch_size):
            seqs = [s for j in chunk for s in train_ids[batch[j]]]
            per_row = _split(forward_scores(seqs), [len(train_ids[batch[j]]) for j in chunk])
            losses = torch.stack(
                [loss_of(s, train_rows[batch[j]].ranking) for j, s in zip(chunk, per_row)]
            )  # [rows, heads]
            loss = ((losses * weights[chunk]).sum(0) / norm).mean()
            center = (
                reward_centering(torch.cat(per_row), _groups(per_row), rc.center_coef).mean() * len(chunk) / len(batch)
            )
            total = loss + center
            if not torch.isfinite(total):
                raise TrainingError(f"reward-model loss became {total.item()} at step {step}: try a lower train.lr")
            total.backward()
            loss_total += loss.item()
            center_total += center.item()
            for j, s in zip(chunk, per_row):
                mean = s.detach().mean(-1)
                for a, b in ranked_pairs(train_rows[batch[j]].ranking):
                    right += float(mean[a] > mean[b])
                    n_pairs += 1
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm)
        optimizer.step()
        scheduler.step()
        metrics = {
            "loss/rm": loss_total,
            "train/pairwise_accuracy": right / max(1, n_pairs),
            "grad_norm": grad_norm.item(),
            "lr": scheduler.get_last_lr()[0],
            "time/train_s": time.perf_counter() - t0,
        }
        if rc.center_coef:
            metrics["loss/center"] = center_total
        return metrics

    # ============================================================ the loop
    last: dict = {}
    if run.eval_due(0):
        last = run_eval()
        run.log(0, last)
    for step in run.steps(start):
        last = train_step(step)
        if run.eval_due(step):
            last.update(run_eval())
        run.log(
            step,
            last,
            shown={
                "loss": f"{last['loss/rm']:.3f}",
                **({"acc": f"{last['eval/pairwise_accuracy']:.3f}"} if "eval/pairwise_accuracy" in last else {}),
            },
        )
        if run.save_due(step):
            _sync_score(model, heads)
            ckpt = run.save(step, model, tok, training_state(optimizer, scheduler, sampler, heads))
            if rc.num_heads > 1:
                write_ensemble(ckpt / "model", heads)
                write_manifest(ckpt)  # (again: the manifest covers the heads too)
    publish_final_model(run.dir)
    if rc.support:  # where the training data lies in feature space: the rm: reward's support_distance
        write_support(
            run.dir, train_ids, eval_ids, device, tr.micro_batch_size, rc.support_samples, tr.seed, cfg.log.progress
        )
    return {**run.finish(last), "time/total_s": time.perf_counter() - t_start}


def write_support(
    run_dir: Path,
    train_ids: list,
    eval_ids: list,
    device,
    batch_size: int,
    samples: int,
    seed: int,
    progress: bool = True,
) -> None:
    """Fit :mod:`aha.rewards.support` on the final model's features of (at most ``samples``, drawn with ``seed``) training
    completions — the held-out ones (as many) set its unit — and save it beside ``RUN_DIR/model`` and the newest
    checkpoint's model. The features come from the saved model loaded as the ``rm:`` reward loads it (fp32, eval
    mode), so its distances are the reward's."""
    import random

    from tqdm.auto import tqdm

    rm = load_reward_model(reward_model_dir(run_dir), device)
    rng = random.Random(seed)
    flat = []
    for rows in (train_ids, eval_ids):
        seqs = [s for row in rows for s in row]
        flat.append(rng.sample(seqs, samples) if len(seqs) > samples else seqs)
    feats = []
    with tqdm(total=sum(map(len, flat)), desc="support", disable=not progress, leave=False) as bar:
        for seqs in flat:
            parts = []
            for start in range(0, len(seqs), batch_size):
                parts.append(rm.features_ids(seqs[start : start + batch_size], batch_size).cpu())
                bar.update(len(parts[-1]))
            feats.append(torch.cat(parts))
    support = fit_support(*cast("tuple[torch.Tensor, torch.Tensor]", feats))  # (train, held-out)
    newest = list_checkpoints(run_dir)[-1]
    for model_dir in (reward_model_dir(run_dir), newest / "model"):
        support.save(model_dir)
    write_manifest(newest)  # (again: the newest checkpoint's manifest covers its support too)


def publish_final_model(run_dir: Path) -> None:
    """Copy the newest checkpoint's model to ``RUN_DIR/model`` (atomically: a copy, then a rename)."""
    final = list_checkpoints(run_dir)[-1] / "model"
    out = reward_model_dir(run_dir)
    tmp = run_dir / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


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
