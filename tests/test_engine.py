"""The HF rollout engine (aha.rollout.hf): grouping and finish reasons, the sampler's logprobs against a
fresh full forward, greedy against an uncached step-by-step argmax, stop strings, nucleus filtering and
weight updates — all on a 1-layer Llama that builds in milliseconds."""

from __future__ import annotations

import math

import pytest
import torch

from aha.modeling.logprobs import completion_logprobs
from aha.models import build_tiny
from aha.rollout import SamplingParams, pack_rollouts
from aha.rollout.hf import HFEngine, WeightMajorLinear, top_p_filter

SPEC = "tiny:layers=1,hidden=32,heads=2,ff=64"
ALPHABET = "0123456789+="
CPU = torch.device("cpu")
PROMPTS = ["1+2=", "12+34=", "5="]  # different lengths: the batch is left-padded


def spiky_model(seed: int = 0, std: float = 0.3):
    """A tiny Llama whose matrices are redrawn with a large std. The default init (std 0.02) gives almost
    uniform next-token distributions whose greedy output is one repeated character; these weights give
    varied completions, some ending in EOS and some not, with clear argmax margins."""
    model, tok = build_tiny(SPEC, ALPHABET, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval(), tok


def encode(tok, texts: list[str]) -> list[list[int]]:
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


@pytest.fixture
def engine():
    torch.manual_seed(0)
    model, tok = spiky_model(seed=0)
    return HFEngine(model, tok, CPU, None)


def greedy(engine: HFEngine, prompts: list[list[int]], max_new_tokens: int = 8):
    return engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=max_new_tokens))


# ─────────────────────────────── shape, grouping, finish reasons ───────────────────────────────


def test_generate_groups_rows_per_prompt_and_reports_why_each_stopped(engine):
    prompts = encode(engine.tokenizer, PROMPTS)
    eos = engine.tokenizer.eos_token_id
    n, max_new = 3, 5
    roll = engine.generate(prompts, n, SamplingParams(temperature=1.0, max_new_tokens=max_new))

    assert len(roll) == len(prompts) * n
    for i, p in enumerate(prompts):
        assert roll.prompt_ids[i * n : (i + 1) * n] == [p] * n
    for c, lp, why in zip(roll.completion_ids, roll.logprobs, roll.finish_reasons):
        assert 1 <= len(c) <= max_new and len(lp) == len(c)
        if eos in c:  # EOS is kept, as the last token, and only then is the reason 'stop'
            assert c.index(eos) == len(c) - 1 and why == "stop"
        else:
            assert len(c) == max_new and why == "length"
    assert set(roll.finish_reasons) == {"stop", "length"}, "this seed should produce both kinds of ending"


def test_min_new_tokens_forbids_early_eos_but_keeps_the_models_logprobs(engine):
    prompts = encode(engine.tokenizer, PROMPTS)
    eos = engine.tokenizer.eos_token_id
    torch.manual_seed(0)
    free = engine.generate(prompts, 4, SamplingParams(max_new_tokens=6))
    assert any(eos in c[:-1] or (c[-1] == eos and len(c) < 6) for c in free.completion_ids)  # this seed stops early
    torch.manual_seed(0)
    fixed = engine.generate(prompts, 4, SamplingParams(max_new_tokens=6, min_new_tokens=6))
    assert all(len(c) == 6 and eos not in c for c in fixed.completion_ids)
    assert set(fixed.finish_reasons) == {"length"}
    # the recorded logprobs are the unconstrained model's (what a training pass recomputes)
    batch = pack_rollouts(fixed, engine.pad_id, CPU)
    with torch.no_grad():
        logp, _ = completion_logprobs(engine.model, batch["input_ids"], batch["attention_mask"], 6)
    assert torch.allclose(logp, batch["sampler_logp"], atol=1e-5)


