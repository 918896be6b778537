"""How a model runs on this hardware: bf16 autocast (the precision itself: :mod:`aha.modeling.precision`), the
attention kernel of training passes, the compiled sampler and lean activations. Each 'auto' choice is a small, documented
heuristic with the measurements behind it."""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

import torch


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast for a training or scoring pass (None: fp32). Its weight-cast cache is off: lean activations
    replay each layer in the backward pass, and a cast the cache served in the forward pass would be recomputed
    there, which torch's selective checkpointing rejects ("aten._to_copy … not found in storage", seen on an
    AVX512-BF16 CPU, where 'auto' turns bf16 on)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


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


def lean_activations(
    choice: bool | str, model: torch.nn.Module, device: torch.device, n_tokens: int, amp: torch.dtype | None
) -> bool:
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
    cfg: Any = getattr(model, "config", None)  # (None, or a config without these: the except below)
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
