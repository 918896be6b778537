"""What the HF engine's decoding saves: its generate as it is — each decode step appending to the KV cache in place
(``aha.rollout.hf.growing_layer``) and the rows that have stopped leaving the batch (``HFEngine.continue_from``'s
``shrink``) — against transformers' ``DynamicLayer``, which concatenates (copies the whole cache) every token, with
every row decoded to the end.

    flock /tmp/aha-train.lock python benchmarks/decode_savings.py                  # the think demo's shape, untrained
    flock /tmp/aha-train.lock python benchmarks/decode_savings.py --model DIR      # a saved model (a demo's checkpoint)
    flock /tmp/aha-train.lock python benchmarks/decode_savings.py --spec tiny:layers=2,hidden=64,heads=2,ff=256

One RL batch of ``aha demo think`` (32 of its prompts × 8 samples, up to 64 new tokens at temperature 1, fp32), from
the same seed in three ways, interleaved (``--repeats`` rounds, the first one left out as warm-up): concatenate (the
baseline), grow, grow + shrink. It checks that all draw the same tokens with the same logprobs, and prints seconds
per generate, each variant's ratio to the baseline, and the CPU. Growth saves more the longer the caches get;
shrinking saves more the more the rows' lengths differ (a model that stops after 3 tokens one time in 2 and writes 40
the other). Run it alone (two torch processes on 2 cores slow each other).

Measured (Intel Xeon @ 2.80GHz, AVX-512 without bf16, 2 threads; ``--repeats 4``), grow and grow + shrink against
concatenation: untrained (22.9 tokens a row) ×0.81 and ×0.50 (1.018 → 0.513 s); the think demo's seed-0 SFT model
(15.3) ×0.78 and ×0.38 (0.958 → 0.366 s); its RL model (39.0) ×0.85 and ×0.66 (0.939 → 0.619 s).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="tiny:layers=3,hidden=128,heads=4,ff=512,ctx=96", help="a tiny model's spec")
    parser.add_argument("--model", type=Path, help="a saved model directory instead of --spec")
    parser.add_argument("--repeats", type=int, default=6, help="rounds of the three; the first is warm-up")
    args = parser.parse_args()

    import aha.rollout.hf as hf
    from aha.data.templates import encode_text
    from aha.demos import think_world
    from aha.modeling.precision import machine_line
    from aha.models import build_tiny
    from aha.rollout import SamplingParams

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tok = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    else:
        model, tok = build_tiny(args.spec, "".join(sorted(set(think_world.LABELS + "0123456789+= wait"))), seed=0)
    model.eval()
    engine = hf.HFEngine(model, tok, torch.device("cpu"), None)
    rows, _ = think_world.make_rows(32, 0, seed=0)
    prompts = [encode_text(r["prompt"], tok) for r in rows]
    params = SamplingParams(temperature=1.0, max_new_tokens=64)
    grow, shrink = hf.grow_in_place, hf.SHRINK
    variants = {"concatenate": (False, 2.0), "grow": (True, 2.0), "grow+shrink": (True, shrink)}  # (2.0: never)

    def generate(name: str):
        growing, hf.SHRINK = variants[name]
        hf.grow_in_place = grow if growing else (lambda cache: cache)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        roll = engine.generate(prompts, 8, params)
        return time.perf_counter() - t0, roll

    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.repeats):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        rolls = {}
        for name in order:
            seconds, rolls[name] = generate(name)
            if i:
                times[name].append(seconds)
        first = rolls["concatenate"]
        for name, roll in rolls.items():
            if roll.completion_ids != first.completion_ids or roll.logprobs != first.logprobs:
                raise SystemExit(f"{name} drew other tokens or logprobs than concatenation")
    hf.grow_in_place, hf.SHRINK = grow, shrink
    lengths = [len(c) for c in rolls["grow"].completion_ids]
    base = statistics.median(times["concatenate"])
    print(
        f"{machine_line(precision='fp32')}, torch {torch.__version__}; {len(prompts)} prompts x 8, "
        f"{statistics.mean(lengths):.1f} tokens a row on average (longest {max(lengths)}); the same tokens and "
        "logprobs every way"
    )
    for name, ts in times.items():
        print(
            f"  {name:12s} {statistics.median(ts):.3f} s per generate (median of {len(ts)})  x{statistics.median(ts) / base:.2f}"
        )


if __name__ == "__main__":
    random.seed(0)
    main()
