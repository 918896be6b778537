"""``train.precision: auto`` by measurement (aha.modeling.precision): the rule, the probe, its per-machine cache, and a
run that says its choice first and samples in bf16 where the probe says it pays while training stays fp32."""

from __future__ import annotations

import json
import math

import pytest
import torch

import aha.build
import aha.modeling.precision as precision
from aha.config import load_config
from aha.models import build_tiny
from aha.rl import train_rl
from aha.track.metrics import read_metrics

CPU = torch.device("cpu")
SLOW_BF16 = {"matmul_fp32": 0.001, "matmul_bf16": 0.1}  # an AVX2-only CPU: bf16 emulated, ~100× slower
FAST_BF16 = {**SLOW_BF16, "matmul_bf16": 0.0005, "decode_fp32": 0.10, "decode_bf16": 0.05, "train_fp32": 2.0}


def test_the_rule_per_phase():
    bf16 = torch.bfloat16
    assert (precision.decide("fp32", CPU).sample, precision.decide("fp32", CPU).train) == (None, None)
    assert (precision.decide("bf16", CPU).sample, precision.decide("bf16", CPU).train) == (bf16, bf16)
    slow = precision.decide("auto", CPU, SLOW_BF16)
    assert (slow.sample, slow.train) == (None, None) and "×0.01" in slow.reason
    fast = precision.decide("auto", CPU, {**FAST_BF16, "train_bf16": 1.0})
    assert (fast.sample, fast.train) == (bf16, None)  # training stays fp32 on a CPU, even where bf16 is faster
    assert "×2.00" in fast.reason and fast.line.startswith("precision: sampling bf16, training fp32 — auto:")
    near = precision.decide("auto", CPU, {**FAST_BF16, "decode_bf16": 0.095, "train_bf16": 1.0})  # ×1.05: noise
    assert near.sample is None
    failed = precision.decide("auto", CPU, {**FAST_BF16, "phase_probe_failed": 1.0})
    assert (failed.sample, failed.train) == (None, None) and "failed" in failed.reason


def test_a_cuda_gpu_runs_bf16_where_it_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    both = precision.decide("auto", torch.device("cuda"))
    assert (both.sample, both.train) == (torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.decide("auto", torch.device("cuda")).train is None


def test_the_probe_times_each_phase_and_leaves_the_model_as_it_was(monkeypatch):
    model, _ = build_tiny("tiny:layers=1,hidden=32,heads=2,ff=64", "0123456789+=", 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()
    monkeypatch.setattr(precision, "GATE_SLOWER", -1.0)  # go on to the phases whatever the matmuls measured
    torch.manual_seed(5)
    seconds = precision.probe(model, CPU, rows=4, tokens=8)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the random state too: a probed run draws what a cached one does
    assert {"matmul_fp32", "matmul_bf16", "decode_fp32", "decode_bf16", "train_fp32", "train_bf16"} <= seconds.keys()
    assert all(v > 0 for v in seconds.values()) and "phase_probe_failed" not in seconds
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_choose_probes_once_per_machine_and_model_and_survives_a_broken_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "probe", lambda model, device: calls.append(1) or dict(SLOW_BF16))
    small, _ = build_tiny("tiny:layers=1,hidden=32,heads=2,ff=64", "0123456789+=", 0)
    wider, _ = build_tiny("tiny:layers=1,hidden=64,heads=2,ff=64", "0123456789+=", 0)
    cache = tmp_path / "cache" / "precision.json"
    first = precision.choose("auto", CPU, small, cache)
    assert len(calls) == 1 and cache.is_file() and first.probe == SLOW_BF16
    assert precision.choose("auto", CPU, small, cache).reason == first.reason and len(calls) == 1  # from the cache
    precision.choose("auto", CPU, wider, cache)  # another shape: measured too, both kept
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2
    assert precision.choose("fp32", CPU, small, cache).train is None and len(calls) == 2  # asked: nothing measured
    key = precision.cache_key(small, CPU)
    cache.write_text(json.dumps({key: {"matmul_fp32": 0.001, "matmul_bf16": 0}}))  # edited by hand: no division by 0
    assert precision.choose("auto", CPU, small, cache).sample is None and len(calls) == 3
    cache.write_text("{not json")
    assert precision.choose("auto", CPU, small, cache).sample is None and len(calls) == 4
    assert key in json.loads(cache.read_text())  # measured over, readable again
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert precision.choose("auto", CPU, small, blocked / "precision.json").train is None  # cannot be written: fine


@pytest.mark.parametrize("seconds", [SLOW_BF16, {**FAST_BF16, "train_bf16": 1.0}], ids=["avx2", "fast-bf16"])
def test_an_auto_run_says_its_choice_first_and_samples_as_chosen(
    tmp_path, write_config, digits_reward, monkeypatch, capsys, seconds
):
    """With the probe's numbers of a CPU without fast bf16 the run is fp32 throughout; with those of one where the
    decode step is ×2 faster in bf16, sampling runs under bf16 autocast (the old log-probs are then recomputed in the
    fp32 training pass) and the run trains as usual."""
    from aha.rollout.hf import HFEngine

    monkeypatch.setenv("AHA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(aha.build, "_CHOICES", {})
    monkeypatch.setattr(precision, "probe", lambda model, device: dict(seconds))
    engines = []
    real_init = HFEngine.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        engines.append(self)

    monkeypatch.setattr(HFEngine, "__init__", spy)
    cfg = load_config(write_config({"rewards": [{"name": digits_reward}], "train": {"steps": 2, "precision": "auto"}}))
    train_rl(cfg, tmp_path / "run")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("precision: ")]
    bf16 = "decode_bf16" in seconds
    assert len(said) == 1 and said[0] in lines[:2]  # in the run's first lines (after the thread count), once
    assert said[0].startswith(f"precision: sampling {'bf16' if bf16 else 'fp32'}, training fp32")
    assert [e.autocast_dtype for e in engines] == [torch.bfloat16 if bf16 else None]
    assert engines[0].exact_logprobs is not bf16
    losses = [r["loss/policy"] for r in read_metrics(tmp_path / "run") if "loss/policy" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