# ─────────────────────────────── logprobs = a fresh forward's ───────────────────────────────


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampler_logprobs_equal_a_full_forward_at_the_sampling_temperature(engine, top_p):
    """π_old(token) as the trainer recomputes it: one uncached forward over [left-padded prompt |
    right-padded completion], log_softmax(logits / T). Under top_p the sampler draws from the filtered
    distribution but reports the full one's logprob, which is what the trainer's ratio compares against."""
    T = 0.7
    prompts = encode(engine.tokenizer, PROMPTS)
    roll = engine.generate(prompts, 4, SamplingParams(temperature=T, top_p=top_p, max_new_tokens=10))
    assert len({len(c) for c in roll.completion_ids}) > 1  # completions of several lengths: right padding too

    batch = pack_rollouts(roll, engine.tokenizer.pad_token_id, CPU)
    with torch.no_grad():
        logp, _ = completion_logprobs(
            engine.model, batch["input_ids"], batch["attention_mask"], batch["mask"].shape[1], temperature=T
        )
    mask = batch["mask"].bool()
    assert torch.allclose(logp[mask], batch["sampler_logp"][mask], atol=1e-4), (
        (logp[mask] - batch["sampler_logp"][mask]).abs().max()
    )

    # and by hand for one token: log_softmax(logits / T) of the first completion token of row 0
    ids = torch.tensor([roll.prompt_ids[0]])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, -1]
    want = torch.log_softmax(logits / T, -1)[roll.completion_ids[0][0]].item()
    assert roll.logprobs[0][0] == pytest.approx(want, abs=1e-4)


# ─────────────────────────────── greedy ───────────────────────────────


def test_greedy_is_deterministic_and_equals_an_uncached_step_by_step_argmax(engine):
    prompts = encode(engine.tokenizer, PROMPTS + ["7+7=", "98+1="])
    eos = engine.tokenizer.eos_token_id
    max_new = 8
    first, second = greedy(engine, prompts, max_new), greedy(engine, prompts, max_new)
    assert first.completion_ids == second.completion_ids and first.logprobs == second.logprobs

    for p, got, got_logp in zip(prompts, first.completion_ids, first.logprobs):
        seq, want, want_logp = list(p), [], []
        with torch.no_grad():
            for _ in range(max_new):  # the whole growing sequence each time: no cache, no padding
                logits = engine.model(input_ids=torch.tensor([seq])).logits[0, -1]
                token = int(logits.argmax())
                want.append(token)
                want_logp.append(torch.log_softmax(logits, -1)[token].item())
                seq.append(token)
                if token == eos:
                    break
        assert got == want
        assert got_logp == pytest.approx(want_logp, abs=1e-4)
    assert set(first.finish_reasons) == {"stop", "length"}


# ─────────────────────────────── stop strings ───────────────────────────────


@pytest.mark.parametrize("start, length", [(0, 2), (6, 2), (0, 10)])
def test_stop_string_cuts_right_after_the_token_that_completes_it(engine, start, length):
    """Observe a greedy completion, then ask for a stop string taken from it: the completion ends with the
    token completing the string's first occurrence (the char tokenizer has one token per character), the
    reason is 'stop', and a row whose output never contains the string is untouched. The greedy text is
    '76387763803238': "63" (start 6) first occurs at 1, and a 10-character string spans 10 tokens."""
    tok = engine.tokenizer
    prompts = encode(tok, ["31+", "5="])
    before = greedy(engine, prompts, max_new_tokens=14)
    text = tok.decode(before.completion_ids[0])
    stop = text[start : start + length]
    assert before.finish_reasons[0] == "length" and len(stop) == length and stop.isdigit()  # no special token
    assert stop not in tok.decode(before.completion_ids[1])
    cut = text.index(stop) + len(stop)  # the first occurrence may come before `start`

    after = engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=14, stop=[stop]))
    assert after.completion_ids[0] == before.completion_ids[0][:cut]
    assert after.logprobs[0] == before.logprobs[0][:cut]
    assert after.finish_reasons[0] == "stop"
    assert after.completion_ids[1] == before.completion_ids[1]
    assert after.finish_reasons[1] == before.finish_reasons[1]


# ─────────────────────────────── nucleus filter ───────────────────────────────


def test_top_p_filter_keeps_the_token_that_crosses_top_p():
    # probs [0.5, 0.3, 0.2]: cumulative mass before each token is [0, 0.5, 0.8]
    # top_p 0.6: the first token's 0.5 falls short, the second (0.8) crosses it → keep 2 tokens
    # top_p 0.5: the first token alone reaches it → keep 1 token
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    inf = float("-inf")
    assert top_p_filter(logits, 0.6).tolist() == pytest.approx([math.log(0.5), math.log(0.3), inf])
    assert top_p_filter(logits, 0.5).tolist() == pytest.approx([math.log(0.5), inf, inf])
    assert top_p_filter(logits, 1.0) is logits
    # order does not matter, and rows are filtered independently
    rows = torch.tensor([[0.2, 0.5, 0.3], [0.3, 0.2, 0.5]]).log()
    kept = torch.isfinite(top_p_filter(rows, 0.6)).tolist()
    assert kept == [[False, True, True], [True, False, True]]


