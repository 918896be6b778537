"""The LM head and the token log-probabilities in one autograd function.

The plain path (``lm_head`` → logits → ``log_softmax`` → gather) keeps an fp32 ``[N, V]`` log-prob tensor for
the backward pass and streams several more of that size through memory (casts, zero-filled gradients). With
V = 49k and N = 16 × 64 completion tokens that is ~200 MB per tensor — on a CPU, memory traffic is what the
training pass waits on. Here the logits stay in the compute dtype (what the LM head produced anyway under
autocast), the fp32 maths (log-sum-exp, softmax for the gradient, entropy) runs over cache-sized row chunks,
and the backward pass writes the logits' gradient over the saved logits in place.
"""

from __future__ import annotations

from typing import Any, cast

import torch

CHUNK_ROWS = 64


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, index, temperature: float, compute_dtype, with_entropy: bool):
        w = weight.to(compute_dtype)
        logits = hidden.to(compute_dtype) @ w.t()  # [N, V] in the compute dtype, as the LM head would give
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        picked = logits.gather(-1, index[:, None]).squeeze(-1).float() / temperature
        entropy = torch.empty_like(lse) if with_entropy else None
        z_buf = torch.empty((min(CHUNK_ROWS, len(lse)), logits.shape[1]), dtype=torch.float32, device=hidden.device)
        p_buf = torch.empty_like(z_buf) if with_entropy else None
        for s in range(0, logits.shape[0], CHUNK_ROWS):  # fp32 maths in reused, cache-sized buffers
            z = z_buf[: min(CHUNK_ROWS, len(lse) - s)].copy_(logits[s : s + CHUNK_ROWS])
            if temperature != 1.0:
                z.div_(temperature)
            lse[s : s + len(z)] = torch.logsumexp(z, -1)
            if with_entropy:  # H = −Σ p log p with log p = z − lse
                assert entropy is not None and p_buf is not None  # (made above with_entropy)
                z.sub_(lse[s : s + len(z), None])
                entropy[s : s + len(z)] = -torch.exp(z, out=p_buf[: len(z)]).mul_(z).sum(-1)
        ctx.save_for_backward(hidden, index, lse)
        ctx.logits, ctx.w, ctx.temperature, ctx.weight_dtype = logits, w, temperature, weight.dtype
        if entropy is None:
            entropy = torch.zeros(0, device=hidden.device)
        ctx.mark_non_differentiable(entropy)
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, index, lse = ctx.saved_tensors
        logits, w, T = ctx.logits, ctx.w, ctx.temperature
        g = grad_logp.float()
        rows = torch.arange(min(CHUNK_ROWS, len(lse)), device=logits.device)
        z_buf = torch.empty((len(rows), logits.shape[1]), dtype=torch.float32, device=logits.device)
        # d logp_i / d logit_ij = (1[j = index_i] − softmax_ij) / T, written over the logits chunk by chunk
        for s in range(0, logits.shape[0], CHUNK_ROWS):
            z = z_buf[: min(CHUNK_ROWS, len(lse) - s)].copy_(logits[s : s + CHUNK_ROWS])
            if T != 1.0:
                z.div_(T)
            gs = g[s : s + len(z)] / T
            z.sub_(lse[s : s + len(z), None]).exp_().mul_(-gs[:, None])
            z[rows[: len(z)], index[s : s + len(z)]] += gs
            logits[s : s + len(z)].copy_(z)
        grad_hidden = (logits @ w).to(hidden.dtype)
        grad_weight = (logits.t() @ hidden.to(logits.dtype)).to(ctx.weight_dtype)
        ctx.logits = ctx.w = None
        return grad_hidden, grad_weight, None, None, None, None


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(hidden @ weightᵀ / T)[index]`` per row, fp32, differentiable in ``hidden`` and ``weight``.

    ``hidden [N, H]``, ``weight [V, H]`` (the LM head), ``index [N]``. The matmul runs in the autocast dtype when
    autocast is on (bf16 on AMX CPUs), else in ``hidden``'s dtype. ``with_entropy`` also returns the per-row
    entropy of the distribution (no gradient: a metric). Returns ``(logp [N], entropy [N] or None)``.
    """
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    with torch.autocast(dev, enabled=False):
        logp, entropy = _LinearLogprobs.apply(hidden, weight, index, float(temperature), dtype, with_entropy)
    return logp, (entropy if with_entropy else None)


def fusable_head(model: torch.nn.Module):
    """``(trunk, lm_head weight)`` when the model's logits are exactly ``lm_head(trunk(x))`` (Llama, Qwen2,
    Mistral, SmolLM2 …: a bias-free linear head, no logit soft-capping or scaling), else None."""
    base = cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model  # (peft)
    head = cast(Any, base).get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    cfg = base.config
    if any(
        getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    ):
        return None
    if getattr(cfg, "model_type", "") not in ("llama", "qwen2", "qwen3", "mistral", "smollm3", "olmo2"):
        return None
    return base.get_decoder(), head.weight
