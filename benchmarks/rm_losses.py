"""Plackett-Luce vs Bradley-Terry on the same rankings: held-out pairwise accuracy and training time, one process.

Rankings of K = 4 random 8-digit strings by a hidden preference (more 7s is better, ties kept as ties, plus a noisy
labeller who swaps two neighbouring tiers with probability --noise); the tiny Llama RM, same seed, data and steps.
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/rm_losses.py [--rows 600 --steps 150]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from aha.config import load_config
from aha.rm import train_reward_model


def make_rankings(path: Path, n: int, k: int, noise: float, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        comps = ["".join(rng.choice("0123456789") for _ in range(8)) for _ in range(k)]
        counts = [c.count("7") for c in comps]
        tiers = [[i for i in range(k) if counts[i] == v] for v in sorted(set(counts), reverse=True)]
        if len(tiers) < 2:
            continue
        if rng.random() < noise:
            j = rng.randrange(len(tiers) - 1)
            tiers[j], tiers[j + 1] = tiers[j + 1], tiers[j]
        rows.append({"prompt": "n:", "completions": comps, "ranking": tiers})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = make_rankings(tmp / "rankings.jsonl", a.rows, 4, a.noise, 0)
    print("| loss | seed | held-out pairwise acc | top-1 | Kendall τ | train time (s) |\n|---|---|---|---|---|---|")
    for seed in a.seeds:
        for loss in ("bt", "pl"):
            cfg = load_config(
                None,
                [],
                stage="reward_model",
                model={"name": "tiny:layers=2,hidden=64,heads=4,ff=256"},
                reward_model={"path": str(data), "loss": loss, "eval_fraction": 0.2},
                train={
                    "steps": a.steps,
                    "lr": 2e-3,
                    "batch_size": 16,
                    "micro_batch_size": 64,
                    "device": "cpu",
                    "precision": "fp32",
                    "seed": seed,
                },
                log={"tensorboard": False, "report": False, "progress": False, "eval_every": a.steps, "save_every": 0},
            )
            t0 = time.perf_counter()
            last = train_reward_model(cfg, tmp / f"{loss}-{seed}")
            dt = time.perf_counter() - t0
            print(
                f"| {loss} | {seed} | {last.get('eval/pairwise_accuracy', float('nan')):.3f} | "
                f"{last.get('eval/top1_accuracy', float('nan')):.3f} | {last.get('eval/kendall_tau', float('nan')):.3f} | "
                f"{dt:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
