"""``aha demo``: the AlphaGo lesson, measured on a CPU in about two minutes.

A demonstrator ("teacher") adds 2-digit numbers, writing the sum least-significant digit first. It is
good but systematically imperfect, the way human play is: whenever the top column carries (the sum
reaches 100), it forgets that carry three times out of four. Then:

  1. SFT (imitation) on the teacher's traces — the student learns the teacher, habits included;
  2. GRPO from the SFT checkpoint with a verifiable reward (is the sum right?) — the student goes past
     its teacher, because the reward knows what the teacher does not.

Teacher, SFT model and RL model are scored on the same held-out problems with greedy decoding.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from aha.build import prepare
from aha.config import RunConfig
from aha.demos import imitate_then_rl
from aha.evaluation import evaluate
from aha.rl import train_rl
from aha.rollout.hf import HFEngine
from aha.sft import train_sft
from aha.tasks import build_task
from aha.track.report import write_report

CARRY_DROP = 0.75  # how often the teacher forgets the carry out of the top column
DIGITS = 2
CLASSES = ("no carry", "units carry only", "carry into hundreds")


def carry_class(a: int, b: int) -> str:
    """Which column carries, for 2-digit operands: the teacher's blind spot is 'carry into hundreds'.

    >>> carry_class(12, 45), carry_class(19, 45), carry_class(50, 60)
    ('no carry', 'units carry only', 'carry into hundreds')
    """
    if a + b >= 10**DIGITS:
        return CLASSES[2]
    if (a % 10) + (b % 10) >= 10:
        return CLASSES[1]
    return CLASSES[0]


def teacher_answer(a: int, b: int, rng: random.Random, carry_drop: float = CARRY_DROP) -> str:
    """The teacher's sum, least-significant digit first; it drops the carry into the hundreds with
    probability ``carry_drop``.

    >>> teacher_answer(50, 60, random.Random(0), carry_drop=1.0)  # true sum 110 → '011'; teacher: 10 → '01'
    '01'
    """
    total = a + b
    if carry_class(a, b) == CLASSES[2] and rng.random() < carry_drop:
        total -= 10**DIGITS
    return str(total)[::-1]


def demo_config(out: Path, seed: int) -> tuple[RunConfig, RunConfig]:
    """The embedded defaults: (SFT config, GRPO config). fp32 everywhere: the demo's numbers are the same on a CPU
    with fast bf16 (AMX, AVX512-BF16), where precision 'auto' may sample in bf16 (aha.modeling.precision)."""
    common: dict[str, Any] = {
        "model": {"name": "tiny:layers=2,hidden=128,heads=4,ff=512,ctx=32"},
        "task": {
            "name": "arithmetic",
            "digits": DIGITS,
            "operations": ["+"],
            "reverse_answer": True,
            "num_train": 20000,
            "num_eval": 500,
            "template": "plain",
            "seed": 1000 + seed,
        },
        "rollout": {"group_size": 8, "temperature": 1.0, "max_new_tokens": 5},
        "log": {"eval_every": 0, "save_every": 0, "samples_per_step": 4, "report": False, "tensorboard": False},
    }
    return imitate_then_rl(
        common,
        out,
        seed,
        # no lr warm-up: Adam's first full-size steps break the tiny model's symmetry much sooner
        sft_train={"steps": 600, "lr": 1e-3, "batch_size": 128, "micro_batch_size": 128},
        rl={"prompts_per_step": 32, "mu": 2, "beta": 0.0, "loss_type": "dapo"},
        rl_train={"steps": 80, "lr": 2e-4, "warmup_steps": 5, "micro_batch_size": 256},
        log={**common["log"], "eval_every": 20},
    )


def evaluate_model(model_dir: Path, cfg: RunConfig, rows: list[dict]) -> list[bool]:
    """Greedy correctness of a saved model on ``rows``."""
    device, amp, task, model, tok, template = prepare(cfg.model_copy(update={"init_from": model_dir}))
    return evaluate(HFEngine(model, tok, device, amp), tok, task, rows, template, cfg.rollout.max_new_tokens)["correct"]


def per_class(rows: list[dict], correct: list[bool]) -> dict[str, float]:
    classes: dict[str, list[bool]] = {c: [] for c in CLASSES}
    for row, ok in zip(rows, correct):
        classes[carry_class(row["a"], row["b"])].append(ok)
    return {c: round(sum(v) / len(v), 4) for c, v in classes.items() if v}


def run_demo(out: Path, seed: int = 0) -> dict:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sft_cfg, rl_cfg = demo_config(out, seed)
    task = build_task(sft_cfg.task)

    # ------------------------------------------------------------------ the teacher's traces
    rng = random.Random(seed)
    traces = [{"prompt": r["prompt"], "completion": teacher_answer(r["a"], r["b"], rng)} for r in task.train]
    (out / "teacher.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    held_out = task.eval
    teacher_correct = [teacher_answer(r["a"], r["b"], rng) == r["answer"] for r in held_out]
    print(f"[demo] teacher: {sum(teacher_correct) / len(held_out):.3f} on {len(held_out)} held-out sums")

    # ------------------------------------------------------------------ 1. imitation (SFT)
    t0 = time.perf_counter()
    train_sft(sft_cfg, out / "sft", rows=traces)
    t_sft = time.perf_counter() - t0
    sft_dir = out / "sft" / "checkpoints" / f"step-{sft_cfg.train.steps}" / "model"
    sft_correct = evaluate_model(sft_dir, sft_cfg, held_out)
    print(f"[demo] SFT: {sum(sft_correct) / len(held_out):.3f}  ({t_sft:.0f} s)")

    # ------------------------------------------------------------------ 2. RL (GRPO) from the SFT checkpoint
    t0 = time.perf_counter()
    train_rl(rl_cfg, out / "rl")
    t_rl = time.perf_counter() - t0
    rl_dir = out / "rl" / "checkpoints" / f"step-{rl_cfg.train.steps}" / "model"
    rl_correct = evaluate_model(rl_dir, rl_cfg, held_out)
    print(f"[demo] RL: {sum(rl_correct) / len(held_out):.3f}  ({t_rl:.0f} s)")

    # ------------------------------------------------------------------ summary, table, report
    acc = lambda c: sum(c) / len(c)  # noqa: E731
    summary = {
        "teacher_accuracy": acc(teacher_correct),
        "sft_accuracy": acc(sft_correct),
        "rl_accuracy": acc(rl_correct),
        "per_class": {
            name: per_class(held_out, c)
            for name, c in (("teacher", teacher_correct), ("sft", sft_correct), ("rl", rl_correct))
        },
        "class_counts": {c: sum(carry_class(r["a"], r["b"]) == c for r in held_out) for c in CLASSES},
        "n_eval": len(held_out),
        "seed": seed,
        "sft_time_s": t_sft,
        "rl_time_s": t_rl,
        "wall_time_s": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out / "rl", out=out / "report.html", summary=summary)
    print_table(summary)
    print(f"[demo] wrote {out / 'summary.json'} and {out / 'report.html'}")
    return summary


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    classes = list(summary["class_counts"])
    table = Table(
        title=f"held-out {DIGITS}-digit sums (n={summary['n_eval']}), greedy — {summary['wall_time_s']:.0f} s in all"
    )
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    for c in classes:
        table.add_column(f"{c} (n={summary['class_counts'][c]})", justify="right")
    for name in ("teacher", "sft", "rl"):
        row = summary["per_class"][name]
        table.add_row(
            {"teacher": "teacher (demonstrator)", "sft": "SFT (imitation)", "rl": "RL (GRPO)"}[name],
            f"{summary[f'{name}_accuracy']:.3f}",
            *(f"{row.get(c, float('nan')):.3f}" for c in classes),
        )
    Console().print(table)
