"""Reward-model training (``stage: reward_model``): an LM trunk with a scalar head, from rankings or pairs.

The saved model is a plain HF sequence-classification model (``num_labels = 1``, ``pad_token_id`` set), so
``AutoModelForSequenceClassification.from_pretrained(DIR)`` loads it and scores a text as
``model(**tok(text, return_tensors="pt")).logits[0, 0]`` — the text being :func:`render_text` of the prompt and
completion (the chat template's user and assistant turns, or the two texts joined; the choice is saved in
``config.aha_reward_model``).

**Ensembles** (``reward_model.num_heads = N > 1``): N linear heads on one trunk, initialised differently, each
trained on its own Poisson(1) bootstrap weighting of every batch (an online bootstrap, as in Coste et al. 2023's
ensembles, at the cost of one trunk). The heads are linear and bias-free on the same pooled hidden state, so the
mean of their scores *is* the score of their mean head: the saved ``score.weight`` is that mean head, and plain
transformers (and ``critic.init_from``) returns the ensemble mean. The N heads themselves are saved beside it in
``aha_ensemble.json``; :class:`RewardModel` (and the ``rm:`` reward) reads them for the per-head scores, their
disagreement (std) and the conservative reward mean − λ·std.

Layout: ``RUN_DIR/checkpoints/step-N/model`` (resumable, as for the other stages) and ``RUN_DIR/model``, the final
reward model — the directory to give ``rm:`` or ``critic.init_from``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from aha.algos.preference import (plackett_luce_loss, ranked_pairs, ranking_bt_loss, ranking_metrics,
                                  reward_centering)
from aha.checkpoint import clear_run, list_checkpoints, resume_from, save_checkpoint, training_state
from aha.config import RunConfig, save_config
from aha.data.preferences import PreferenceRow, read_preferences
from aha.rewards.builtin import completion_text
from aha.errors import AhaError
from aha.modeling.options import autocast, autocast_dtype, set_attention, training_attention
from aha.runtime import PromptSampler, TrainingError, make_optimizer, pick_device, seed_everything
from aha.threads import refresh as refresh_threads, use_threads
from aha.track.metrics import MetricsLogger

ENSEMBLE_FILE = "aha_ensemble.json"
CONFIG_KEY = "aha_reward_model"  # in config.json: {"template", "max_length", "num_heads", "loss"}


# ============================================================================ text → tokens


def rm_template(template: str, tokenizer) -> str:
    """'chat' or 'plain': ``auto`` is chat where the tokenizer has a chat template."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        from aha.config import ConfigError

        raise ConfigError("reward_model.template 'chat': this model's tokenizer has no chat template (use 'plain')")
    return "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"


def _messages_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(completion_text([m]) for m in prompt)


def render_text(prompt, completion, tokenizer, template: str) -> str:
    """The one text a reward model scores for ``(prompt, completion)``; ``template`` is 'chat' or 'plain'.

    chat: ``[*prompt messages (a text prompt is one user turn), {"role": "assistant", "content": completion}]``
    through the tokenizer's chat template; plain: the prompt's text followed directly by the completion's.

    >>> render_text("2+2=", "4", None, "plain")
    '2+2=4'
    """
    answer = completion_text(completion)
    if template == "plain":
        return _messages_text(prompt) + answer
    messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)


def encode_for_rm(text: str, tokenizer, max_length: int) -> list[int]:
    """Token ids of ``text`` as ``tokenizer(text)`` gives them, cut to the last ``max_length`` (where the score is read)."""
    from aha.data.templates import encode_text

    ids = encode_text(text, tokenizer)
    if not ids:
        ids = [tokenizer.eos_token_id]  # an empty completion of an empty prompt: score something defined
    return ids[-max_length:]


