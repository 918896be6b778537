"""The HF engine's decoding does less work for the same draws, on test_engine's 1-layer Llama: the KV cache grows in
place (aha.rollout.hf.growing_layer), holding what concatenation would through every cache operation, and rows that
have stopped leave the batch (``HFEngine.continue_from``'s ``shrink``); generation is bit for bit the same."""

from __future__ import annotations

import pytest
import torch
from test_engine import PROMPTS, encode, spiky_model

from aha.rollout import SamplingParams
from aha.rollout.hf import HFEngine


@pytest.fixture
def engine():
    torch.manual_seed(0)
    model, tok = spiky_model(seed=0)
    return HFEngine(model, tok, torch.device("cpu"), None)


def test_growing_cache_layer_holds_what_concatenation_would_through_crop_repeat_and_select():
    """GrowingLayer's keys and values equal DynamicLayer's after the same updates, crops, repeats and selections, and a
    one-token update writes into the buffer it already has (no copy of the cache)."""
    from aha.rollout.hf import growing_layer

    dynamic, growing = growing_layer()
    plain, grown = dynamic(), growing()
    g = torch.Generator().manual_seed(0)

    def update(tokens: int, rows: int) -> None:
        k, v = torch.randn(rows, 2, tokens, 4, generator=g), torch.randn(rows, 2, tokens, 4, generator=g)
        expected = plain.update(k, v)
        got = grown.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))

    update(5, 3)  # a prefill
    room = grown._key_room
    for _ in range(6):
        update(1, 3)
    assert grown._key_room is room and grown.keys.data_ptr() == room.data_ptr()  # written in place
    for layer in (plain, grown):
        layer.crop(-4)
    update(1, 3)  # over what was cropped
    for layer in (plain, grown):
        layer.batch_repeat_interleave(2)
    update(1, 6)
    for layer in (plain, grown):
        layer.batch_select_indices(torch.tensor([4, 0, 2]))
    for _ in range(40):  # past the buffer's room: a new one, twice as long
        update(1, 3)
    assert grown.keys.shape == plain.keys.shape == (3, 2, 5 + 6 - 4 + 1 + 1 + 40, 4)


def test_generation_with_the_growing_cache_is_bit_identical_to_concatenation(engine, monkeypatch):
    """The same draws from the same seed, token for token and logprob for logprob, with and without growth, in one
    turn and over kept turns (:class:`~aha.rollout.turn_cache.TurnCache`)."""
    import aha.rollout.hf as hf
    from aha.rollout.turn_cache import TurnCache

    prompts = encode(engine.tokenizer, PROMPTS)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)

    def draws():
        torch.manual_seed(3)
        roll = engine.generate(prompts, 4, params)
        turns = TurnCache(engine, len(prompts))
        contexts = [list(p) for p in prompts]
        for _ in range(2):
            turn = turns.generate(list(range(len(prompts))), contexts, params)
            contexts = [c + t + encode(engine.tokenizer, ["1"])[0] for c, t in zip(contexts, turn.completion_ids)]
        return roll.completion_ids, roll.logprobs, contexts

    grown = draws()
    monkeypatch.setattr(hf, "grow_in_place", lambda cache: cache)
    assert draws() == grown


def test_rows_that_stopped_leave_the_batch_and_the_draws_stay_bit_identical(engine, monkeypatch):
    """Once a quarter of the rows still decoding have stopped, the model decodes only the others (the batch it sees
    shrinks, never below the floor); every row's tokens and logprobs are what the full batch gives."""
    import aha.rollout.hf as hf

    prompts = encode(engine.tokenizer, PROMPTS)
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    widths: list[int] = []
    engine.model.register_forward_pre_hook(
        lambda m, args, kw: widths.append(kw["input_ids"].shape[0]), with_kwargs=True
    )

    def draws():
        widths.clear()
        torch.manual_seed(5)
        roll = engine.generate(prompts, 16, params)
        return roll.completion_ids, roll.logprobs, list(widths)

    ids, logps, shrunk = draws()
    lengths = sorted(len(c) for c in ids)
    assert lengths[0] < lengths[-1] - 4  # rows stop at different times
    assert shrunk[0] == 3 and shrunk[1] == 48 and min(shrunk[1:]) < 48  # prefill, then the batch shrank ...
    assert min(shrunk[1:]) >= hf.SHRINK_FLOOR  # ... not below the floor
    assert all(a >= b for a, b in zip(shrunk[1:], shrunk[2:]))  # it only shrinks, and more than once
    assert len(set(shrunk[1:])) >= 3
    monkeypatch.setattr(hf, "SHRINK", 2.0)  # never
    full_ids, full_logps, full = draws()
    assert set(full[1:]) == {48}
    assert (ids, logps) == (full_ids, full_logps)


def test_only_caches_of_plain_layers_shrink():
    """Rows leave the batch only where every layer is a plain or growing DynamicLayer: a layer with state beyond its
    keys and values (sliding window, linear attention) would keep rows the others dropped."""
    from types import SimpleNamespace

    from transformers.cache_utils import DynamicSlidingWindowLayer

    from aha.rollout.hf import growing_layer, plain_layers

    dynamic, growing = growing_layer()
    assert plain_layers(SimpleNamespace(layers=[dynamic(), growing()]))
    assert not plain_layers(SimpleNamespace(layers=[growing(), DynamicSlidingWindowLayer(sliding_window=4)]))
    assert not plain_layers(SimpleNamespace(layers=[])) and not plain_layers(None)
