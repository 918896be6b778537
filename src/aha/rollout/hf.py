"""A lean batched sampler over any HF causal LM, with a KV cache (CPU default; works on GPU)."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, cast

import torch
import torch.nn.functional as F

from aha.modeling.logprobs import cache_kwarg, position_ids_from_mask
from aha.rollout import Rollouts, SamplingParams

SHRINK = 0.25  # the share of a decoding batch that has stopped when those rows leave it (HFEngine.continue_from) ...
SHRINK_FLOOR = 16  # ... unless fewer rows would stay: MKL's fp32 products round a few rows differently (1 row: gemv)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the smallest set whose probability mass reaches ``top_p`` to −inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``probs [B, V]`` by inverting the CDF: a cumulative sum and a binary search.

    Exact, like ``torch.multinomial``, but multinomial draws V exponentials per row on the CPU (~14 ms per
    decode step for a batch of 16 over SmolLM2's 49k vocabulary) where this draws one uniform per row."""
    cdf = probs.float().cumsum(-1)
    u = (1 - torch.rand(probs.shape[0], 1, device=probs.device)) * cdf[:, -1:]  # in (0, total]: never a 0-prob token
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probs.shape[-1] - 1)


class WeightMajorLinear(torch.nn.Linear):
    """``nn.Linear`` computed as ``(W @ xᵀ)ᵀ``: the same product, in the operand order MKL runs fastest for a
    few rows on AVX2 CPUs (the sampler's decode steps, 16 rows: SmolLM2's 49k-row LM head 28.6 → 19.4 ms, its
    MLP projections 0.39 → 0.30 ms). The engine switches its model's linears to this class while it decodes
    in fp32 on a CPU, and back afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.weight @ x.reshape(-1, x.shape[-1]).t()).t().contiguous().view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class HFEngine:
    """Samples from ``model`` in-process. The engine shares the policy's parameters, so refreshing the
    old policy after an optimizer step is free; ``update_weights(state)`` loads an explicit state dict
    (the path remote rollout workers take)."""

    keeps_turn_cache = True  # multi-turn episodes keep its KV cache from one turn to the next (:class:`TurnCache`)

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, autocast_dtype: torch.dtype | None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.autocast_dtype = autocast_dtype
        self.eos_ids = {tokenizer.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
        self.eos_ids.discard(None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.weights_version = 0
        # decode with the kernel the model came with, even if training passes switch it (see train.attention)
        self.attention = getattr(model.config, "_attn_implementation", None)
        self.weight_major = device.type == "cpu" and autocast_dtype is None  # see WeightMajorLinear
        self._cache_kw = cache_kwarg(_base(model))

    @property
    def exact_logprobs(self) -> bool:
        """fp32 cached decoding gives the training pass's logprobs; under bf16 autocast the two round differently
        (~0.03 nats/token), so old logprobs are recomputed (``rl.old_logprobs: auto``)."""
        return self.autocast_dtype is None

    def sync(self, policy: torch.nn.Module) -> int:
        """Sample from ``policy``'s current weights: free for the policy this engine shares, a state-dict load for
        another; returns the new weights version."""
        self.update_weights(None if policy is self.model else policy.state_dict())
        return self.weights_version

    def update_weights(self, state: dict[str, torch.Tensor] | None = None) -> None:
        if state is not None:
            self.model.load_state_dict(state, strict=False)
        self.weights_version += 1

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def _decoding(self):
        """Eval mode, the decoding attention kernel and autocast for the length of a generate call."""
        was_training = self.model.training
        self.model.eval()
        train_attention = getattr(self.model.config, "_attn_implementation", None)
        switch = self.attention is not None and train_attention != self.attention
        if switch:
            cast(Any, self.model).set_attn_implementation(self.attention)  # (a transformers model)
        linears = [m for m in self.model.modules() if type(m) is torch.nn.Linear] if self.weight_major else []
        for m in linears:
            m.__class__ = WeightMajorLinear
        try:
            with self._autocast():
                yield
        finally:
            self.model.train(was_training)
            for m in linears:
                m.__class__ = torch.nn.Linear
            if switch:
                cast(Any, self.model).set_attn_implementation(train_attention)

    def _stepper(self, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new_tokens: int):
        """A function ``(input_ids, done) → next-token logits [B, V]`` that keeps the KV cache, mask and positions.

        Its first call (the prefill) takes the distinct prompts ``ids [B/n, P]``, runs each once and hands back
        ``n`` rows per prompt (the KV cache copied ``n`` times); later calls take one token per row ``[B, 1]`` and
        decode only the rows not ``done`` (see :meth:`continue_from`'s ``shrink``)."""
        return self.continue_from(None, mask, position_ids_from_mask(mask), n, shrink=True)[0]

    def continue_from(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, n: int = 1, shrink: bool = False):
        """``(step, state)``: the stepper of :meth:`_stepper` over an existing KV ``cache`` (None: none yet) whose
        first call encodes a chunk ``[B, L]`` at ``positions [B, L]``, ``mask [B, cached + L]`` covering the cache and
        the chunk. ``state`` holds the cache and the mask as decoding extends them (what :class:`TurnCache` keeps).

        ``shrink``: the rows that are ``done`` leave the batch once they are a quarter of it (:data:`SHRINK`): the
        cache, mask and positions keep only the others' rows (``state["rows"]``), the model decodes those, and their
        logits come back in their places of a ``[B, V]`` of zeros (a done row's draw is discarded, and every row still
        draws its one uniform a step: the random stream is the same). A row's numbers are its own while the batch
        keeps :data:`SHRINK_FLOOR` rows, so the same tokens and logprobs are drawn bit for bit in fp32 on a CPU
        (measured on an AVX-512 Xeon, 2 threads, and tested wherever the suite runs; a GPU's kernels, chosen by batch
        size, may round otherwise). Measured on think-demo models on an AVX-512 Xeon
        (``benchmarks/decode_savings.py``): with the growing cache, generate takes ×0.66 the time of concatenating
        over every row for the RL model, ×0.38 for the SFT model, whose rows stop after 3 tokens or 40. The state
        then holds the remaining rows only, so a :class:`TurnCache`, which keeps every row's cache for the next turn,
        does not shrink."""
        state: dict[str, Any] = {"cache": cache, "mask": mask, "positions": positions, "first": True, "rows": None}

        def step(step_ids: torch.Tensor, done: torch.Tensor | None = None) -> torch.Tensor:
            full = step_ids.shape[0]
            if shrink and done is not None and not state["first"]:
                state["rows"] = self._shrink(state, done)
            if state["rows"] is not None:
                step_ids = step_ids[state["rows"]]
            if not state["first"]:  # one new token per row
                ones = torch.ones((step_ids.shape[0], 1), dtype=mask.dtype, device=mask.device)
                state["mask"] = torch.cat([state["mask"], ones], dim=1)
                state["positions"] = state["positions"][:, -1:] + 1
            out = self.model(
                input_ids=step_ids,
                attention_mask=state["mask"],
                position_ids=state["positions"],
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: state["cache"]},
            )
            logits = out.logits[:, -1, :]
            if state["first"] and n > 1:  # after the prefill: n samples per prompt from here on
                getattr(out, self._cache_kw).batch_repeat_interleave(n)
                state["mask"], state["positions"] = (
                    state["mask"].repeat_interleave(n, 0),
                    state["positions"].repeat_interleave(n, 0),
                )
                logits = logits.repeat_interleave(n, 0)
            state["cache"], state["first"] = grow_in_place(getattr(out, self._cache_kw)), False
            if state["rows"] is not None:
                logits = logits.new_zeros((full, logits.shape[-1])).index_copy_(0, state["rows"], logits)
            return logits

        return step, state

    @staticmethod
    def _shrink(state: dict[str, Any], done: torch.Tensor) -> torch.Tensor | None:
        """The rows (of the full batch) the cache holds after dropping the done ones, if they are :data:`SHRINK` of
        it or more and :data:`SHRINK_FLOOR` rows or more stay, in a cache of :func:`plain_layers`; ``state``'s cache,
        mask and positions cut to them. None while the cache holds every row (nothing to select)."""
        rows = state["rows"] if state["rows"] is not None else torch.arange(len(done), device=done.device)
        alive = ~done[rows]
        kept = int(alive.sum())
        if kept < SHRINK_FLOOR or len(rows) - kept < SHRINK * len(rows) or not plain_layers(state["cache"]):
            return state["rows"]
        keep = alive.nonzero().squeeze(1)
        state["cache"].batch_select_indices(keep)
        state["mask"], state["positions"] = state["mask"][keep], state["positions"][keep]
        return rows[keep]

    def left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, mask)`` of ``rows`` left-padded to the longest, on the engine's device: every row's next token
        lands in the same column."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts:
        distinct = [list(p) for p in prompt_token_ids]
        prompts = [p for p in distinct for _ in range(n)]
        ids, mask = self.left_pad(distinct)
        with self._decoding():
            step = self._stepper(ids, mask, n, sampling.max_new_tokens)
            drawn = self.sample(step, step(ids), sampling)  # prefill: each distinct prompt once, then one token per row
        return self.rollouts(prompts, drawn, sampling)

    def sample(self, step, logits: torch.Tensor, sampling: SamplingParams):
        """Decode from the prefill's ``logits [B, V]``, calling ``step`` with each drawn token (and which rows are
        done) until every row has stopped or ``max_new_tokens``: ``(tokens [B, T], logprobs [B, T], done [B],
        stopped_by_string [B])``. The last drawn token is never fed back (``step`` runs T − 1 times)."""
        B = logits.shape[0]
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        out_tokens, out_logps = [], []
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        stopped_by_string = torch.zeros(B, dtype=torch.bool, device=self.device)
        for t in range(sampling.max_new_tokens):
            logits = logits.float()
            if not sampling.greedy:
                logits = logits / sampling.temperature
            logp_all = F.log_softmax(logits, -1)  # the model's own distribution: what training recomputes
            if t < sampling.min_new_tokens:  # forbid EOS for now (sampling only; logprobs stay the model's)
                logits = logits.index_fill(-1, eos, float("-inf"))
            if sampling.greedy:
                token = logits.argmax(-1)
            else:
                token = sample_categorical(top_p_filter(logits, sampling.top_p).softmax(-1))
            logp = logp_all.gather(-1, token[:, None]).squeeze(-1)
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            out_tokens.append(token)
            out_logps.append(logp)
            done = done | torch.isin(token, eos)
            if sampling.stop:
                stopped_by_string |= self._hit_stop_string(out_tokens, done, sampling.stop)
                done = done | stopped_by_string
            if bool(done.all()) or t + 1 == sampling.max_new_tokens:
                break
            logits = step(token[:, None], done)
        return torch.stack(out_tokens, 1), torch.stack(out_logps, 1), done, stopped_by_string

    def rollouts(self, prompts: list[list[int]], drawn: tuple, sampling: SamplingParams) -> Rollouts:
        """What :meth:`sample` ``drawn`` as :class:`Rollouts`: each row cut after its first EOS (kept: the model must
        learn to stop) or its stop string."""
        tokens, logps, done, stopped_by_string = drawn
        tokens, logps, done = tokens.cpu(), logps.float().cpu(), done.cpu()
        completion_ids, logprobs, reasons = [], [], []
        for i in range(len(prompts)):
            row = tokens[i].tolist()
            length = len(row)
            for j, tok in enumerate(row):
                if tok in self.eos_ids:
                    length = j + 1
                    break
            if stopped_by_string[i]:
                length = self._stop_length(row, sampling.stop)
            completion_ids.append(row[:length])
            logprobs.append(logps[i, :length].tolist())
            reasons.append("stop" if done[i] else "length")
        return Rollouts(prompts, completion_ids, logprobs, reasons)

    def _hit_stop_string(self, out_tokens: list[torch.Tensor], done: torch.Tensor, stop: list[str]) -> torch.Tensor:
        # a new stop string ends in the last token; it spans at most 4 tokens per character (byte-level pieces)
        window = max(8, 4 * max(len(s) for s in stop))
        recent = torch.stack(out_tokens[-window:], 1).tolist()
        hit = [not d and any(s in self.tokenizer.decode(r) for s in stop) for r, d in zip(recent, done.tolist())]
        return torch.tensor(hit, device=done.device)

    def _stop_length(self, row: list[int], stop: list[str]) -> int:
        for j in range(1, len(row) + 1):
            if any(s in self.tokenizer.decode(row[:j]) for s in stop):
                return j
        return len(row)


