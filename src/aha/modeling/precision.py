"""``train.precision: auto``, decided by measurement: for each phase of a run — sampling (the decode step) and
training (a forward and backward pass) — bf16 autocast or fp32, on the machine the run is on.

On a CPU a short probe times both precisions (:func:`probe`) and the result is cached per machine and model shape
(:func:`choose`), so a run pays for it once. The probe starts with a matmul at the model's width: where bf16 runs it
slower than fp32 (an AVX2-only CPU emulates bf16: ~0.001 TFLOP/s against 0.12–0.17 in fp32 on the 2-core EPYC) no
phase can gain and the probe stops there, in well under a second. Otherwise it times one decode step of the model and
one training pass in each precision. Then the rule (:func:`decide`):

- **sampling** runs in bf16 where its decode step is at least :data:`MIN_GAIN` × faster. The training pass still
  computes the log-probabilities the loss uses (``rl.old_logprobs: auto`` recomputes them when the sampler is not
  exact), so bf16 only changes which completions are drawn, not the gradient's arithmetic.
- **training** stays fp32 on a CPU even where bf16 is faster: learning was seen weaker under bf16 autocast on an
  AMX CPU (the GRPO recipe's gain, +0.30 held-out accuracy in fp32, was +0.255 in 350 steps under bf16; issue 28),
  and fp32 master weights with bf16 sampling keep most of the gain. ``train.precision: bf16`` turns it on.
- **on a CUDA GPU** with bf16 both phases run bf16 autocast (fp32 master weights), as TRL and verl do by default.

``aha train`` prints the choice and its reason in its first lines (:attr:`Choice.line`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aha.modeling.logprobs import cache_kwarg

MIN_GAIN = 1.15  # a phase switches to bf16 only where it runs at least this much faster (the probe's noise is ~5%)
GATE_SLOWER = 1.0  # bf16 matmul at or below fp32's speed × this: no phase can gain, the probe stops


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """What decides a CPU's bf16 speed: its model name, torch's kernel level (``AVX2``, ``AVX512``…), AVX512-BF16 and
    AMX (torch's own checks). Read once a process (each run's :func:`cache_key` asks)."""
    name = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx": "_is_amx_tile_supported"}
    flags = {key: bool(getattr(torch.cpu, fn, lambda: False)()) for key, fn in checks.items()}
    return {"name": name, "capability": torch.backends.cpu.get_cpu_capability(), **flags}


def machine_line(device: torch.device | None = None, precision: str | None = None, threads: str | None = None) -> str:
    """One line saying which machine gave a number: the CPU (name, kernel level, bf16 hardware), the thread count
    (torch's, unless ``threads`` says otherwise) and, where given, the GPU and the precision used.

    e.g. ``AMD EPYC · AVX2 · no AVX512-BF16 · no AMX · 2 threads · fp32``"""
    f, n = cpu_features(), torch.get_num_threads()
    parts = [
        f["name"],
        f["capability"],
        ("" if f["avx512_bf16"] else "no ") + "AVX512-BF16",
        ("" if f["amx"] else "no ") + "AMX",
        threads or (f"{n} thread" + ("s" if n > 1 else "")),
    ]
    if device is not None and device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    if precision is not None:
        parts.append(precision)
    return " · ".join(parts)


@dataclass
class Choice:
    """The precision of each phase (None = fp32, else the autocast dtype) and why."""

    sample: torch.dtype | None
    train: torch.dtype | None
    reason: str
    probe: dict[str, float] = field(default_factory=dict)

    @property
    def line(self) -> str:
        name = {None: "fp32", torch.bfloat16: "bf16"}
        return f"precision: sampling {name[self.sample]}, training {name[self.train]} — {self.reason}"


def decide(precision: str, device: torch.device, probe: dict[str, float] | None = None) -> Choice:
    """The rule, a pure function of the setting, the device and (on a CPU under 'auto') the probe's seconds:
    ``matmul_fp32`` / ``matmul_bf16``, and where the probe went on, ``decode_*`` and ``train_*``."""
    if precision in ("fp32", "bf16"):
        dtype = torch.bfloat16 if precision == "bf16" else None
        return Choice(dtype, dtype, f"train.precision: {precision}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice(torch.bfloat16, torch.bfloat16, "auto: a CUDA GPU with bf16 (fp32 master weights)")
        return Choice(None, None, "auto: this GPU has no bf16")
    if device.type != "cpu" or not probe:
        return Choice(None, None, f"auto: fp32 on {device.type}")
    matmul = probe["matmul_fp32"] / probe["matmul_bf16"]
    if probe.get("phase_probe_failed"):
        return Choice(None, None, f"auto: bf16 matmuls run ×{matmul:.2g} fp32's speed, the phase probe failed", probe)
    if "decode_bf16" not in probe:
        return Choice(None, None, f"auto: bf16 matmuls run ×{matmul:.2g} fp32's speed on this CPU", probe)
    decode = probe["decode_fp32"] / probe["decode_bf16"]
    train = probe["train_fp32"] / probe["train_bf16"]
    sample = torch.bfloat16 if decode >= MIN_GAIN else None
    why = (
        f"auto: bf16 decode step ×{decode:.2f} fp32's speed ({'≥' if sample else '<'} ×{MIN_GAIN}); "
        f"training pass ×{train:.2f}, kept fp32 on a CPU (learning was weaker under bf16: docs/speed.md)"
    )
    return Choice(sample, None, why, probe)


def _seconds(fn, dtype: torch.dtype | None, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` under ``dtype`` autocast (None: fp32), after one warm-up call."""
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with ctx():
            fn()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe(model: torch.nn.Module, device: torch.device, rows: int = 16, tokens: int = 64) -> dict[str, float]:
    """Seconds of a matmul at the model's width in fp32 and bf16; where bf16's is not slower, also of one decode
    step (``rows`` sequences over a ``tokens``-long KV cache) and one training pass (forward and backward over
    ``rows // 4`` × ``tokens``). The model's weights and gradients are left as they were, and so is torch's random
    state: a run that probes draws the same numbers as one that read the probe from the cache."""
    with torch.random.fork_rng(devices=[]):
        return _probe(model, device, rows, tokens)


def _probe(model: torch.nn.Module, device: torch.device, rows: int, tokens: int) -> dict[str, float]:
    width = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 512)
    a, b = torch.randn(64, width, device=device), torch.randn(width, 4 * width, device=device)
    out = {"matmul_fp32": _seconds(lambda: a @ b, None, device)}
    out["matmul_bf16"] = _seconds(lambda: a @ b, torch.bfloat16, device, repeats=1)
    if out["matmul_fp32"] / out["matmul_bf16"] <= GATE_SLOWER:
        return out
    vocab = int(model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]
    ids = torch.randint(0, vocab, (rows, tokens), device=device)
    was_training, grads = model.training, {n: p.grad for n, p in model.named_parameters()}
    try:
        out.update(_phases(model, device, ids, rows))
    except Exception as e:  # (a model the probe cannot drive: fp32, said why)
        out["phase_probe_failed"] = 1.0
        print(f"precision probe: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        model.train(was_training)
        for n, p in model.named_parameters():
            p.grad = grads[n]
    return out


def _phases(model: torch.nn.Module, device: torch.device, ids: torch.Tensor, rows: int) -> dict[str, float]:
    """Seconds of a decode step and of a training pass, in fp32 and bf16 (see :func:`probe`)."""
    out = {}
    model.eval()
    kw = cache_kwarg(model)
    with torch.no_grad():
        for dtype, key in ((None, "decode_fp32"), (torch.bfloat16, "decode_bf16")):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                cache = model(ids, use_cache=True).past_key_values  # prefilled in the precision timed
            # (each timed step appends one token to the cache: 68 at most, ~64 throughout)
            out[key] = _seconds(lambda c=cache: model(ids[:, -1:], **{kw: c}, use_cache=True), dtype, device)
    model.train()
    batch = ids[: max(1, rows // 4)]
    for dtype, key in ((None, "train_fp32"), (torch.bfloat16, "train_bf16")):
        out[key] = _seconds(lambda: model(batch, labels=batch).loss.backward(), dtype, device, repeats=2)
    return out


def cache_key(model: torch.nn.Module, device: torch.device) -> str:
    """What a probe's result depends on: the CPU, torch, the thread count and the model's shape."""
    f = cpu_features()
    shape = sum(p.numel() for p in model.parameters())
    cfg = getattr(model, "config", None)
    width = getattr(cfg, "hidden_size", "?")
    return f"{f['name']}|{f['capability']}|bf16={f['avx512_bf16']}|amx={f['amx']}|torch {torch.__version__}|" + (
        f"{torch.get_num_threads()} threads|{device.type}|{shape} params, width {width}"
    )


def choose(precision: str, device: torch.device, model: torch.nn.Module, cache: Path | None = None) -> Choice:
    """:func:`decide` with, on a CPU under 'auto', the probe's numbers: from ``cache`` (a JSON file of earlier
    probes, keyed by :func:`cache_key`) or measured now and added to it. An unreadable cache is measured over."""
    if precision != "auto" or device.type != "cpu":
        return decide(precision, device)
    key, known = cache_key(model, device), {}
    if cache is not None:
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(cache.read_text())
            known = known if isinstance(known, dict) else {}
    seconds = known.get(key)
    if not _usable(seconds):
        seconds = probe(model, device)
        if cache is not None:
            with contextlib.suppress(OSError):
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**known, key: seconds}, indent=1))
                os.replace(tmp, cache)
    return decide(precision, device, seconds)


def _usable(seconds: Any) -> bool:
    """Whether a cached probe can be read: the matmul timings at least, every value a positive number."""
    return (
        isinstance(seconds, dict)
        and {"matmul_fp32", "matmul_bf16"} <= seconds.keys()
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in seconds.values())
    )
