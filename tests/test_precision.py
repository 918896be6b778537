"""aha's fast training pass (fused LM head + log-softmax, eager attention, bf16 autocast) against a plain
fp32 reference computation (the HF model's full logits, ``log_softmax``, gather).

Stated tolerances: in fp32 the two agree to float rounding (|Δ log p| ≤ 1e-4, loss and gradient to 1e-4
relative); under bf16 autocast per-token log-probs stay within 0.02 nats on average and 0.1 at worst, the
clipped-surrogate loss within 2 % and the gradient direction within cosine 0.99 of the fp32 reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from aha.algos.losses import aggregate_loss, clipped_surrogate
from aha.modeling.logprobs import completion_forward
from aha.models import build_tiny

C = 12


def _model_and_batch():
    model, _ = build_tiny("tiny:layers=2,hidden=128,heads=4,ff=512", None, 0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # spread-out weights: peaked, varied next-token distributions
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    ids = torch.randint(3, 90, (8, 30), generator=g)
    attn = torch.ones_like(ids)
    attn[:3, :5] = 0  # left padding on some rows
    return model, ids, attn


def _loss(logp: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    adv = torch.linspace(0.5, 1.5, logp.shape[0])
    per_token, _ = clipped_surrogate(logp.float(), old, adv, torch.ones_like(old), 0.2)
    return aggregate_loss(per_token, torch.ones_like(old), "dapo", C)


def _reference(model, ids, attn):
    """Plain fp32: full logits from the HF forward (sdpa), log-softmax over the vocabulary, gather."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("sdpa")
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = ref(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -C - 1 : -1].float()
    logp = F.log_softmax(logits, -1).gather(-1, ids[:, -C:, None]).squeeze(-1)
    old = logp.detach() - 0.1  # ratios ≈ 1.1: the clip is in play for some tokens
    _loss(logp, old).backward()
    return logp.detach(), old, torch.cat([p.grad.flatten() for p in ref.parameters()])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_training_pass_matches_an_fp32_reference(precision):
    model, ids, attn = _model_and_batch()
    ref_logp, old, ref_grad = _reference(model, ids, attn)
    model.set_attn_implementation("eager")  # what train.attention 'auto' picks on CPU
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx:
        logp, _, _ = completion_forward(model, ids, attn, C)
    loss = _loss(logp, old)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    diff = (logp.detach().float() - ref_logp).abs()
    ref_loss = _loss(ref_logp, old)
    cosine = F.cosine_similarity(grad, ref_grad, dim=0).item()
    if precision == "fp32":
        assert diff.max() <= 1e-4
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-4)
        assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-6)
    else:
        assert diff.mean() <= 0.02 and diff.max() <= 0.1, (diff.mean().item(), diff.max().item())
        assert loss.item() == pytest.approx(ref_loss.item(), rel=0.02)
        assert cosine >= 0.99, cosine
    assert ref_logp.abs().mean() > 1.0  # the comparison is of real, non-trivial log-probs


def _shared_prompt_batch():
    """8 rows, 2 prompts × 4 (two prompt lengths: left padding), one short completion (right padding), shuffled."""
    model, ids, attn = _model_and_batch()
    g = torch.Generator().manual_seed(1)
    prompts, prompt_attn = ids[:2, :-C].repeat_interleave(4, 0), attn[2:4, :-C].repeat_interleave(4, 0)
    prompt_attn[:4, :6] = 0  # the first prompt is shorter
    prompts = prompts.masked_fill(prompt_attn == 0, 0)
    comp_attn = torch.ones(8, C, dtype=torch.long)
    comp_attn[5, 7:] = 0
    comp = torch.randint(3, 90, (8, C), generator=g).masked_fill(comp_attn == 0, 0)
    order = torch.randperm(8, generator=g)
    return model, torch.cat([prompts, comp], 1)[order], torch.cat([prompt_attn, comp_attn], 1)[order], comp_attn[order]


def _completion_pass_saved_bytes(model, fn):
    """Bytes of the non-parameter tensors the autograd graph saves during the trunk's second call (the completion
    pass; checkpointed regions save handles instead), and ``fn``'s result."""
    seen, calls = {}, []
    hook = model.get_decoder().register_forward_pre_hook(lambda *a: calls.append(1))

    def pack(t):
        if len(calls) == 2 and not isinstance(t, torch.nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    hook.remove()
    return sum(seen.values()), out


@pytest.mark.parametrize("attention,lean", [("eager", False), ("sdpa", False), ("eager", True), ("sdpa", True)])
def test_rows_that_share_a_prompt_run_it_once_and_match_the_full_pass(attention, lean):
    """A GRPO group's G rows share their prompt: the trunk runs it once (a KV cache, copied per row) and then
    the completions. Rows in a shuffled order, prompts of two lengths (left padding), one short completion
    (right padding): log-probs and the gradient match one plain fp32 pass over the full rows. ``lean`` (selective
    activation checkpointing of the completion pass) gives the same numbers and leaves the model's layers as
    they were."""
    model, ids, attn, comp_attn = _shared_prompt_batch()
    ref_logp, old, ref_grad = _reference(model, ids, attn)

    model.set_attn_implementation(attention)
    trunk_calls = []
    model.get_decoder().register_forward_hook(
        lambda m, a, kw, out: trunk_calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    logp, _, _ = completion_forward(model, ids, attn, C, lean=lean)
    _loss(logp, old).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])

    assert trunk_calls == [(2, ids.shape[1] - C), (8, C - 1)]  # 2 distinct prompts once, then 8 × (C − 1) tokens
    assert all("forward" not in vars(layer) for layer in model.get_decoder().layers)  # no wrapper left behind
    real = comp_attn.bool()
    assert (logp.detach() - ref_logp)[real].abs().max() <= 1e-4
    assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=1e-6)


def test_lean_activations_save_less_for_the_backward_pass_and_give_the_same_gradient():
    model, ids, attn, _ = _shared_prompt_batch()
    model.set_attn_implementation("eager")
    grads, saved = {}, {}
    for lean in (False, True):
        model.zero_grad(set_to_none=True)
        saved[lean], logp = _completion_pass_saved_bytes(
            model, lambda lean=lean: completion_forward(model, ids, attn, C, lean=lean)[0]
        )
        logp.sum().backward()
        grads[lean] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grads[True], grads[False], rtol=1e-5, atol=1e-7)
    # the completion pass's graph keeps only each checkpointed layer's input (the matmul outputs live in the
    # checkpoint's own store), where the plain pass keeps every intermediate
    assert saved[True] < 0.2 * saved[False], saved
