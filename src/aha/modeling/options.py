"""How a model runs on this hardware: bf16 autocast (the precision itself: :mod:`aha.modeling.precision`), the
attention kernel of training passes, the compiled sampler and lean activations. Each 'auto' choice is a small, documented
heuristic with the measurements behind it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
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
    ``model.lean_activations``). 'auto': where the plain pass's activations would fill over a quarter of the GPU's
    memory, or over a 64th of a CPU machine's or its container's (which also holds the rest of the process, and
    the rest of the machine; other devices: always). The numbers are the same either way (lean replays the same
    operations: a think-demo RL run's weights hash the same), only time and memory differ. The cost is a few % of
    SmolLM2's training pass on a CPU for half its activation memory (1024 tokens: 1.49 GB saved in fp32, estimate
    1.46), but 1/5 of a tiny model's, whose element-wise operations weigh more beside its small matmuls (the think
    demo's RL pass, 256 × ~57 tokens in micro-batches of 64 rows, ~0.15 GB estimated each: 0.93 → 0.76 s on an
    AVX-512 Xeon); on a GPU the per-op dispatch nearly doubled a 0.5B model's pass at 16 × 64 tokens (0.43 vs
    0.23 s on an H200). The estimate, (10·hidden + 4·ff) values per token and layer, is near what was measured: a
    Qwen2.5-0.5B-shaped model at 64 × 256 tokens in bf16 autocast peaked at 42 GB on an H200 without lean, ~26 GB of
    it beyond weights, gradients, Adam state, the reference, the sampler's copy and the logits (estimate 32 GB with
    the prompt columns)."""
    if choice != "auto":
        return bool(choice)
    cfg: Any = getattr(model, "config", None)  # (None, or a config without these: the except below)
    try:
        per_token = cfg.num_hidden_layers * (10 * cfg.hidden_size + 4 * cfg.intermediate_size)
    except (AttributeError, TypeError):
        return True  # an unknown shape: the memory-safe choice
    estimate = n_tokens * per_token * (2.5 if amp is not None else 4)  # autocast keeps a mix of bf16 and fp32
    if device.type == "cuda":
        return estimate > torch.cuda.get_device_properties(device).total_memory / 4
    if device.type == "cpu":
        return estimate > machine_memory() / 64
    return True  # (mps, xpu: memory shared or unknown)


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1


def machine_memory(limits: tuple[str, ...] = CGROUP_LIMITS) -> int:
    """The memory this process may use, in bytes: the machine's, or its cgroup's limit where lower (a container);
    0 where the OS does not say (then every pass is lean)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0
    for limit in limits:
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def set_attention(models, impl: str | None) -> None:
    """Switch HF models (None entries skipped) to another attention implementation; cheap (a config flag)."""
    if impl is None:
        return
    for model in models:
        if model is not None:
            model.set_attn_implementation(impl)
