"""``aha demo think``: the "aha moment", made to happen — RL that learns to think longer and to check itself.

The world (:mod:`aha.demos.think_world`): sums of 3 to 6 digits. Answered in one go they are hard for a tiny model;
with a running total written out (``"a3 b5 c7 d2="`` → ``"a+3=03 b+5=08 c+7=15 d+2=17"``) each step is one small
addition. The teacher answers every sum with a guess first (the first digit and about 5 for each other one), which
is rarely right; only 30% of the time does it then doubt the guess and work the sum out: ``"19 wait a+3=03 ..."``.
Its running total slips now and then, and after half of its slips it writes "wait", re-does the step and corrects
it. Then:

  1. SFT (imitation) on the teacher's traces: the student learns the teacher, habits included — a guess, then
     mostly the end of the answer, sometimes "wait" and the steps, a re-done step rarely;
  2. GRPO from the SFT checkpoint with one reward, is the final answer right: nothing rewards length, steps or
     reflection. Doubting the guess and working the sum out pays, so RL amplifies the habit the teacher had in a
     minority of its traces: completions grow longer as accuracy rises (R1-Zero's curve), and the "wait" after the
     first answer becomes the rule.

The behaviour is there, in a minority of the teacher's traces; RL amplifies it where it pays, and only there
(Oat-Zero's finding for real models: "There may not be an aha moment"). docs/think.md has what it measures.

Teacher, SFT and RL answer the same 600 held-out sums (no prompt shared with training), one completion each,
sampled at temperature 1 (greedy decoding of an imitation of a random habit always takes the likelier branch, here
the guess; greedy accuracy is beside it). ``ablations`` adds short RL runs from the same SFT model: length-normalised
GRPO (1/|o|) against Dr. GRPO, and the correctness reward with a length penalty.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from aha.build import prepare
from aha.config import RunConfig
from aha.data.templates import encode_text
from aha.demos import imitate_then_rl
from aha.rl import train_rl
from aha.rollout import SamplingParams
from aha.rollout.hf import HFEngine
from aha.sft import train_sft
from aha.track.metrics import read_metrics
from aha.track.reasoning import judge

from . import think_world as world

MAX_NEW_TOKENS = 64  # 6 terms worked out (41 characters) after a doubted guess (8), with a re-done step (12)
TEMPERATURE = 1.0  # sampling, in RL and in the held-out evaluation
# name → (what changes from the main RL run, one line for the report)
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "grpo": ({"rl": {"loss_type": "grpo"}}, "GRPO's 1/|o|: each completion's token mean, then the mean"),
    "dr_grpo": (
        {"rl": {"loss_type": "dr_grpo", "scale_rewards": "none"}},
        "Dr. GRPO: token sum / (completions × max tokens), advantages not divided by the group's std",
    ),
    "length_penalty": (
        {"rewards": [{"name": "aha.demos.think_world:correct"}, {"name": "aha.demos.think:length_penalty"}]},
        "the main run's loss, reward minus 0.5 × length / max tokens",
    ),
}
LENGTH_PENALTY = 0.5


def length_penalty(prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any) -> list:
    """The ablation's penalty: −:data:`LENGTH_PENALTY` × tokens / :data:`MAX_NEW_TOKENS` (characters without ids)."""
    lengths = [len(c) for c in completion_ids] if completion_ids is not None else [len(str(c)) for c in completions]
    return [-LENGTH_PENALTY * n / MAX_NEW_TOKENS for n in lengths]


