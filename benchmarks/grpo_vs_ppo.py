"""GRPO vs PPO on the same model, task and batch: what does the critic cost?

Each configuration runs in its own subprocess (so its peak RSS is its own), one after another (never two
at once: on a small CPU, concurrent torch processes slow each other down far more than 2×). Printed per run:
trainable parameters (policy + critic), peak RSS (and CUDA peak memory on a GPU), median seconds per step
after the first, its rollout / train split, and the final held-out greedy accuracy; then the ratios
PPO / GRPO measured in this session.

    python benchmarks/grpo_vs_ppo.py                       # tiny model (recipes/arithmetic-tiny*.yaml) + SmolLM2-135M
    python benchmarks/grpo_vs_ppo.py --models tiny --tiny-steps 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _worker import WorkerFailed, peak_rss_mib, report, run_worker

ROOT = Path(__file__).resolve().parents[1]
QUIET = {
    "log.progress": False,
    "log.tensorboard": False,
    "log.report": False,
    "log.save_every": 0,
    "log.samples_per_step": 0,
}
ALGOS = {  # label → overrides on top of the model's base config
    "GRPO": {"rl.algo": "grpo"},
    "PPO (separate critic)": {"rl.algo": "ppo", "critic.kind": "separate"},
    "PPO (value head)": {"rl.algo": "ppo", "critic.kind": "head"},
}


def model_setups(tiny_steps: int, smol_steps: int) -> dict[str, tuple[str | None, dict]]:
    """model label → (recipe file or None, overrides). Same task, batch, lengths and schedule for every algo."""
    return {
        "tiny": (
            str(ROOT / "recipes" / "arithmetic-tiny.yaml"),
            {"train.steps": tiny_steps, "log.eval_every": tiny_steps},
        ),
        "smollm2": (
            None,
            {  # SmolLM2-135M-Instruct, 4 prompts × 4 completions × ≤ 32 tokens, 2-digit sums (chat)
                "model.name": "smollm2-135m",
                "task.name": "arithmetic",
                "task.digits": 2,
                "task.num_eval": 50,
                "rollout.group_size": 4,
                "rollout.max_new_tokens": 32,
                "rl.prompts_per_step": 4,
                "rl.mu": 2,
                "rl.beta": 0.04,
                "rl.epsilon_high": 0.28,
                "train.lr": 1e-6,
                "train.micro_batch_size": 8,
                "train.steps": smol_steps,
                "log.eval_every": smol_steps,
            },
        ),
    }


def worker(spec: dict) -> None:
    """Run one configuration in this process and print one JSON line of measurements."""
    import torch

    from aha.config import load_config
    from aha.rl import train_rl

    overrides = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in spec["overrides"].items()]
    cfg = load_config(spec["recipe"], overrides)
    run_dir = Path(spec["run_dir"])
    counted: dict[str, int] = {}
    import aha.rl.parts as context

    real = context.make_optimizer

    def counting_optimizer(model, tr, total, critic=None, critic_lr=None):  # count what the optimizer trains
        counted["policy"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counted["critic"] = sum(p.numel() for p in critic.parameters() if p.requires_grad) if critic is not None else 0
        return real(model, tr, total, critic, critic_lr)

    context.make_optimizer = counting_optimizer
    t0 = time.perf_counter()
    last = train_rl(cfg, run_dir)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step_s" in r][1:]  # the first step warms caches up
    out = {
        "params_policy": counted.get("policy", 0),
        "params_critic": counted.get("critic", 0),
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "s_per_step": statistics.median(r["time/step_s"] for r in steps) if steps else None,
        "rollout_s": statistics.median(r["time/rollout_s"] for r in steps) if steps else None,
        "train_s": statistics.median(r["time/train_s"] for r in steps) if steps else None,
        "accuracy_start": next((r["eval/accuracy"] for r in rows if r["step"] == 0 and "eval/accuracy" in r), None),
        "accuracy_final": last.get("eval/accuracy"),
        "steps": cfg.train.steps,
        "wall_s": wall,
    }
    report(out)


def run_one(recipe: str | None, overrides: dict, run_dir: Path) -> dict:
    spec = {"recipe": recipe, "overrides": {**QUIET, **overrides}, "run_dir": str(run_dir)}
    try:
        return run_worker(__file__, spec, ROOT, tail=5)
    except WorkerFailed as e:
        raise SystemExit(f"run failed ({run_dir}):\n{e}") from None


def fmt(x, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    ap.add_argument("--algos", default=",".join(ALGOS), help="comma-separated labels: " + ", ".join(ALGOS))
    ap.add_argument("--tiny-steps", type=int, default=300)
    ap.add_argument("--smol-steps", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    out = args.out or Path(tempfile.mkdtemp(prefix="grpo_vs_ppo-"))
    setups = model_setups(args.tiny_steps, args.smol_steps)
    results: list[tuple[str, str, dict]] = []
    for model in args.models.split(","):
        recipe, base = setups[model]
        for algo in args.algos.split(","):
            print(f"running {model} / {algo} …", file=sys.stderr, flush=True)
            res = run_one(recipe, {**base, **ALGOS[algo]}, out / f"{model}-{algo.split()[0].lower()}-{len(results)}")
            results.append((model, algo, res))
            print(f"  {json.dumps(res)}", file=sys.stderr, flush=True)

    print(
        "\n| model | algorithm | trained params (policy + critic) | peak RSS MiB | CUDA peak MiB | s/step | "
        "rollout s | train s | accuracy start → end (steps) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model, algo, r in results:
        print(
            f"| {model} | {algo} | {r['params_policy'] / 1e6:.2f}M + {r['params_critic'] / 1e6:.2f}M | "
            f"{r['peak_rss_mib']:.0f} | {fmt(r['cuda_peak_mib'], '.0f')} | {fmt(r['s_per_step'])} | "
            f"{fmt(r['rollout_s'])} | {fmt(r['train_s'])} | {fmt(r['accuracy_start'], '.3f')} → "
            f"{fmt(r['accuracy_final'], '.3f')} ({r['steps']}) |"
        )
    print("\nratios against GRPO on the same model, measured in this session:")
    for model in dict.fromkeys(m for m, _, _ in results):
        base = next((r for m, a, r in results if m == model and a == "GRPO"), None)
        for m, algo, r in results:
            if m != model or algo == "GRPO" or base is None:
                continue
            parts = [f"peak RSS ×{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}"]
            if r["s_per_step"] and base["s_per_step"]:
                parts.append(f"s/step ×{r['s_per_step'] / base['s_per_step']:.2f}")
                parts.append(f"train s ×{r['train_s'] / base['train_s']:.2f}")
            if r["cuda_peak_mib"] and base["cuda_peak_mib"]:
                parts.append(f"CUDA peak ×{r['cuda_peak_mib'] / base['cuda_peak_mib']:.2f}")
            print(f"  {model}: {algo}: " + ", ".join(parts))
    print(f"\nrun directories: {out}")


if __name__ == "__main__":
    main()