# ─────────────────────────────── weight updates ───────────────────────────────


def test_update_weights_changes_what_the_engine_samples(engine):
    prompts = encode(engine.tokenizer, PROMPTS)
    before = greedy(engine, prompts)

    # another model's full state: the engine now samples exactly what that model samples
    other, tok = spiky_model(seed=1)
    want = greedy(HFEngine(other, tok, CPU, None), prompts)
    engine.update_weights(other.state_dict())
    got = greedy(engine, prompts)
    assert engine.weights_version == 1
    assert got.completion_ids == want.completion_ids != before.completion_ids

    # a partial state: a zeroed lm_head makes every logit 0, so every token has logprob −ln V
    engine.update_weights({"lm_head.weight": torch.zeros_like(engine.model.lm_head.weight)})
    roll = engine.generate(prompts, 2, SamplingParams(temperature=0.7, max_new_tokens=4))
    V = engine.model.config.vocab_size
    assert all(lp == pytest.approx(-math.log(V), abs=1e-5) for row in roll.logprobs for lp in row)
    assert engine.weights_version == 2


def test_sample_categorical_draws_from_the_distribution_and_never_a_zero_probability_token():
    from aha.rollout.hf import sample_categorical

    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(20000, 1)
    draws = sample_categorical(probs)
    counts = torch.bincount(draws, minlength=6).float() / len(draws)
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts, probs[0], atol=0.015), counts
    one_hot = torch.zeros(3, 6)
    one_hot[torch.arange(3), torch.tensor([0, 5, 2])] = 1.0  # mass on the first, last and a middle token
    assert sample_categorical(one_hot).tolist() == [0, 5, 2]


def test_engine_decodes_with_the_models_own_attention_while_training_passes_use_another(engine):
    """train.attention switches the policy's training passes to eager attention on CPU; the engine keeps
    sampling with the kernel the model came with, puts the training kernel back, and the two agree."""
    from aha.modeling.options import set_attention

    assert engine.attention == "sdpa"
    set_attention([engine.model], "eager")
    seen = []
    real_forward = engine.model.forward

    def spy(*args, **kwargs):
        seen.append(engine.model.config._attn_implementation)
        return real_forward(*args, **kwargs)

    engine.model.forward = spy
    torch.manual_seed(0)
    roll = engine.generate(encode(engine.tokenizer, PROMPTS), 2, SamplingParams(max_new_tokens=5))
    del engine.model.forward
    assert set(seen) == {"sdpa"} and engine.model.config._attn_implementation == "eager"
    batch = pack_rollouts(roll, engine.pad_id, CPU)
    with torch.no_grad():
        logp, _ = completion_logprobs(engine.model, batch["input_ids"], batch["attention_mask"], batch["mask"].shape[1])
    assert torch.allclose(logp * batch["mask"], batch["sampler_logp"], atol=1e-5)


@pytest.mark.parametrize(
    "dev",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="no CUDA GPU (on one, the decode step replays CUDA graphs)"
            ),
        ),
    ],
)
def test_compiled_engine_samples_like_the_eager_one_and_follows_weight_updates(dev):
    """rollout.compile in fp32: the compiled copy shares the policy's parameters (no second set of weights), decodes
    exactly like the eager engine, and follows a weight change at once (update_weights has nothing to copy)."""
    from aha.rollout.compiled import CompiledEngine

    model, tok = spiky_model(seed=0)
    device = torch.device(dev)
    model.to(device)
    eager, compiled = HFEngine(model, tok, device, None), CompiledEngine(model, tok, device, None)
    assert compiled.graphs == (dev == "cuda")
    assert compiled.shared and all(a is b for a, b in zip(compiled.shadow.parameters(), model.parameters()))
    prompts = encode(tok, PROMPTS)
    outputs, caches = [], []
    for _ in range(2):  # the second round runs after a weight change, on the first round's static cache, zeroed
        want, got = greedy(eager, prompts), greedy(compiled, prompts)
        caches.append(compiled._cache[2])
        assert got.completion_ids == want.completion_ids
        for a, b in zip(got.logprobs, want.logprobs):
            assert a == pytest.approx(b, abs=1e-4)
        outputs.append(got.completion_ids)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.0)
    assert outputs[0] != outputs[1]  # the change was visible to both engines
    assert caches[0] is caches[1]  # same shape: the cache (whose addresses CUDA graphs capture) was kept
    sampled = compiled.generate(prompts, 3, SamplingParams(max_new_tokens=4, min_new_tokens=4))
    assert all(len(c) == 4 for c in sampled.completion_ids) and compiled.compiled_batch == 3