def settings(quick: bool) -> dict:
    """Sizes of the demo; ``quick`` is a smoke-test setting (seconds, learns little)."""
    if quick:
        return {
            "model": "tiny:layers=1,hidden=32,heads=2,ff=64,ctx=96",
            "n_train": 400,
            "n_eval": 40,
            "sft_steps": 4,
            "rl_steps": 2,
            "ablation_steps": 1,
            "prompts_per_step": 4,
            "group_size": 4,
            "sft_lr": 1e-3,
            "rl_lr": 2e-4,
        }
    return {
        "model": "tiny:layers=3,hidden=128,heads=4,ff=512,ctx=96",
        "n_train": 20000,
        "n_eval": 600,  # 150 held-out sums of each length
        "sft_steps": 1000,  # seed 2: its worked answers right 0.34 of the time after 800 steps, 0.54 after 1,000
        "rl_steps": 60,
        "ablation_steps": 30,
        "prompts_per_step": 32,
        "group_size": 8,
        "sft_lr": 2e-3,  # 3e-3, near the edge (5e-3 failed), left some seeds' students unable to add: docs/think.md
        "rl_lr": 2e-4,
    }


def demo_config(out: Path, seed: int, s: dict) -> tuple[RunConfig, RunConfig]:
    """The embedded defaults: (SFT config, GRPO config), fp32 everywhere (the same numbers on any CPU)."""
    common: dict[str, Any] = {
        "model": {"name": s["model"]},
        "task": {
            "name": "dataset",
            "path": str(out / "train.jsonl"),
            "eval_path": str(out / "eval.jsonl"),
            "template": "plain",
            "eval_reward": "aha.demos.think_world:correct",
        },
        "rewards": [{"name": "aha.demos.think_world:correct"}],
        "rollout": {"group_size": s["group_size"], "temperature": TEMPERATURE, "max_new_tokens": MAX_NEW_TOKENS},
        "log": {
            "eval_every": 0,
            "save_every": 0,
            "samples_per_step": 8,
            "report": False,
            "tensorboard": False,
            "reasoning_metrics": True,
        },
    }
    return imitate_then_rl(
        common,
        out,
        seed,
        sft_train={
            "steps": s["sft_steps"],
            "lr": s["sft_lr"],
            "warmup_steps": 20,
            "lr_schedule": "cosine",
            "batch_size": 64,
            "micro_batch_size": 16,
            "group_by_length": True,  # guesses many to a pass, worked traces 16: 0.5x one padded batch's step time
        },
        rl={"prompts_per_step": s["prompts_per_step"], "mu": 1, "beta": 0.0, "loss_type": "dapo"},
        rl_train={
            "steps": s["rl_steps"],
            "lr": s["rl_lr"],
            "warmup_steps": 2,
            "micro_batch_size": 64,
            "group_by_length": True,  # RL's too, each micro-batch cut to its longest: 0.5-0.8x the training pass
        },
    )


def ablation_config(rl: RunConfig, name: str, steps: int) -> RunConfig:
    """The main RL config with one ablation's change, for ``steps`` steps."""
    data = rl.model_dump(mode="json")
    change = ABLATIONS[name][0]
    for section, value in change.items():
        data[section] = {**data[section], **value} if isinstance(value, dict) else value
    data["train"]["steps"] = steps
    return RunConfig.model_validate(data)


# ---------------------------------------------------------------- evaluation


def judged(rows: list[dict], completions: list[str], lengths: list[int]) -> list[dict]:
    """One record per completion: right, tokens, worked steps, reflection, aha moment (aha.track.reasoning)."""
    out = []
    for row, text, n in zip(rows, completions, lengths):
        j = judge(text, row["answer"], prompt=row["prompt"])
        out.append(
            {
                "prompt": row["prompt"],
                "completion": text,
                "terms": row["terms"],
                "right": bool(j.lenient_correct),
                "length": n,
                "steps": world.has_steps(text),
                "reflects": j.reflects,
                "doubts": world.doubted(text) is not None,
                "rechecks": world.rechecks(text),
                "aha": j.aha is not None,
                "corrects": world.corrects(text),
            }
        )
    return out


