"""What the growing KV cache saves: the HF engine's generate with each decode step appending to the cache in place
(``aha.rollout.hf.growing_layer``) against transformers' ``DynamicLayer``, which concatenates (copies the whole cache)
every token.

    flock /tmp/aha-train.lock python benchmarks/kv_growth.py                  # the think demo's model shape, untrained
    flock /tmp/aha-train.lock python benchmarks/kv_growth.py --model DIR      # a saved model (a demo's checkpoint)
    flock /tmp/aha-train.lock python benchmarks/kv_growth.py --spec tiny:layers=2,hidden=64,heads=2,ff=256

One RL batch of ``aha demo think`` (32 of its prompts × 8 samples, up to 64 new tokens at temperature 1, fp32), from
the same seed with and without growth, interleaved (``--repeats`` rounds, the first one left out as warm-up). It
checks that both draw the same tokens with the same logprobs, and prints seconds per generate, each variant's ratio to
concatenation, and the CPU. A generate runs until its longest row stops, so the caches reach about 64 tokens either
way; the saving grows with the cache (longer completions, more layers). Run it alone (two torch processes on 2 cores
slow each other).

Measured (Intel Xeon @ 2.80GHz, AVX-512 without bf16, 2 threads): untrained ×0.82 (1.146 → 0.944 s), the think
demo's RL model of seed 0 (39 tokens a row) ×0.89 (1.237 → 1.105 s).
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
    parser.add_argument("--repeats", type=int, default=6, help="rounds of (concatenate, grow); the first is warm-up")
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
    grow = hf.grow_in_place

    def generate(growing: bool):
        hf.grow_in_place = grow if growing else (lambda cache: cache)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        roll = engine.generate(prompts, 8, params)
        return time.perf_counter() - t0, roll

    times: dict[str, list[float]] = {"concatenate": [], "grow": []}
    for i in range(args.repeats):
        order = [False, True] if i % 2 == 0 else [True, False]
        rolls = {}
        for growing in order:
            seconds, rolls[growing] = generate(growing)
            if i:
                times["grow" if growing else "concatenate"].append(seconds)
        same = (
            rolls[True].completion_ids == rolls[False].completion_ids and rolls[True].logprobs == rolls[False].logprobs
        )
        if not same:
            raise SystemExit("the growing cache drew other tokens or logprobs than concatenation")
    hf.grow_in_place = grow
    tokens = statistics.mean(len(c) for c in rolls[True].completion_ids)
    base = statistics.median(times["concatenate"])
    print(
        f"{machine_line(precision='fp32')}, torch {torch.__version__}; {len(prompts)} prompts x 8, "
        f"{tokens:.1f} tokens a row on average; the same tokens and logprobs both ways"
    )
    for name, ts in times.items():
        print(
            f"  {name:12s} {statistics.median(ts):.3f} s per generate (median of {len(ts)})  x{statistics.median(ts) / base:.2f}"
        )


if __name__ == "__main__":
    random.seed(0)
    main()
