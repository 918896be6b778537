"""Pieces every trainer (GRPO, SFT) shares: device and precision, seeding, optimizer and schedule,
the prompt sampler with a resumable position."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import random

import numpy as np
import torch

from aha.config import RunConfig, TrainConfig
from aha.models import fast_bf16_available, load_policy


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says where, and which checkpoint is intact."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA GPU is visible (use 'auto' or 'cpu')")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise TrainingError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("train.device is 'mps' but no Apple GPU is available (use 'auto' or 'cpu')")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked (or, for 'auto', where the hardware runs bf16 fast); None = fp32."""
    if precision == "bf16" or (precision == "auto" and fast_bf16_available(device)):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def training_attention(choice: str, device: torch.device) -> str | None:
    """The attention kernel for training passes: None = keep the model's own.

    'auto' = eager on a CPU: torch's CPU flash-attention backward is slow under bf16 (SmolLM2 on an AMX CPU, fwd+bwd
    2.47 → 1.93 s); in fp32 on an AVX2 CPU the two were within noise of each other (8.4 vs 8.3 s)."""
    if choice == "auto":
        return "eager" if device.type == "cpu" else None
    return choice


def compiled_sampler(choice: bool | str, device: torch.device, lora: bool) -> bool:
    """Whether rollouts come from the compiled sampler (``rollout.compile``). 'auto': on a CUDA GPU that torch.compile
    can build for (Triton installed, compute capability ≥ 7.0), without LoRA; there CUDA graphs took a 0.5B model's
    rollout from ~21–26 to ~4 ms per token step (H200). Off on a CPU, where the gain is ~10% after a minute's compile."""
    if choice != "auto":
        return bool(choice)
    if device.type != "cuda" or lora:
        return False
    return importlib.util.find_spec("triton") is not None and torch.cuda.get_device_capability(device) >= (7, 0)


def lean_activations(choice: bool | str, model: torch.nn.Module, device: torch.device, n_tokens: int,
                     amp: torch.dtype | None) -> bool:
    """Whether a training pass over ``n_tokens`` (rows × columns) runs with lean activations (see
    ``model.lean_activations``). 'auto': always on a CPU (~3% of SmolLM2's training pass for half its activation
    memory). On a GPU only where the plain pass's activations would fill over a quarter of the card: there the
    per-op dispatch costs more (a 0.5B model at 16 × 64 tokens: 0.43 vs 0.23 s on an H200) and memory is seldom
    short. The estimate, (10·hidden + 4·ff) values per token and layer, is near what was measured: SmolLM2's
    completion pass saved 1.49 GB for 1024 tokens in fp32 (estimate 1.46); a Qwen2.5-0.5B-shaped model at 64 × 256
    tokens in bf16 autocast peaked at 42 GB on an H200 without lean, ~26 GB of it beyond weights, gradients, Adam
    state, the reference, the sampler's copy and the logits (estimate 32 GB with the prompt columns)."""
    if choice != "auto":
        return bool(choice)
    if device.type != "cuda":
        return True
    cfg = getattr(model, "config", None)
    try:
        per_token = cfg.num_hidden_layers * (10 * cfg.hidden_size + 4 * cfg.intermediate_size)
    except (AttributeError, TypeError):
        return True  # an unknown shape: the memory-safe choice
    estimate = n_tokens * per_token * (2.5 if amp is not None else 4)  # autocast keeps a mix of bf16 and fp32
    return estimate > torch.cuda.get_device_properties(device).total_memory / 4


def set_attention(models, impl: str | None) -> None:
    """Switch HF models (None entries skipped) to another attention implementation; cheap (a config flag)."""
    if impl is None:
        return
    for model in models:
        if model is not None:
            model.set_attn_implementation(impl)


def prepare(cfg: RunConfig):
    """What every stage starts with: seeds set, ``(device, autocast dtype, task, model, tokenizer, template)``,
    the model on its device in train mode."""
    from aha.data.templates import resolve_template
    from aha.tasks import build_task

    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    task = build_task(cfg.task)
    model, tok = load_policy(cfg.model, task.alphabet, cfg.train.seed, cfg.init_from)
    model.to(device).train()
    return device, amp, task, model, tok, resolve_template(cfg.task.template, tok)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, total_steps: int, critic: torch.nn.Module | None = None,
                   critic_lr: float | None = None):
    """AdamW over trainable parameters and a warm-up + (constant | linear | cosine) schedule.

    A critic, if given, is a second parameter group (its own learning rate, the same schedule)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if critic is not None:
        groups.append({"params": [p for p in critic.parameters() if p.requires_grad], "lr": critic_lr or cfg.lr})
    # the fused kernel reads and writes each parameter's state once per step, where the default for-each path
    # streams it through memory ~15 times (SmolLM2 on 2 CPU cores: 0.12 vs 0.40 s per step); same update rule
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, fused=fused or None)

    def factor(i: int) -> float:
        if i < cfg.warmup_steps:
            return (i + 1) / (cfg.warmup_steps + 1)
        progress = (i - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class PromptSampler:
    """Walks through the training rows in a seeded random order, epoch after epoch; its position is part
    of a checkpoint so a resumed run sees the same prompts as an uninterrupted one."""

    def __init__(self, n_rows: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n_rows, seed, 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        return random.Random(self.seed * 1_000_003 + self.epoch).sample(range(self.n), self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._perm()