def sample(model_dir: Path, cfg: RunConfig, rows: list[dict], greedy: bool, seed: int) -> tuple[list[str], list[int]]:
    """One completion per row from a saved model (sampled at temperature 1, or greedy): texts and token counts."""
    device, amp, _, model, tok, _ = prepare(cfg.model_copy(update={"init_from": model_dir}))
    model.eval()
    engine = HFEngine(model, tok, device, amp)
    torch.manual_seed(10_000 + seed)  # the held-out sampling: apart from training's
    params = SamplingParams(temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS, greedy=greedy)
    texts, lengths = [], []
    for i in range(0, len(rows), 256):
        roll = engine.generate([encode_text(r["prompt"], tok) for r in rows[i : i + 256]], 1, params)
        texts += [tok.decode(c, skip_special_tokens=True) for c in roll.completion_ids]
        lengths += [len(c) for c in roll.completion_ids]
    return texts, lengths


def teacher_texts(rows: list[dict], rng: random.Random, p_doubt: float, p_slip: float) -> list[str]:
    """The teacher's answer to each row's sum (:func:`~aha.demos.think_world.teacher_trace`), drawn from ``rng``."""
    return [world.teacher_trace(world.terms_of(r["prompt"]), rng, p_doubt=p_doubt, p_slip=p_slip) for r in rows]


def teacher_records(rows: list[dict], seed: int, p_doubt: float = world.P_DOUBT, p_slip: float = world.P_SLIP) -> list:
    """The teacher's own answers to the held-out sums, judged as the models' are (a token a character, + EOS)."""
    texts = teacher_texts(rows, random.Random(20_000 + seed), p_doubt, p_slip)
    return judged(rows, texts, [len(t) + 1 for t in texts])


def scores(records: list[dict]) -> dict:
    """Accuracy, mean tokens, share with steps, reflection and aha rates, accuracy when reflecting or not, by terms."""

    def mean(xs: list) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    right = [r["right"] for r in records]
    return {
        "accuracy": mean(right),
        "length": mean([r["length"] for r in records]),
        "length_right": mean([r["length"] for r in records if r["right"]]),
        "length_wrong": mean([r["length"] for r in records if not r["right"]]),
        "steps_share": mean([r["steps"] for r in records]),
        "accuracy_with_steps": mean([r["right"] for r in records if r["steps"]]),
        "accuracy_without_steps": mean([r["right"] for r in records if not r["steps"]]),
        "reflection_rate": mean([r["reflects"] for r in records]),
        "doubt_rate": mean([r["doubts"] for r in records]),
        "recheck_rate": mean([r["rechecks"] for r in records]),
        "aha_rate": mean([r["aha"] for r in records]),
        "correction_rate": mean([r["corrects"] and r["right"] for r in records]),
        "accuracy_reflecting": mean([r["right"] for r in records if r["reflects"]]),
        "accuracy_not_reflecting": mean([r["right"] for r in records if not r["reflects"]]),
        "by_terms": {str(n): mean([r["right"] for r in records if r["terms"] == n]) for n in world.TERMS},
    }


def evaluate_model(model_dir: Path, cfg: RunConfig, rows: list[dict], seed: int) -> tuple[dict, list[dict]]:
    """Sampled scores (and the records) of a saved model on the held-out rows, with greedy accuracy beside them."""
    records = judged(rows, *sample(model_dir, cfg, rows, greedy=False, seed=seed))
    greedy = scores(judged(rows, *sample(model_dir, cfg, rows, greedy=True, seed=seed)))
    return {**scores(records), "greedy": {k: greedy[k] for k in ("accuracy", "length", "steps_share")}}, records


def series(run_dir: Path) -> dict:
    """The RL run's per-step curves from its metrics.jsonl: accuracy (the correctness reward's mean), mean
    completion length, reflection and aha rates of the training batch."""
    steps = [r for r in read_metrics(run_dir) if r.get("step", 0) > 0 and "reward/mean" in r]
    get = lambda key: [None if r.get(key) is None else round(r[key], 4) for r in steps]  # noqa: E731
    return {
        "step": [r["step"] for r in steps],
        "accuracy": get("reward/correct/mean"),
        "length": get("completions/mean_length"),
        "reflection_rate": get("reasoning/reflection_rate"),
        "aha_rate": get("reasoning/aha_rate"),
    }


