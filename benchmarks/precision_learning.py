"""Does learning suffer under bf16? The arithmetic recipe (recipes/arithmetic-tiny.yaml: tiny Llama, 2-digit sums,
imitation steps, GRPO μ = 2, 32 prompts × 8) run three ways from the same seed, one after another in this process:

- ``fp32``: sampling and training in fp32;
- ``bf16 sampling``: sampling under bf16 autocast, training fp32 (what ``train.precision: auto`` picks on a CPU
  whose bf16 decode step is faster; the old log-probs are then recomputed in the fp32 training pass);
- ``bf16``: both under bf16 autocast (``train.precision: bf16``), fp32 master weights.

    python benchmarks/precision_learning.py                    # 150 steps, seed 0 (~10 min on 2 AVX2 cores)
    python benchmarks/precision_learning.py --steps 500 --seeds 0 1

Printed per run: held-out greedy accuracy (200 sums) after the imitation steps (step 0) and the mean over the last 5
evals, the gain, and the loop's wall time. On a CPU without fast bf16 (AVX2 only) the bf16 runs are slow, as bf16 is
emulated there: their times say nothing of a machine with AMX; their accuracies are what a machine with bf16 would
learn, to float rounding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import aha.rl.parts
from aha.config import load_config
from aha.modeling.precision import Choice, machine_line
from aha.rl import train_rl
from aha.track.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
MODES = {  # name → (train.precision, the sampler's dtype forced where not None)
    "fp32": ("fp32", None),
    "bf16 sampling": ("fp32", torch.bfloat16),
    "bf16": ("bf16", None),
}


def run(out: Path, mode: str, seed: int, steps: int) -> dict:
    precision, sampler = MODES[mode]
    cfg = load_config(
        str(ROOT / "recipes" / "arithmetic-tiny.yaml"),
        [f"train.steps={steps}", f"train.seed={seed}", f"train.precision={precision}", "log.save_every=0"]
        + ["log.progress=false", "log.report=false", "log.tensorboard=false"],
    )
    real = aha.rl.parts.precision
    if sampler is not None:  # the choice 'auto' makes where the probe finds bf16 decoding faster
        aha.rl.parts.precision = lambda *a: Choice(sampler, None, "bf16 sampling, forced by the benchmark")
    try:
        start = time.perf_counter()
        train_rl(cfg, out)
        wall = time.perf_counter() - start
    finally:
        aha.rl.parts.precision = real
    evals = [(r["step"], r["eval/accuracy"]) for r in read_metrics(out) if "eval/accuracy" in r]
    late = statistics.mean(acc for _, acc in evals[-5:])
    return {"start": evals[0][1], "late": late, "gain": late - evals[0][1], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="precision_learning-"))
    rows = []
    for seed in args.seeds:
        for mode in args.modes.split(","):
            print(f"running {mode}, seed {seed} …", file=sys.stderr, flush=True)
            r = run(out / f"{mode.replace(' ', '-')}-{seed}", mode, seed, args.steps)
            rows.append((mode, seed, r))
            print(f"  {r}", file=sys.stderr, flush=True)
    print(f"\n{machine_line(precision='as in each row')}\nrecipes/arithmetic-tiny.yaml, {args.steps} steps\n")
    print("| precision | seed | held-out acc. at step 0 | last 5 evals | gain | wall |")
    print("|---|---|---|---|---|---|")
    for mode, seed, r in rows:
        print(f"| {mode} | {seed} | {r['start']:.3f} | {r['late']:.3f} | {r['gain']:+.3f} | {r['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()
