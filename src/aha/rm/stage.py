"""The reward-model stage (``stage: reward_model``) on the shared run skeleton (:class:`aha.run.Run`): a backbone
with ``reward_model.num_heads`` scalar heads, trained on rankings or pairs; the final model goes to ``RUN_DIR/model``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from aha.checkpoint import list_checkpoints, newest_model, write_manifest
from aha.config import RunConfig
from aha.data.preferences import PreferenceRow, read_preferences
from aha.errors import first_line
from aha.models import ModelLoadError, build_tiny, resolve_model_dir
from aha.rewards.learned import (
    ENSEMBLE_FILE,
    load_reward_model,
)
from aha.rewards.support import fit_support
from aha.tasks import DataError


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
    final = newest_model(run_dir)
    out = reward_model_dir(run_dir)
    tmp = run_dir / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
