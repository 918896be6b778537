"""Asynchronous rollouts against synchronous ones, measured on this machine: the arithmetic recipe
(recipes/arithmetic-tiny.yaml: tiny Llama, 2-digit sums, 180 imitation steps, GRPO μ = 2, 32 prompts × 8) with 2 Ray
rollout workers, ``rollout.asynchronous`` off and on (one-step-off: ``rl.max_staleness`` 1), for each seed.

    python benchmarks/async_rollouts.py                      # 300 steps, seeds 0 and 1 (~15 min on 2 cores)
    python benchmarks/async_rollouts.py --steps 500 --seeds 0 1 2

Each run is ``aha train`` in a process of its own, one after another (nothing else should train meanwhile). Printed
per run: held-out greedy accuracy (200 sums) at each eval, the loop's wall time (from the step-0 eval's metrics row
to the last step's, as this script sees them written: imitation and Ray's start left out, the evals in), the median
step time, the trainer's and the sampler's idle time per step, and the importance weights. Synchronous runs log no
idle times: there the trainer waits for the whole rollout (``time/rollout_s``) and the workers for the rest of the
step (``time/step_s`` − ``time/rollout_s``), which is what the table shows for them. Then the mean over seeds and
the ratio of the asynchronous wall time to the synchronous one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AHA = Path(sys.executable).with_name("aha")


def run(out: Path, seed: int, steps: int, asynchronous: bool, eval_every: int) -> dict:
    """One ``aha train`` of the recipe; its metrics rows and the loop's wall time."""
    sets = {
        "train.steps": steps,
        "train.seed": seed,
        "log.eval_every": eval_every,
        "log.save_every": 0,
        "log.progress": "false",
        "log.report": "false",
        "log.tensorboard": "false",
        "distributed.backend": "ray",
        "distributed.rollout_workers": 2,
        "rollout.asynchronous": str(asynchronous).lower(),
    }
    args = [str(AHA), "train", str(ROOT / "recipes" / "arithmetic-tiny.yaml"), "-o", str(out), "--overwrite"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    metrics = out / "metrics.jsonl"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = None
    while proc.poll() is None:  # the loop starts when the step-0 eval's row is written
        if first is None and metrics.exists() and metrics.stat().st_size:
            first = time.perf_counter()
        time.sleep(0.05)
    end = time.perf_counter()
    if proc.returncode:
        raise SystemExit(f"aha train failed:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}")
    wall = end - (first or end)  # (to the process's end: the last row, the final checkpoint and Ray's stop)
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return {"rows": rows, "wall": wall}


def summary(result: dict, asynchronous: bool) -> dict:
    rows = result["rows"]
    steps = [r for r in rows if "time/step_s" in r]
    acc = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    if asynchronous:
        trainer_idle = statistics.mean(r["time/trainer_idle_s"] for r in steps)
        sampler_idle = statistics.mean(r["time/sampler_idle_s"] for r in steps)
    else:
        trainer_idle = statistics.mean(r["time/rollout_s"] for r in steps)
        sampler_idle = statistics.mean(r["time/step_s"] - r["time/rollout_s"] for r in steps)
    out = {
        "acc": acc,
        "wall": result["wall"],
        "step": statistics.median(r["time/step_s"] for r in steps),
        "trainer_idle": trainer_idle,
        "sampler_idle": sampler_idle,
        "reward": statistics.mean(r["reward/mean"] for r in steps[-50:]),
    }
    if asynchronous:
        out["is_mean"] = statistics.mean(r["is/weight_mean"] for r in steps)
        out["is_max"] = max(r["is/weight_max"] for r in steps)
        out["clipped"] = statistics.mean(r["is/clipped_share"] for r in steps)
        out["staleness"] = statistics.mean(r["async/staleness"] for r in steps)
    return out


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--eval-every", type=int, default=50)
    args = ap.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores; recipes/arithmetic-tiny.yaml, {args.steps} steps, 2 Ray workers")
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="aha-async-") as tmp:
        for seed in args.seeds:
            for mode in ("sync", "async"):
                out = Path(tmp) / f"{mode}-{seed}"
                results[mode, seed] = summary(
                    run(out, seed, args.steps, mode == "async", args.eval_every), mode == "async"
                )
                r = results[mode, seed]
                curve = " ".join(f"{s}:{a:.3f}" for s, a in sorted(r["acc"].items()))
                print(f"{mode:>5} seed {seed}: accuracy {curve}", flush=True)
    print()
    head = (
        f"{'mode':<6} {'seed':>4} {'final acc':>9} {'reward':>7} {'loop wall s':>11} {'s/step':>7} "
        f"{'trainer idle':>12} {'sampler idle':>12} {'IS mean':>8} {'IS max':>7} {'clipped':>8}"
    )
    print(head)
    for (mode, seed), r in results.items():
        final = r["acc"][max(r["acc"])]
        is_cols = (
            f"{r['is_mean']:>8.4f} {r['is_max']:>7.3f} {r['clipped']:>8.4f}" if mode == "async" else f"{'—':>8} " * 3
        )
        print(
            f"{mode:<6} {seed:>4} {final:>9.3f} {r['reward']:>7.3f} {r['wall']:>11.1f} {r['step']:>7.3f} "
            f"{r['trainer_idle']:>12.3f} {r['sampler_idle']:>12.3f} {is_cols}"
        )
    for mode in ("sync", "async"):
        mine = [results[mode, s] for s in args.seeds]
        print(
            f"{mode} mean over seeds: final accuracy {statistics.mean(r['acc'][max(r['acc'])] for r in mine):.3f}, "
            f"loop wall {statistics.mean(r['wall'] for r in mine):.1f} s"
        )
    ratio = statistics.mean(results["async", s]["wall"] / results["sync", s]["wall"] for s in args.seeds)
    print(f"async / sync loop wall time: ×{ratio:.2f}")


if __name__ == "__main__":
    main()