def first_moments(run_dir: Path, limit: int = 5) -> list[dict]:
    """The RL run's first ``limit`` aha moments that corrected a step (:func:`~aha.demos.think_world.corrects`), as
    logged in its samples.jsonl (every aha moment of a batch is)."""
    path = run_dir / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rows = [r for r in rows if isinstance(r.get("aha"), dict) and world.corrects(str(r["completion"]))]
    marked = sorted(rows, key=lambda r: r["step"])
    return [{k: r[k] for k in ("step", "prompt", "completion", "aha")} for r in marked[:limit]]


def write_rows(out: Path, name: str, rows: list[dict]) -> None:
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def checkpoint(run_dir: Path, steps: int) -> Path:
    return run_dir / "checkpoints" / f"step-{steps}" / "model"


def run_demo(
    out: Path,
    seed: int = 0,
    quick: bool = False,
    ablations: bool = False,
    doubt: bool = True,
    p_slip: float = world.P_SLIP,
) -> dict:
    """The demo in ``out``; ``doubt=False``: the world whose teacher never blurts a guess before working a sum out (its
    only reflection is the re-done step); ``p_slip``: how often a step of the teacher's slips (default
    :data:`~aha.demos.think_world.P_SLIP`; docs/think.md measures the worlds)."""
    p_doubt = world.P_DOUBT if doubt else 0.0
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings(quick)
    train_rows, held_out = world.make_rows(s["n_train"], s["n_eval"], seed=1000 + seed)
    write_rows(out, "train", train_rows)
    write_rows(out, "eval", held_out)
    sft_cfg, rl_cfg = demo_config(out, seed, s)

    # ------------------------------------------------------------------ the teacher's traces
    texts = teacher_texts(train_rows, random.Random(seed), p_doubt, p_slip)
    traces = [{"prompt": r["prompt"], "completion": text} for r, text in zip(train_rows, texts)]
    write_rows(out, "teacher", traces)
    teacher = scores(teacher_records(held_out, seed, p_doubt, p_slip))
    print(
        f"[think] teacher: accuracy {teacher['accuracy']:.3f}, steps in {teacher['steps_share']:.2f}, "
        f"'wait' in {teacher['reflection_rate']:.3f} of {len(held_out)} held-out sums"
    )

    # ------------------------------------------------------------------ 1. imitation (SFT)
    t0 = time.perf_counter()
    train_sft(sft_cfg, out / "sft", rows=traces)
    t_sft = time.perf_counter() - t0
    sft, _ = evaluate_model(checkpoint(out / "sft", s["sft_steps"]), sft_cfg, held_out, seed)
    print(f"[think] SFT: accuracy {sft['accuracy']:.3f}, {sft['length']:.1f} tokens  ({t_sft:.0f} s)")

    # ------------------------------------------------------------------ 2. RL (GRPO, correctness only)
    t0 = time.perf_counter()
    train_rl(rl_cfg, out / "rl")
    t_rl = time.perf_counter() - t0
    rl, rl_records = evaluate_model(checkpoint(out / "rl", s["rl_steps"]), rl_cfg, held_out, seed)
    print(f"[think] RL: accuracy {rl['accuracy']:.3f}, {rl['length']:.1f} tokens  ({t_rl:.0f} s)")

    summary = make_summary(teacher, sft, rl, series(out / "rl"), first_moments(out / "rl"), s, seed, quick)
    summary["sft_time_s"], summary["rl_time_s"], summary["world"] = t_sft, t_rl, "doubt" if doubt else "steps"
    summary["p_slip"] = p_slip
    summary["demo_time_s"] = time.perf_counter() - t_start  # teacher, SFT, RL and their evaluations
    if ablations:
        summary["ablations"] = run_ablations(out, rl_cfg, held_out, s, seed)
    summary["wall_time_s"] = time.perf_counter() - t_start  # (with the ablations, where they ran)
    summary["cpu_time_s"] = time.process_time() - cpu_start  # (this process's, all threads: on a shared machine)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from .think_report import print_table, write_think_report

    write_think_report(out, summary)
    print_table(summary)
    print(f"[think] wrote {out / 'summary.json'} and {out / 'report.html'}")
    return summary


