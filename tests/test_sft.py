"""aha.sft: supervised fine-tuning; what it does with a run directory it is asked to resume."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aha.config import load_config
from aha.data.load import DataError
from aha.data.sampler import length_groups
from aha.data.templates import encode_text, encode_texts
from aha.errors import TrainingError
from aha.models import build_tiny
from aha.sft import micro_batches, train_sft


def test_sft_resume_without_a_checkpoint_raises_and_clears_nothing(tmp_path, write_config):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n' * 4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    cfg = load_config(write_config({"stage": "sft", "sft": {"path": str(data)}}))
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_sft(cfg, run, resume=True)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_micro_batches_of_different_lengths_give_the_whole_batchs_token_mean(tmp_path, write_config):
    """Gradient accumulation weighs every completion token the same: a batch of 8 in micro-batches of 2, whose
    completions differ in length (1 to 12 tokens), gives the loss and the gradient of the same batch in one pass, to
    float rounding (a mean per micro-batch would weigh the tokens of the short ones more); and so does the batch cut
    into micro-batches of like lengths (``train.group_by_length``). Read from the first step's logged loss and gradient
    norm, before any optimizer step (Adam's first step, about lr × the gradient's sign, turns float rounding in a
    gradient near 0 into differences of order lr)."""
    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"{i}+{i}=", "completion": str(2 * i) * (1 + (i % 4) * 3)} for i in range(1, 9)]
    data.write_text("".join(f'{{"prompt": "{r["prompt"]}", "completion": "{r["completion"]}"}}\n' for r in rows))
    first = {}
    for micro, grouped in ((8, False), (2, False), (2, True)):
        train = {"steps": 1, "batch_size": 8, "micro_batch_size": micro, "lr": 1e-2, "group_by_length": grouped}
        cfg = load_config(
            write_config(
                {"stage": "sft", "sft": {"path": str(data)}, "train": train, "log": {"eval_every": 0, "save_every": 0}},
                name=f"micro{micro}{grouped}.yaml",
            )
        )
        run = tmp_path / f"run{micro}{grouped}"
        train_sft(cfg, run)
        step = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss/sft"' in line]
        first[micro, grouped] = step[0]["loss/sft"], step[0]["grad_norm"]
    for split in ((2, False), (2, True)):
        assert first[split] == pytest.approx(first[8, False], rel=1e-5), (split, first)
    pairs = [([i], [0] * n) for i, n in enumerate((1, 12, 4, 7, 1, 12, 4, 7))]
    assert micro_batches(pairs, 2, True) != micro_batches(pairs, 2, False)  # grouping changed the micro-batches


@given(st.lists(st.integers(0, 200), max_size=80), st.integers(1, 32))
def test_length_groups_cover_the_batch_once_in_no_more_tokens_than_size_of_the_longest(lengths, size):
    groups = length_groups(lengths, size)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)  # like lengths together, shortest first
    longest = max(lengths, default=0)
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= size * longest or len(g) == 1
        assert len(g) <= size or max(lengths[i] for i in g) < longest  # a full-length row: no more than size of them


def test_short_pairs_go_many_to_a_micro_batch_and_long_ones_few():
    batch = [([1] * 14, [2] * 3)] * 45 + [([1] * 14, [2] * 45)] * 19  # the think demo's guesses and worked traces
    assert [len(m) for m in micro_batches(batch, 16, by_length=False)] == [16, 16, 16, 16]
    assert [len(m) for m in micro_batches(batch, 16, by_length=True)] == [45, 16, 3]


def test_encode_texts_is_encode_text_of_each_in_one_call_and_names_a_character_it_cannot_encode():
    _, tok = build_tiny("tiny:layers=1,hidden=16,heads=2,ff=32,ctx=32", "0123456789+=ab ")
    texts = ["a1 b2=", "12", "", "a1 b2=", "3+4"]
    assert encode_texts(texts, tok) == [encode_text(t, tok) for t in texts]
    with pytest.raises(DataError, match="no token for 'é'"):
        encode_texts(["12", "1é"], tok)
