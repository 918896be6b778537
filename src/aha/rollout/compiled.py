"""A faster sampler: a copy of the policy with a static KV cache and a ``torch.compile``'d decode step.

Decoding at batch 16 on a CPU is bound by reading the weights and by per-op overhead. Under bf16 (an AMX CPU)
the copy is cast to bf16: eager HF decoding under autocast took ~62 ms per token step (SmolLM2, 2 cores), the
compiled bf16 copy ~45 ms, at the price of a weight sync (a cast copy) after each optimizer step. In fp32 the
copy shares the policy's parameters (nothing to sync, no second set of weights). Measured in fp32 on a 2-core
AVX2 CPU (AMD EPYC): SmolLM2 96 vs 108 ms per token step, the tiny benchmark model's 64-token rollout 0.39 vs
0.52 s. The cost: a one-off compile per batch size (~35 s for SmolLM2 on 2 AMX cores, ~67 s on the AVX2 ones).
So it pays off on long runs; ``rollout.compile`` turns it on.

On a GPU the decode step is compiled with CUDA graphs (``mode="reduce-overhead"``): eager decoding of a 0.5B model
there waits on Python and kernel launches (~21 ms per token step on an H200 at batch 16), not on the GPU. The
static cache is kept between rollouts of the same shape (zeroed, not reallocated), so its addresses, which the
graphs capture, stay put.

If torch.compile cannot build the decode step (an architecture or a backend it does not handle), a sampler that
was only chosen by ``rollout.compile: auto`` (``fallback=True``) says so once and decodes eagerly from then on; one
asked for explicitly stops with a message that names the way out.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from typing import Any, cast

import torch

from aha.errors import TrainingError, first_line
from aha.modeling.logprobs import position_ids_from_mask
from aha.rollout.hf import HFEngine, WeightMajorLinear, _base

CACHE_BUCKET = 64  # the static cache length is rounded up to this, so prompt-length changes rarely recompile


class CompiledEngine(HFEngine):
    """:class:`HFEngine` whose decode steps run on a compiled bf16 (or fp32) copy of the policy."""

    keeps_turn_cache = False  # its static cache is laid out per generate call: each turn encodes its whole context

    def __init__(self, model, tokenizer, device, autocast_dtype, fallback: bool = False):
        super().__init__(model, tokenizer, device, autocast_dtype)
        self.fallback = fallback  # a failed compile → eager decoding with a warning (else an error)
        self.failed = False  # the compile failed: every later step decodes eagerly
        if hasattr(model, "peft_config"):
            raise ValueError("rollout.compile does not support LoRA policies yet (the copy would need merged adapters)")
        dtype = autocast_dtype or torch.float32
        base = _base(model)
        # in the policy's own dtype the copy shares its parameters (no second set of weights, nothing to sync);
        # else it is a cast copy, synced after each optimizer step
        self.shared = all(p.dtype == dtype for p in base.parameters())
        memo = {id(p): p for p in base.parameters()} if self.shared else {}
        # (no requires_grad_(False): measured, bf16 linears on frozen parameters take a ~6× slower CPU path)
        self.shadow = copy.deepcopy(base, memo).to(dtype).eval()
        if self.weight_major:  # fp32 on a CPU: the linears in MKL's faster operand order, traced as such
            for m in self.shadow.modules():
                if type(m) is torch.nn.Linear:
                    m.__class__ = WeightMajorLinear
        if self.attention is not None:
            cast(Any, self.shadow).set_attn_implementation(self.attention)  # (a transformers model)
        self.graphs = device.type == "cuda"
        self.compiled = torch.compile(self.shadow, dynamic=False, mode="reduce-overhead" if self.graphs else None)
        self.compiled_batch: int | None = None  # compiled for the first batch size seen; others decode eagerly
        self._cache: tuple[int, int, Any] | None = None  # (batch, length, StaticCache): reused while the shape holds

    @torch.no_grad()
    def update_weights(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Copy the policy's current weights into a cast decoding copy (after an optimizer step); a copy that
        shares the policy's parameters has nothing to copy."""
        super().update_weights(state)
        if not self.shared:
            for mine, theirs in zip(self.shadow.parameters(), _base(self.model).parameters(), strict=True):
                mine.copy_(theirs)

    def _decoding(self):
        return contextlib.nullcontext()  # the copy is in eval mode, in its dtype, with the decoding kernel

    def _stepper(self, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new_tokens: int):
        from transformers import StaticCache

        # the static cache is laid out for the full batch: prefill every row (ids [B/n, P] → [B, P])
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        B, P = ids.shape
        length = math.ceil((P + max_new_tokens) / CACHE_BUCKET) * CACHE_BUCKET
        if self._cache is not None and self._cache[:2] == (B, length):
            cache = self._cache[2]
            cache.reset()
        else:
            cache = StaticCache(config=cast(Any, self.shadow).config, max_cache_len=length)
            self._cache = (B, length, cache)
        full_mask = torch.zeros((B, length), dtype=mask.dtype, device=mask.device)
        full_mask[:, :P] = mask
        if self.compiled_batch is None:
            self.compiled_batch = B
            print(
                f"rollout.compile: compiling the decode step for batch {B}{' with CUDA graphs' if self.graphs else ''} "
                "(once; up to a minute or so)",
                file=sys.stderr,
                flush=True,
            )
        state: dict[str, Any] = {"t": 0, "positions": position_ids_from_mask(mask)}

        def step(step_ids: torch.Tensor, done: torch.Tensor | None = None) -> torch.Tensor:  # (every row, done or not)
            if state["t"] == 0:  # prefill, eager (prompt lengths vary)
                out = self.shadow(
                    input_ids=ids,
                    attention_mask=full_mask[:, :P],
                    position_ids=state["positions"],
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kw: cache},
                )
                state["positions"] = state["positions"][:, -1:]
            else:
                full_mask[:, P + state["t"] - 1] = 1
                state["positions"] = state["positions"] + 1
                inputs = dict(
                    input_ids=step_ids,
                    attention_mask=full_mask,
                    position_ids=state["positions"],
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kw: cache},
                )
                out = self._compiled_step(inputs) if B == self.compiled_batch and not self.failed else None
                if out is None:  # another batch size, or no compiled step
                    out = self.shadow(**inputs)
            state["t"] += 1
            return out.logits[:, -1, :]

        return step

    def _compiled_step(self, inputs: dict):
        """One decode step through the compiled copy; None where torch.compile failed and eager decoding takes
        over (``fallback``). A failed compile raises before its graph runs, and a static cache's writes are
        idempotent (the same keys and values at the same positions), so the step can run again eagerly."""
        from torch._dynamo.exc import TorchDynamoException

        if self.graphs:  # a new replay: the last one's outputs are consumed
            torch.compiler.cudagraph_mark_step_begin()
        try:
            return self.compiled(**inputs)
        except TorchDynamoException as e:
            reason = f"{type(e).__name__}: {first_line(e)}"
            if not self.fallback:
                raise TrainingError(
                    f"rollout.compile: torch.compile could not build the decode step ({reason}); "
                    "set rollout.compile=false to sample eagerly"
                ) from e
            print(
                f"rollout.compile: torch.compile could not build the decode step ({reason}); "
                "sampling eagerly from now on",
                file=sys.stderr,
                flush=True,
            )
            self.failed = True
            return None