def pad_batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def pooled_hidden(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``[B, H]``: the trunk's last hidden state at each row's rightmost non-pad token — the position transformers'
    ``*ForSequenceClassification`` reads its score from, so a head applied here gives the same score."""
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    idx = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (idx * (input_ids != pad_id)).argmax(-1)
    return hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model under a peft wrapper (with its LoRA layers in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ============================================================================ a trained reward model, for scoring


@dataclass
class RewardModel:
    """A reward model loaded for scoring: ``score(prompts, completions) → [N, heads]`` in fp32, no grad."""

    model: nn.Module
    tokenizer: object
    heads: torch.Tensor  # [num_heads, hidden]; one row (the score head) for a single model
    template: str
    max_length: int
    device: torch.device
    path: Path

    @property
    def num_heads(self) -> int:
        return self.heads.shape[0]

    @torch.no_grad()
    def score_ids(self, seqs: list[list[int]], batch_size: int = 32) -> torch.Tensor:
        """Per-head scores ``[N, heads]`` of token-id sequences, in batches of similar length."""
        pad = self.model.config.pad_token_id
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding; results put back in order
        out = torch.empty(len(seqs), self.num_heads)
        trunk = self.model.base_model
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in part], pad, self.device)
            pooled = pooled_hidden(trunk, ids, mask, pad).float()
            out[part] = (pooled @ self.heads.T).cpu()
        return out

    def encode(self, prompt, completion) -> list[int]:
        return encode_for_rm(render_text(prompt, completion, self.tokenizer, self.template), self.tokenizer,
                             self.max_length)

    def score(self, prompts: list, completions: list, batch_size: int = 32) -> torch.Tensor:
        """``[N, heads]`` scores of ``(prompts[i], completions[i])`` (plain or conversational)."""
        return self.score_ids([self.encode(p, c) for p, c in zip(prompts, completions)], batch_size)


_CACHE: dict[tuple, RewardModel] = {}


class RewardModelError(AhaError, ValueError):
    """A path that is not a loadable reward model (one-line message)."""


def load_reward_model(path: str | Path, device: str | torch.device | None = None) -> RewardModel:
    """Load a reward model directory (written by this stage, or any HF ``*ForSequenceClassification`` with one
    label) in fp32, in eval mode; cached per (directory, its weights' mtime, device)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise RewardModelError(f"{path}: not a reward-model directory (no config.json); give the RM stage's "
                               "RUN_DIR/model or a checkpoint's model directory")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))
    key = (str(path.resolve()), stamp, str(device))
    if key in _CACHE:
        return _CACHE[key]
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as e:
        raise RewardModelError(f"{path}: could not load it as a sequence-classification model ({_first_line(e)})") from None
    if model.config.num_labels != 1:
        raise RewardModelError(f"{path}: a classifier with {model.config.num_labels} labels, not a reward model (1 label)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    meta = getattr(model.config, CONFIG_KEY, None) or {}
    heads = model.score.weight.detach().float()
    if (path / ENSEMBLE_FILE).is_file():
        heads = torch.tensor(json.loads((path / ENSEMBLE_FILE).read_text())["weight"], dtype=torch.float32)
    rm = RewardModel(model.to(device).eval(), tok, heads.to(device), rm_template(meta.get("template", "auto"), tok),
                     int(meta.get("max_length", 512)), device, path)
    _CACHE.clear()  # one reward model held at a time: a run uses one, and they are large
    _CACHE[key] = rm
    return rm


# ============================================================================ training


def build_reward_backbone(cfg: RunConfig, alphabet: str):
    """``(model, tokenizer)``: a ``*ForSequenceClassification`` with one (fresh) score head, fp32 on CPU, LoRA
    (``task_type="SEQ_CLS"``) if configured. ``tiny[:spec]`` builds a Llama in code with a char tokenizer over
    ``alphabet``; anything else loads from ``init_from`` or ``model.name`` (an HF dir, a .gguf, an alias)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

    from aha.models import ModelLoadError, build_tiny, resolve_model_dir

    name = str(cfg.init_from) if cfg.init_from is not None else cfg.model.name
    if cfg.init_from is not None and not Path(cfg.init_from).exists():
        raise ModelLoadError(f"init_from: {cfg.init_from} not found (an HF model directory, e.g. an SFT checkpoint's "
                             "RUN/checkpoints/step-N/model)")
    if cfg.init_from is None and name.split(":")[0] == "tiny":
        lm, tok = build_tiny(name, alphabet, cfg.train.seed)
        config = lm.config
        config.num_labels = 1
        with torch.random.fork_rng():
            torch.manual_seed(cfg.train.seed)
            model = LlamaForSequenceClassification(config)
    elif name.startswith("hf:"):
        raise ModelLoadError("model.name 'hf:…' is not supported by the reward-model stage yet; download the model "
                             "and give its local directory")
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
            raise ModelLoadError(f"could not load a reward-model backbone from {path}: {_first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="SEQ_CLS"))
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
    data = {"num_heads": heads.out_features, "weight": heads.weight.detach().float().cpu().tolist(),
            "note": "score.weight in model.safetensors is the mean of these heads (= the ensemble mean score)"}
    tmp = model_dir / (ENSEMBLE_FILE + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, model_dir / ENSEMBLE_FILE)


def _loss_fn(kind: str, margin: float):
    if kind == "pl":
        return plackett_luce_loss
    return lambda scores, tiers: ranking_bt_loss(scores, tiers, margin)


def split_preferences(cfg: RunConfig) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """``(train, held_out)``: eval_path's rows, or the last eval_fraction of path's rows (at least one)."""
    from aha.tasks import DataError

    rc = cfg.reward_model
    rows = read_preferences(rc.path)
    if rc.eval_path is not None:
        return rows, read_preferences(rc.eval_path)
    n_eval = max(1, round(len(rows) * rc.eval_fraction))
    if len(rows) - n_eval < 1:
        raise DataError(f"{rc.path}: {len(rows)} row(s) cannot be split into training and held-out rows; add rows or "
                        "set reward_model.eval_path")
    return rows[:-n_eval], rows[-n_eval:]


def reward_model_dir(run_dir: Path) -> Path:
    """Where the stage leaves its final reward model: ``RUN_DIR/model``."""
    return Path(run_dir) / "model"


def train_reward_model(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train a reward model on ``cfg.reward_model.path``; returns the last logged metrics.

    A step takes ``train.batch_size`` rankings (all their completions), forwarded ``train.micro_batch_size``
    sequences at a time (whole rankings per pass, since the loss couples a ranking's scores)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rc, tr = cfg.reward_model, cfg.train
    t_start = time.perf_counter()

    # ============================================================ data, model, heads
    seed_everything(tr.seed)
    device = pick_device(tr.device)
    amp = autocast_dtype(tr.precision, device)
    train_rows, eval_rows = split_preferences(cfg)
    from aha.models import DEFAULT_ALPHABET

    plain_texts = [render_text(r.prompt, c, None, "plain") for r in train_rows + eval_rows for c in r.completions]
    alphabet = DEFAULT_ALPHABET + "".join(sorted(set("".join(plain_texts)) - set(DEFAULT_ALPHABET)))
    model, tok = build_reward_backbone(cfg, alphabet)
    use_threads(tr.threads)
    template = rm_template(rc.template, tok)
    setattr(_unwrap(model).config, CONFIG_KEY, {"template": template, "max_length": rc.max_length,
                                                "num_heads": rc.num_heads, "loss": rc.loss})

    def encode(rows: list[PreferenceRow]) -> list[list[list[int]]]:
        return [[encode_for_rm(render_text(r.prompt, c, tok, template), tok, rc.max_length) for c in r.completions]
                for r in rows]

    train_ids, eval_ids = encode(train_rows), encode(eval_rows)
    model.to(device).train()
    hidden = _unwrap(model).config.get_text_config().hidden_size
    heads = EnsembleHeads(hidden, rc.num_heads, tr.seed + 17).to(device)
    for name, p in model.named_parameters():  # the HF score head is only where the heads' mean is saved
        if "score" in name.split("."):
            p.requires_grad_(False)
    trunk = _unwrap(model).base_model
    pad_id = tok.pad_token_id
    set_attention([_unwrap(model)], training_attention(tr.attention, device))
    # the heads are a second parameter group (make_optimizer's "critic" slot), and travel in the checkpoint's
    # trainer state the same way, so a resumed ensemble continues exactly
    optimizer, scheduler = make_optimizer(model, tr, tr.steps, heads, rc.head_lr)
    sampler = PromptSampler(len(train_rows), tr.seed)
    loss_of = _loss_fn(rc.loss, rc.margin)

    start = 0
    ckpts = list_checkpoints(run_dir) if resume else []
    if resume and not ckpts:
        raise TrainingError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}")
    if ckpts:
        start = resume_from(ckpts[-1], model, optimizer, scheduler, sampler, heads)
        print(f"resumed from {ckpts[-1]} (step {start})")
    else:  # a fresh start: nothing of an earlier run in run_dir may mix with this one (the CLI asks first)
        clear_run(run_dir)
        shutil.rmtree(reward_model_dir(run_dir), ignore_errors=True)
    save_config(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project,
                           cfg.model_dump(mode="json"), resume_step=start if ckpts else None)

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
            head_acc = [ranking_metrics([s[:, k].tolist() for s in per_row], [r.ranking for r in eval_rows])
                        ["pairwise_accuracy"] for k in range(rc.num_heads)]
            metrics["eval/head_pairwise_accuracy_min"] = min(head_acc)
        return metrics

    def save(step: int) -> None:
        _sync_score(model, heads)
        ckpt = save_checkpoint(run_dir, step, model, tok, training_state(optimizer, scheduler, sampler, heads),
                               cfg.log.keep_checkpoints)
        if rc.num_heads > 1:
            write_ensemble(ckpt / "model", heads)

    # ============================================================ the loop
    last: dict = {}
    if start == 0 and cfg.log.eval_every:
        last = run_eval()
        logger.log(0, last)
    bar = tqdm(range(start + 1, tr.steps + 1), desc="reward model", disable=not cfg.log.progress, dynamic_ncols=True)
    for step in bar:
        refresh_threads()  # another aha run started or ended: take an even share of the cores
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
        right = n_pairs = 0
        for chunk in _chunks([train_ids[i] for i in batch], tr.micro_batch_size):
            seqs = [s for j in chunk for s in train_ids[batch[j]]]
            per_row = _split(forward_scores(seqs), [len(train_ids[batch[j]]) for j in chunk])
            losses = torch.stack([loss_of(s, train_rows[batch[j]].ranking) for j, s in zip(chunk, per_row)])  # [rows, heads]
            loss = ((losses * weights[chunk]).sum(0) / norm).mean()
            center = reward_centering(torch.cat(per_row), _groups(per_row), rc.center_coef).mean() * len(chunk) / len(batch)
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
        metrics = {"loss/rm": loss_total, "train/pairwise_accuracy": right / max(1, n_pairs), "grad_norm": grad_norm.item(),
                   "lr": scheduler.get_last_lr()[0], "time/train_s": time.perf_counter() - t0}
        if rc.center_coef:
            metrics["loss/center"] = center_total
        if cfg.log.eval_every and (step % cfg.log.eval_every == 0 or step == tr.steps):
            metrics.update(run_eval())
        logger.log(step, metrics)
        last = metrics
        bar.set_postfix({"loss": f"{loss_total:.3f}", **({"acc": f"{metrics['eval/pairwise_accuracy']:.3f}"}
                                                         if "eval/pairwise_accuracy" in metrics else {})})
        if (cfg.log.save_every and step % cfg.log.save_every == 0) or step == tr.steps:
            save(step)
    bar.close()
    logger.close()

    # ============================================================ the final reward model: RUN_DIR/model
    final = list_checkpoints(run_dir)[-1] / "model"
    out = reward_model_dir(run_dir)
    tmp = run_dir / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if cfg.log.report:
        from aha.track.report import write_report

        write_report(run_dir)
    return {**last, "time/total_s": time.perf_counter() - t_start}


def _chunks(rankings: list[list], max_seqs: int) -> list[list[int]]:
    """Indices of ``rankings`` in groups of whole rankings holding at most ``max_seqs`` sequences (at least one)."""
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


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