def plain_layers(cache: Any) -> bool:
    """Whether every layer of ``cache`` is a plain or growing ``DynamicLayer``, whose rows can be selected: static,
    sliding-window and linear-attention layers (whose recurrent states a row selection would miss) are not."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in growing_layer() for layer in layers or ())


def grow_in_place(cache: Any) -> Any:
    """``cache`` with its plain layers (transformers' ``DynamicLayer``) made :func:`growing_layer`'s: the same keys and
    values, but a decode step no longer copies the whole cache. Other layers (sliding windows) stay as they are."""
    dynamic, growing = growing_layer()
    for layer in getattr(cache, "layers", ()):
        if type(layer) is dynamic:
            layer.__class__ = growing
    return cache


@functools.cache
def growing_layer() -> tuple[type, type]:
    """``(DynamicLayer, GrowingLayer)``. ``DynamicLayer.update`` appends a token by ``torch.cat``, which copies the
    layer's whole cache every step: the bytes copied grow with the square of the length (a 256-row generate of the
    think demo takes 0.78-0.85x the time without it on an AVX-512 Xeon: ``benchmarks/decode_savings.py``). A
    ``GrowingLayer`` keeps its keys and values at the front of a buffer with room to spare (up to twice what it holds;
    doubled when full) and writes each new token after them (under no_grad, as the engine decodes); what it returns is a view of the buffer's filled part: the same numbers, in the same layout but the stride
    of the sequence dimension. An operation that replaces the keys (``batch_repeat_interleave``, ``batch_select_indices``,
    ``reorder_cache``) leaves them outside the buffer, and the next update starts a new one; ``crop`` leaves a shorter
    view of it, and the next update writes over what was cropped."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys, values = cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)  # (initialized above)
            self.keys, self._key_room = _append(keys, getattr(self, "_key_room", None), key_states)
            self.values, self._value_room = _append(values, getattr(self, "_value_room", None), value_states)
            return self.keys, self.values

    return DynamicLayer, GrowingLayer


