"""Per-token log-probabilities of completion tokens, without ever materialising the full log-prob tensor."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from aha.modeling.fused import fusable_head, linear_logprobs


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]`` computed as ``logit[index] - logsumexp(logits)``, row by row.

    The full ``[B, T, V]`` log-prob tensor is never built (with V = 49k and T = 256 it would cost as much
    memory as the logits themselves); in bf16 each row is normalised in fp32 for accuracy.

    Worked example: logits ``[[2, 0, 0]]`` (one position), index ``[0]``:
    logsumexp = ln(e² + 2) = 2.2395, so the result is 2 − 2.2395 = −0.2395.
    """
    if logits.dtype in (torch.float32, torch.float64):
        selected = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - lse
    rows = [
        F.log_softmax(row.float(), dim=-1).gather(-1, idx.unsqueeze(-1)).squeeze(-1) for row, idx in zip(logits, index)
    ]
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy ``H = logsumexp(z) − Σ softmax(z)·z`` (fp32), row by row.

    Worked example: uniform logits over 4 symbols → H = ln 4 = 1.3863.
    """
    out = []
    for row in logits:
        row = row.float()
        out.append(torch.logsumexp(row, dim=-1) - (F.softmax(row, dim=-1) * row).sum(-1))
    return torch.stack(out)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that follow the attention mask (left padding does not shift them): ``[0, 0, 1, 2]`` for
    ``[0, 1, 1, 1]``. Sampling and every training pass use these, so their logprobs line up."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_states(
    trunk: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    lean: bool = False,
) -> torch.Tensor:
    """The trunk's last hidden states ``[B, C, H]`` at the ``C = completion_len`` positions that predict the
    completion tokens of ``input_ids`` (``[left-padded prompt | right-padded completion]``).

    Rows that share a prompt — the G samples of a GRPO group — run it once: one pass over the distinct prompts
    fills a KV cache, each row picks its prompt's keys and values (``index_select``: in the backward pass the
    rows' gradients add up on the shared prompt), and a second pass runs the completions on top. The last
    completion token predicts nothing, so it is not fed. With 4 prompts × 4 samples × (36 prompt + 64
    completion) tokens the trunk sees 4·36 + 16·63 = 1152 tokens instead of 16·100 = 1600. Same maths as one
    pass over the full rows, up to float rounding. ``lean`` (with grad enabled): the completion pass keeps only
    each layer's matmul outputs for the backward pass and recomputes the rest (:func:`_lean_layers`).
    """
    C, P = completion_len, input_ids.shape[1] - completion_len
    rows = torch.cat([input_ids[:, :P], attention_mask[:, :P]], 1)
    distinct, which = torch.unique(rows, dim=0, return_inverse=True)
    # (gradient checkpointing turns HF's KV cache off in training: such a trunk takes the plain pass too)
    if P == 0 or C < 2 or len(distinct) == len(rows) or getattr(trunk, "gradient_checkpointing", False):
        position_ids = position_ids_from_mask(attention_mask)
        return trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state[:, -C - 1 : -1]
    from transformers import DynamicCache

    cache_kw = cache_kwarg(trunk)
    cache = DynamicCache(config=cast(Any, trunk).config)  # (a transformers model's config)
    p_ids, p_mask = distinct[:, :P], distinct[:, P:]
    prompt_out = trunk(
        input_ids=p_ids,
        attention_mask=p_mask,
        position_ids=position_ids_from_mask(p_mask),
        use_cache=True,
        **{cache_kw: cache},
    ).last_hidden_state
    cache.reorder_cache(which)  # one copy of its prompt's keys and values per row
    mask = attention_mask[:, :-1]
    with _lean_layers(trunk, cache) if lean and torch.is_grad_enabled() else contextlib.nullcontext():
        out = trunk(
            input_ids=input_ids[:, P:-1],
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask)[:, P:],
            use_cache=True,
            **{cache_kw: cache},
        ).last_hidden_state
    return torch.cat([prompt_out[which, -1:], out], 1)


_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


def _save_matmul_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing policy: keep what the linear layers computed, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op in _MATMULS else CheckpointPolicy.PREFER_RECOMPUTE


@functools.cache
def _read_only_layer():
    from transformers.cache_utils import DynamicLayer

    class ReadOnlyPrefix(DynamicLayer):
        """A cache layer that returns ``prefix ⧺ new`` keys and values without storing them: a layer that reads
        it is a pure function of its inputs, so the backward pass can replay it."""

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)  # (the prefix, set)
            return torch.cat([keys, key_states], -2), torch.cat([values, value_states], -2)

    return DynamicLayer, ReadOnlyPrefix


@contextlib.contextmanager
def _lean_layers(trunk: torch.nn.Module, cache):
    """Run each decoder layer of ``trunk`` under selective activation checkpointing (torch's
    ``create_selective_checkpoint_contexts``): the forward pass stores the matmul outputs (q, k, v, o, gate, up,
    down) and the layer's input; the backward pass recomputes the element-wise rest — RMSNorm, RoPE, the repeated
    keys and values, the attention scores and softmax, SwiGLU. On SmolLM2 with 16 × 63 completion tokens that is
    ~0.6 GB stored instead of ~1.5 GB, for a few % more time. The cache holding the prompt becomes read-only for
    good (``update`` returns the concatenation without storing it; the caller drops the cache after this pass), so
    replaying a layer sees the same keys. Layers or caches of another kind (sliding windows, no ``layers`` list)
    run as they are."""
    dynamic, read_only = _read_only_layer()
    layers = getattr(trunk, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or any(type(c) is not dynamic for c in cache.layers):
        yield
        return
    for c in cache.layers:
        c.__class__ = read_only
    context = functools.partial(create_selective_checkpoint_contexts, _save_matmul_outputs)
    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False, context_fn=context)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers ≥ 5 names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def completion_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    entropy: str = "none",
    hidden: bool = False,
    lean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs of the last ``completion_len`` tokens of ``input_ids`` under ``model`` (logits / temperature).

    ``input_ids`` is ``[left-padded prompt | right-padded completion]``. Only the logits that predict
    completion tokens are computed (``logits_to_keep``). Positions follow the attention mask, exactly as in
    sampling, so left padding does not shift them. Where the head allows it (:func:`fusable_head`), the trunk runs
    alone and :func:`linear_logprobs` fuses the LM head with the log-softmax. ``entropy``: 'none', 'detached' (a metric) or 'grad' (for an
    entropy bonus). ``hidden``: also return the last hidden states at the same positions (a value head's input).
    ``lean``: see :func:`completion_states`.
    Returns ``(logp [B, C], entropy [B, C] or None, hidden [B, C, H] or None)``.
    """
    fused = fusable_head(model) if entropy != "grad" else None
    if fused is not None:  # trunk, then the LM head and log-softmax in one memory-lean function (modeling/fused.py)
        trunk, head_weight = fused
        states = completion_states(trunk, input_ids, attention_mask, completion_len, lean)
        B, C, H = states.shape
        logp, ent = linear_logprobs(
            states.reshape(B * C, H),
            head_weight,
            input_ids[:, -completion_len:].reshape(-1),
            temperature,
            with_entropy=entropy == "detached",
        )
        return logp.view(B, C), (ent.view(B, C) if ent is not None else None), (states if hidden else None)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=completion_len + 1,
        use_cache=False,
        output_hidden_states=hidden,
    )
    logits = out.logits[:, :-1, :]
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits, input_ids[:, -completion_len:])
    ent = None
    if entropy == "grad":
        ent = entropy_from_logits(logits)
    elif entropy == "detached":
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach())
    last_states = out.hidden_states[-1][:, -completion_len - 1 : -1] if hidden else None
    return logp, ent, last_states


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`completion_forward` without hidden states: ``(logp [B, C], entropy [B, C] or None)``."""
    logp, ent, _ = completion_forward(
        model, input_ids, attention_mask, completion_len, temperature, "detached" if with_entropy else "none"
    )
    return logp, ent
