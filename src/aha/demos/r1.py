"""``aha demo r1``: R1-Zero-style RL on SmolLM2-135M-Instruct, with the reasoning metrics measured before and after.

    base eval ─► GRPO (strict accuracy + format rewards, the R1 <think>/<answer> system prompt) ─► trained eval

Both evals are greedy on the same held-out 2-digit sums and report strict accuracy (the answer inside <answer>),
lenient accuracy (the last number in the text), format compliance and the reflection rate (aha.track.reasoning).
The run's report draws the reasoning curves step by step and lists the first aha moments; summary.json holds the
before/after table. The settings are ``recipes/r1-zero-smollm2.yaml``'s (a test keeps the two equal).

Why 2-digit sums: the answer is checkable exactly, the base model gets a few right (a group of samples then holds
some reward to learn from, where Countdown gives a 135M model almost none), and a short answer leaves most of the
token budget to the thinking whose length the report follows.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from aha.api import evaluate, final_model
from aha.config import RunConfig
from aha.rl import train_rl
from aha.track.metrics import read_metrics
from aha.track.report import load_jsonl, write_report

SHOWN = (
    "accuracy_strict",
    "accuracy_lenient",
    "format",
    "reflection_rate",
    "accuracy_reflecting",
    "length_correct",
    "length_wrong",
    "aha_rate",
)


def demo_config(seed: int = 0) -> RunConfig:
    """The recipe's settings (recipes/r1-zero-smollm2.yaml); why each speed lever is set as it is: README, "R1"."""
    return RunConfig.model_validate(
        {
            "stage": "rl",
            "model": {"name": "smollm2-135m"},
            "task": {
                "name": "arithmetic",
                "digits": 2,
                "operations": ["+"],
                "num_eval": 64,
                "template": "r1",
                "eval_reward": "accuracy",
                "response_prefix": "<think>",
            },
            "rewards": [
                {"name": "accuracy", "weight": 1.0, "args": {"strict": True}},
                {"name": "think_format", "weight": 0.5},
                {"name": "tag_count", "weight": 0.25},
            ],
            "rollout": {"group_size": 8, "temperature": 0.7, "max_new_tokens": 96},
            "rl": {"prompts_per_step": 4, "mu": 1, "beta": 0.0, "loss_type": "dr_grpo", "scale_rewards": "none"},
            "train": {"steps": 60, "lr": 1.0e-5, "micro_batch_size": 32, "precision": "fp32", "seed": seed},
            "log": {"eval_every": 20, "save_every": 20, "samples_per_step": 4},
        }
    )


def measure(model: str | Path, cfg: RunConfig) -> dict:
    """Greedy eval of ``model`` on the held-out rows: eval accuracy and the reasoning metrics, by short names."""
    res = evaluate(model, cfg.model_copy(update={"init_from": None}))
    out = {"accuracy": res["accuracy"], **{k.split("/", 1)[1]: v for k, v in res.items() if k.startswith("reasoning/")}}
    return {"n": res["n"], **out}


def run_demo(out: Path, seed: int = 0, cfg: RunConfig | None = None) -> dict:
    """Base eval, GRPO, trained eval; writes OUT/summary.json and OUT/report.html (``cfg``: other settings, e.g. a
    tiny model in tests). Returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or demo_config(seed)
    t_start = time.perf_counter()

    # ------------------------------------------------------------------ 1. the base model, before RL
    base = measure(cfg.model.name, cfg)
    print(f"[demo r1] base: {_line(base)}")

    # ------------------------------------------------------------------ 2. GRPO
    t0 = time.perf_counter()
    train_rl(cfg, out / "rl")
    t_rl = time.perf_counter() - t0
    step_times = [r["time/step_s"] for r in read_metrics(out / "rl") if r.get("time/step_s") is not None]

    # ------------------------------------------------------------------ 3. the trained model
    trained = measure(final_model(cfg, out / "rl"), cfg)
    print(f"[demo r1] trained: {_line(trained)}")

    # ------------------------------------------------------------------ summary, report
    moments = [s for s in load_jsonl(out / "rl" / "samples.jsonl") if s.get("aha")]
    summary = {
        "task": f"{cfg.task.digits}-digit sums, template {cfg.task.template}, greedy, {cfg.rollout.max_new_tokens} "
        f"new tokens, {base['n']} held-out prompts",
        "base": {k: base.get(k) for k in ("accuracy", *SHOWN)},
        "trained": {k: trained.get(k) for k in ("accuracy", *SHOWN)},
        "steps": cfg.train.steps,
        "seed": cfg.train.seed,
        "rl_time_s": t_rl,
        "s_per_step_median": statistics.median(step_times) if step_times else None,
        "aha_moments_logged": len(moments),
        "first_aha_step": moments[0]["step"] if moments else None,
        "wall_time_s": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out / "rl", out=out / "report.html", summary=summary)
    print(
        f"[demo r1] {summary['steps']} GRPO steps in {t_rl:.0f} s; wrote {out / 'summary.json'} and "
        f"{out / 'report.html'}"
    )
    return summary


def _line(m: dict) -> str:
    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    return (
        f"strict {fmt(m.get('accuracy_strict'))} · lenient {fmt(m.get('accuracy_lenient'))} · format "
        f"{fmt(m.get('format'))} · reflection {fmt(m.get('reflection_rate'))} (n={m['n']})"
    )