def run_ablations(out: Path, rl_cfg: RunConfig, held_out: list[dict], s: dict, seed: int) -> dict:
    """Each ablation: a short RL run from the same SFT model, its curves and its held-out scores."""
    results = {}
    for name in ABLATIONS:
        cfg = ablation_config(rl_cfg, name, s["ablation_steps"])
        t0 = time.perf_counter()
        train_rl(cfg, out / f"ablation-{name}")
        scored, _ = evaluate_model(checkpoint(out / f"ablation-{name}", cfg.train.steps), cfg, held_out, seed)
        results[name] = {**scored, "series": series(out / f"ablation-{name}"), "time_s": time.perf_counter() - t0}
        print(f"[think] ablation {name}: accuracy {scored['accuracy']:.3f}, {scored['length']:.1f} tokens")
    return results


def make_summary(teacher, sft, rl, curves, moments, s, seed, quick) -> dict:
    """summary.json: the headline keys, each model's scores in full, the RL run's curves and first aha moments."""
    return {
        "teacher_accuracy": teacher["accuracy"],
        "sft_accuracy": sft["accuracy"],
        "rl_accuracy": rl["accuracy"],
        "teacher_length": teacher["length"],
        "sft_length": sft["length"],
        "rl_length": rl["length"],
        "teacher_steps_share": teacher["steps_share"],
        "sft_steps_share": sft["steps_share"],
        "rl_steps_share": rl["steps_share"],
        "teacher_reflection_rate": teacher["reflection_rate"],
        "sft_reflection_rate": sft["reflection_rate"],
        "rl_reflection_rate": rl["reflection_rate"],
        "teacher_doubt_rate": teacher["doubt_rate"],
        "sft_doubt_rate": sft["doubt_rate"],
        "rl_doubt_rate": rl["doubt_rate"],
        "sft_recheck_rate": sft["recheck_rate"],
        "rl_recheck_rate": rl["recheck_rate"],
        "sft_aha_rate": sft["aha_rate"],
        "rl_aha_rate": rl["aha_rate"],
        "sft_correction_rate": sft["correction_rate"],
        "rl_correction_rate": rl["correction_rate"],
        "rl_accuracy_reflecting": rl["accuracy_reflecting"],
        "rl_accuracy_not_reflecting": rl["accuracy_not_reflecting"],
        "by_terms": {"teacher": teacher["by_terms"], "sft": sft["by_terms"], "rl": rl["by_terms"]},
        "scores": {"teacher": teacher, "sft": sft, "rl": rl},
        "rl_series": curves,
        "first_aha_moments": moments,
        "evaluation": f"{s['n_eval']} held-out sums ({s['n_eval'] // len(world.TERMS)} of each length), one "
        "completion each sampled at temperature 1 (greedy beside it); right = the last number is the sum",
        "n_eval": s["n_eval"],
        "seed": seed,
        "quick": quick,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m aha.demos.think [--out DIR] [--seed N] [--ablations] [--no-doubt] [--p-slip P]``: the demo, with the
    ablations if asked (they add about as long again as the demo; ``aha demo think`` runs it without them), in the
    world without doubted guesses, or with another slip rate, if asked."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aha.demos.think", description=main.__doc__)
    parser.add_argument("--out", default="runs/demo-think", help="where the runs, summary.json and report.html go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true", help="also the GRPO / Dr. GRPO / length-penalty runs")
    parser.add_argument(
        "--no-doubt", action="store_true", help="the world whose teacher never doubts a guess (docs/think.md)"
    )
    parser.add_argument("--p-slip", type=float, default=world.P_SLIP, help="how often a teacher's step slips")
    args = parser.parse_args(argv)
    if not 0 <= args.p_slip <= 1:
        parser.error(f"--p-slip {args.p_slip}: a probability, between 0 and 1")
    run_demo(Path(args.out), args.seed, ablations=args.ablations, doubt=not args.no_doubt, p_slip=args.p_slip)


if __name__ == "__main__":
    main()