def _append(held: torch.Tensor, room: torch.Tensor | None, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(held ⧺ new along dim −2, the buffer it is a view of)``: written into ``room`` after ``held`` where ``held``
    is the front of ``room`` and the two fit; otherwise both copied into a new buffer twice as long as they are."""
    n = held.shape[-2] if held.dim() == 4 else 0
    end = n + new.shape[-2]
    in_room = (
        room is not None
        and held.dim() == 4
        and held.data_ptr() == room.data_ptr()
        and held.stride() == room.stride()
        and held.shape[:2] == room.shape[:2]
        and end <= room.shape[-2]
    )
    if not in_room:
        room = new.new_empty(*new.shape[:2], max(2 * end, 16), new.shape[-1])
        if n:
            room[:, :, :n].copy_(held)
    assert room is not None
    room[:, :, n:end].copy_(new)
    return room[:, :, :end], room


def sample_completions(
    model: torch.nn.Module,
    tokenizer,
    prompt_ids: list[list[int]],
    k: int,
    sampling: SamplingParams,
    device: torch.device,
    batch: int,
) -> list[list[str]]:
    """``k`` completions for each prompt of ``prompt_ids`` (token ids), decoded without special tokens, grouped
    per prompt in order: ``model`` in eval mode on ``device``, ``batch`` prompts per call to an :class:`HFEngine`.
    The random draws depend on ``batch`` too: the same seed and ``batch`` give the same texts."""
    model.eval()
    model.to(device)
    engine = HFEngine(model, tokenizer, device, None)
    groups: list[list[str]] = []
    for start in range(0, len(prompt_ids), batch):
        chunk = prompt_ids[start : start + batch]
        roll = engine.generate(chunk, k, sampling)
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in roll.completion_ids]
        groups += [texts[i * k : (i + 1) * k] for i in range(len(chunk))]
    return groups


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (its forward has the real signature)."""
    return cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