@pytest.mark.parametrize("fallback", [True, False])
def test_a_decode_step_that_does_not_compile_falls_back_or_stops_clearly(fallback, capsys):
    """rollout.compile 'auto' (fallback): a compile failure is reported once and decoding goes on eagerly, with the
    eager engine's tokens; asked for explicitly: one error that names the way out."""
    from torch._dynamo.exc import TorchDynamoException

    from aha.errors import TrainingError
    from aha.rollout.compiled import CompiledEngine

    model, tok = spiky_model(seed=0)
    compiled = CompiledEngine(model, tok, CPU, None, fallback=fallback)
    calls = []

    def broken(**kwargs):
        calls.append(1)
        raise TorchDynamoException("this architecture has no lowering")

    compiled.compiled = broken
    prompts = encode(tok, PROMPTS)
    if not fallback:
        with pytest.raises(TrainingError, match="rollout.compile=false"):
            greedy(compiled, prompts)
        return
    want = greedy(HFEngine(model, tok, CPU, None), prompts)
    for _ in range(2):
        got = greedy(compiled, prompts)
        assert got.completion_ids == want.completion_ids
        for a, b in zip(got.logprobs, want.logprobs):
            assert a == pytest.approx(b, abs=1e-5)
    assert len(calls) == 1 and compiled.failed  # tried once, then eager for good
    assert capsys.readouterr().err.count("could not build the decode step") == 1


def test_compiled_engine_in_another_dtype_keeps_a_cast_copy_synced_on_update():
    """Under bf16 autocast the compiled engine decodes from a bf16 copy: stale after a weight change until
    update_weights() copies the new weights in."""
    from aha.rollout.compiled import CompiledEngine

    model, tok = spiky_model(seed=0)
    compiled = CompiledEngine(model, tok, CPU, torch.bfloat16)
    assert not compiled.shared and next(compiled.shadow.parameters()).dtype == torch.bfloat16
    prompts = encode(tok, PROMPTS)
    before = greedy(compiled, prompts).completion_ids
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    assert greedy(compiled, prompts).completion_ids == before  # stale until told
    compiled.update_weights()
    assert greedy(compiled, prompts).completion_ids != before
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(compiled.shadow.parameters(), model.parameters()))


def test_compiled_sampler_starts_from_the_warmed_up_policy(tmp_path, write_config, digits_reward):
    """The compiled engine's copy is taken when the engine is built; the trainer syncs it after the SFT
    warm-up, so the first rollouts come from the warmed-up policy exactly as without compile (fp32: same
    logits, same random draws, same samples)."""
    import json

    from aha.config import load_config
    from aha.rl import train_rl

    first = {}
    for compile_ in (False, True):
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "rollout": {"compile": compile_},
                    "sft": {"imitation_steps": 30},
                    "train": {"steps": 1},
                    "log": {"eval_every": 0, "save_every": 0, "samples_per_step": 16},
                },
                name=f"c{compile_}.yaml",
            )
        )
        train_rl(cfg, tmp_path / f"run-{compile_}")
        first[compile_] = [
            json.loads(line)["completion"]
            for line in (tmp_path / f"run-{compile_}" / "samples.jsonl").read_text().splitlines()
        ]
    assert first[True] == first[False] and len(first[False]) == 16


def test_fp32_cpu_decoding_swaps_in_weight_major_linears_and_restores_them(engine):
    """The engine decodes through WeightMajorLinear (the same product in MKL's faster operand order) and hands
    the model back with plain nn.Linear modules; the logprobs it reports are the model's (checked above)."""
    seen = []
    head = engine.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, out: seen.append(type(m)))
    engine.generate(encode(engine.tokenizer, PROMPTS[:2]), 2, SamplingParams(max_new_tokens=3))
    handle.remove()
    assert seen and set(seen) == {WeightMajorLinear}
    assert all(type(m) is not WeightMajorLinear for m in engine.model.modules())
    x = torch.randn(5, 3, head.in_features)
    assert torch.allclose(WeightMajorLinear.forward(head, x), head(x), atol=1e-5)
