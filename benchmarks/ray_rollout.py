"""Scale-out on Ray, measured on this machine: rollout throughput of the in-process sampler (HFEngine) against Ray
rollout workers (RayEngine) with 1 and 2 workers, on the same prompts and weights; then the wall time of a few RL
steps with 1 and 2 data-parallel trainer ranks (``distributed.trainers``).

    unshare -rn sh -c 'ip link set lo up && python benchmarks/ray_rollout.py'   # Ray on the loopback only
    python benchmarks/ray_rollout.py --model tiny:layers=2,hidden=128,heads=4,ff=512 --prompts 16 --tokens 16

Fixed for every engine: P prompts × G completions × exactly L new tokens (EOS forbidden until L), temperature 1.
Each engine samples once to warm up, then ``--repeats`` times, timed; printed: the median completions/s and
tokens/s, and their ratio to the in-process sampler measured in the same session. The in-process sampler uses every
core; each of N Ray workers gets cores/N threads (what RayEngine gives them). On a machine with C cores, N workers can
at best match one process using all C (they split the same cores); the gain comes with more machines, or where one
process cannot use all of its cores (small batches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ALPHABET = "0123456789+="


def rollout_throughput(args) -> None:
    import torch

    from aha.models import build_tiny
    from aha.rollout import SamplingParams
    from aha.rollout.hf import HFEngine
    from aha.rollout.ray import RayEngine

    policy, tok = build_tiny(args.model, ALPHABET, seed=0)
    policy.eval()
    prompts = [tok(f"{i % 10}+{(3 * i) % 10}=").input_ids for i in range(args.prompts)]
    sampling = SamplingParams(max_new_tokens=args.tokens, min_new_tokens=args.tokens, temperature=1.0)
    cores = os.cpu_count() or 1
    print(
        f"rollout: {args.model}, {args.prompts} prompts × {args.group} completions × {args.tokens} tokens, "
        f"{cores} cores, median of {args.repeats}"
    )

    def measure(engine) -> tuple[float, float]:
        engine.generate(prompts, args.group, sampling)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = engine.generate(prompts, args.group, sampling)
            times.append(time.perf_counter() - t0)
        n, tokens = len(out), sum(len(c) for c in out.completion_ids)
        s = statistics.median(times)
        return n / s, tokens / s

    torch.set_num_threads(cores)
    rows = [("in-process (HFEngine)", *measure(HFEngine(policy, tok, torch.device("cpu"), None)))]
    for workers in (1, 2):
        engine = RayEngine(policy, tok, workers=workers, timeout_s=600)
        try:
            engine.sync(policy)
            threads = max(1, cores // workers)
            rows.append(
                (
                    f"Ray, {workers} worker{'s' * (workers > 1)} × {threads} thread{'s' * (threads > 1)}",
                    *measure(engine),
                )
            )
        finally:
            engine.close()
    base = rows[0][1]
    print(f"{'engine':<36} {'completions/s':>14} {'tokens/s':>10} {'vs in-process':>14}")
    for name, cps, tps in rows:
        print(f"{name:<36} {cps:>14.1f} {tps:>10.1f} {cps / base:>13.2f}×")


def trainer_steps(args) -> None:
    """``--steps`` RL steps of the tiny arithmetic run with 2 Ray rollout workers and 1, then 2, trainer ranks."""
    import yaml

    from aha.config import load_config
    from aha.rl import train_rl

    print(
        f"\ntrainer ranks: {args.model}, arithmetic, {args.prompts} prompts × {args.group} completions, "
        f"{args.steps} steps, 2 Ray rollout workers (median of steps 2..{args.steps})"
    )
    print(f"{'trainers':<10} {'update s/step':>14} {'step s':>8}")
    for m in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cfg.yaml"
            path.write_text(
                yaml.safe_dump(
                    {
                        "model": {"name": args.model},
                        "task": {"name": "arithmetic", "digits": 1, "num_train": 200, "num_eval": 20},
                        "rollout": {"group_size": args.group, "max_new_tokens": args.tokens},
                        "rl": {"prompts_per_step": args.prompts},
                        "train": {"steps": args.steps, "lr": 1e-4, "precision": "fp32", "device": "cpu", "seed": 0},
                        "log": {
                            "tensorboard": False,
                            "report": False,
                            "progress": False,
                            "eval_every": 0,
                            "save_every": 0,
                        },
                        "distributed": {"backend": "ray", "rollout_workers": 2, "trainers": m},
                    }
                )
            )
            train_rl(load_config(path), Path(tmp) / "run")
            rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()][1:]
            print(
                f"{m:<10} {statistics.median(r['time/train_s'] for r in rows):>14.3f} "
                f"{statistics.median(r['time/step_s'] for r in rows):>8.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:layers=4,hidden=256,heads=4,ff=1024")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        rollout_throughput(args)
        trainer_steps(args)
    finally:
        ray.shutdown()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
