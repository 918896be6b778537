"""``aha demo rlhf``: reward hacking, made on a CPU in minutes — and caught.

  1. **SFT**: a tiny Llama learns to write short notes on a topic (:mod:`aha.demos.rlhf_world`'s corpus);
  2. **rankings**: it writes K notes per prompt; a simulated human ranks them by a hidden gold preference, with
     labeller noise (Plackett-Luce sampling from the gold scores);
  3. **reward model** (``stage: reward_model``): an ensemble of heads on the SFT trunk, trained on those rankings only;
  4. **GRPO against the reward model** (``rm:DIR``), four times from the same start with the same seed:
     unguarded (the guard only measures KL), guarded by a gold judge (logged with weight 0, never optimised), and
     twice with no gold (the real case): guarded by the samples' distance from the reward model's training data
     (``guard.signal: support_distance``), and by its ensemble heads' disagreement (``ensemble_std``). Each guarded
     run rolls back to its best step when it stops.

The final policy of every run is scored on held-out prompts (sampled as in training) by gold and by the reward
model. ``DIR/summary.json`` has the numbers, ``DIR/report.html`` the over-optimisation curve (proxy and gold against
√KL) and samples from the gold peak and from the end of the unguarded run.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from aha.algos.preference import ranked_pairs
from aha.checkpoint import newest_model
from aha.config import ModelConfig, RunConfig
from aha.demos import rlhf_world as world
from aha.demos.rlhf_report import (
    GOLD_LABEL,
    GUARD_LABELS,
    PROXY_LABEL,
    curves,
    guard_stop,
    write_demo_report,
)
from aha.models import load_policy
from aha.rewards.reward_model import RewardModelReward
from aha.rl import train_rl
from aha.rm import train_reward_model
from aha.rollout import SamplingParams
from aha.rollout.hf import sample_completions
from aha.sft import train_sft

GOLD = "aha.demos.rlhf_world:gold"
POLICY = "tiny:layers=2,hidden=64,heads=4,ff=256,ctx=96"
K = 4  # notes per ranking
GUARDS = ("unguarded", "gold", "support", "ensemble")  # the RL runs, rl-<name>


def settings(quick: bool) -> dict:
    """Sizes of the demo; ``quick`` is a short smoke-test setting (well under a minute)."""
    if quick:
        return {
            **FULL,
            "corpus": 1000,
            "sft_steps": 30,
            "rankings": 100,
            "rm_steps": 20,
            "rl_steps": 5,
            "prompts_per_step": 4,
            "eval_prompts": 8,
            "eval_samples": 4,
            "window": 2,
            "baseline_steps": 2,
            "min_steps": 2,
            "patience": 2,
        }
    return dict(FULL)


FULL = {
    "corpus": 20000,
    "sft_steps": 400,
    "rankings": 2000,
    "label_temperature": 0.2,
    "rm_steps": 500,
    "rl_steps": 100,
    "rl_lr": 1e-4,
    "prompts_per_step": 32,
    "eval_prompts": 128,
    "eval_samples": 8,
    "window": 4,
    "baseline_steps": 8,
    "min_steps": 8,
    "patience": 5,
}


def _log(**extra) -> dict:
    return {"eval_every": 0, "save_every": 0, "tensorboard": False, "report": False, "progress": True, **extra}


def sft_config(out: Path, seed: int, s: dict) -> RunConfig:
    return RunConfig.model_validate(
        {
            "stage": "sft",
            "model": {"name": POLICY},
            "task": {"name": "dataset", "path": str(out / "prompts.jsonl"), "template": "plain"},
            "sft": {"path": str(out / "corpus.jsonl")},
            "rollout": {"max_new_tokens": 64},
            "train": {
                "steps": s["sft_steps"],
                "lr": 2e-3,
                "warmup_steps": 10,
                "lr_schedule": "cosine",
                "batch_size": 64,
                "micro_batch_size": 64,
                "seed": seed,
                "precision": "fp32",
                "device": "cpu",
            },
            "log": _log(samples_per_step=0),
        }
    )


def rm_config(out: Path, seed: int, s: dict) -> RunConfig:
    return RunConfig.model_validate(
        {
            "stage": "reward_model",
            "init_from": str(out / "sft" / "model"),
            "reward_model": {
                "path": str(out / "rankings.jsonl"),
                "eval_fraction": 0.2,
                "loss": "pl",
                "num_heads": 8,
                "template": "plain",
                "max_length": 96,
            },
            "train": {
                "steps": s["rm_steps"],
                "lr": 1e-3,
                "batch_size": 16,
                "micro_batch_size": 64,
                "seed": seed,
                "precision": "fp32",
                "device": "cpu",
            },
            "log": _log(eval_every=max(1, s["rm_steps"] // 5)),
        }
    )


def rl_config(out: Path, seed: int, s: dict, guard: str) -> RunConfig:
    """GRPO against the reward model; ``guard``: one of :data:`GUARDS` — 'unguarded' (KL measured only), 'gold',
    'support' or 'ensemble'."""
    rm = f"rm:{out / 'rm' / 'model'}"
    g = {"enabled": True, "action": "stop"}  # unguarded: no signal configured, so it only measures KL
    if guard not in GUARDS:
        raise ValueError(f"guard must be one of {GUARDS}, got {guard!r}")
    if guard != "unguarded":
        g = {
            "enabled": True,
            "action": "rollback",
            "window": s["window"],
            "patience": s["patience"],
            "min_steps": s["min_steps"],
            "baseline_steps": s["baseline_steps"],
            "proxy": PROXY_LABEL,
            **(
                {"gold": GOLD_LABEL}
                if guard == "gold"
                else {
                    "disagreement": PROXY_LABEL,
                    "signal": "ensemble_std" if guard == "ensemble" else "support_distance",
                }
            ),
        }
    return RunConfig.model_validate(
        {
            "stage": "rl",
            "init_from": str(out / "sft" / "model"),
            "task": {"name": "dataset", "path": str(out / "prompts.jsonl"), "template": "plain"},
            "rewards": [
                {"name": rm, "weight": 1.0, "label": PROXY_LABEL},
                {"name": GOLD, "weight": 0.0, "label": GOLD_LABEL},
            ],
            "rollout": {"group_size": 8, "temperature": 1.0, "max_new_tokens": 64},
            "rl": {"prompts_per_step": s["prompts_per_step"], "mu": 1, "beta": 0.0, "loss_type": "dapo"},
            "train": {
                "steps": s["rl_steps"],
                "lr": s["rl_lr"],
                "micro_batch_size": 128,
                "seed": seed,
                "precision": "fp32",
                "device": "cpu",
            },
            "log": _log(samples_per_step=8),
            "guard": g,
        }
    )


# ============================================================================ stages


def write_inputs(out: Path, seed: int, s: dict) -> None:
    """The SFT corpus and the prompts RL trains on (every topic)."""
    rows = world.corpus(s["corpus"], seed)
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [{"prompt": world.prompt_for(t), "answer": ""} for t in world.TOPICS]
    (out / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts * 4))


def sample_notes(model_dir: Path, prompts: list[str], n: int, seed: int) -> list[list[str]]:
    """``n`` notes per prompt from the model in ``model_dir``, sampled at temperature 1 (as RL samples)."""
    import torch

    torch.manual_seed(seed)
    model, tok = load_policy(ModelConfig(name=str(model_dir)), init_from=model_dir)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=64)
    prompt_ids = [tok(p).input_ids for p in prompts]
    return sample_completions(model, tok, prompt_ids, n, sampling, torch.device("cpu"), batch=32)


def write_rankings(out: Path, sft_dir: Path, seed: int, s: dict) -> float:
    """The simulated human ranks K notes of the SFT policy per prompt; returns how often its pairwise order agrees
    with the gold order (the labels' own noise ceiling)."""
    rng = random.Random(seed + 7)
    prompts = [world.prompt_for(rng.choice(world.TOPICS)) for _ in range(s["rankings"])]
    groups = sample_notes(sft_dir, prompts, K, seed)
    rows, agree, pairs = [], 0, 0

    for prompt, notes in zip(prompts, groups):
        ranking = world.simulate_ranking(notes, rng, s["label_temperature"])
        if len(ranking) < 2:
            continue
        for a, b in ranked_pairs(ranking):
            ga, gb = world.gold_score(notes[a]), world.gold_score(notes[b])
            if ga != gb:
                agree += ga > gb
                pairs += 1
        rows.append({"prompt": prompt, "completions": notes, "ranking": ranking})
    (out / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return agree / max(1, pairs)


def score_policy(model_dir: Path, rm_dir: Path, seed: int, s: dict) -> dict:
    """Gold and proxy (the reward model's ensemble mean) of the policy's notes on held-out prompts (the topics,
    each ``eval_samples`` times, at temperature 1), with a few of its notes."""
    rng = random.Random(10_000 + seed)
    prompts = [world.prompt_for(rng.choice(world.TOPICS)) for _ in range(s["eval_prompts"])]
    groups = sample_notes(model_dir, prompts, s["eval_samples"], seed + 1)
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_c = [c for g in groups for c in g]
    gold = world.gold(flat_p, flat_c)
    proxy = RewardModelReward(rm_dir)(flat_p, flat_c)
    n = len(flat_c)
    return {
        "gold": sum(gold) / n,
        "proxy": sum(proxy) / n,
        "n": n,
        "mean_chars": sum(len(c) for c in flat_c) / n,
        "samples": [
            {"prompt": p, "completion": c, "gold": g, "proxy": r}
            for p, c, g, r in list(zip(flat_p, flat_c, gold, proxy))[:6]
        ],
    }


# ============================================================================ the demo


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> dict:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings(quick)
    times: dict[str, float] = {}
    write_inputs(out, seed, s)

    # ------------------------------------------------------------------ 1. SFT: a writer of short notes
    t0 = time.perf_counter()
    sft_cfg = sft_config(out, seed, s)
    train_sft(sft_cfg, out / "sft-run")
    sft_dir = out / "sft" / "model"
    _copy_model(newest_model(out / "sft-run"), sft_dir)
    times["sft_s"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ 2. the simulated human ranks its notes
    t0 = time.perf_counter()
    label_agreement = write_rankings(out, sft_dir, seed, s)
    times["rankings_s"] = time.perf_counter() - t0
    print(
        f"[demo] {s['rankings']} rankings of {K} notes; the labeller agrees with gold on {label_agreement:.3f} of pairs"
    )

    # ------------------------------------------------------------------ 3. the reward model, from rankings only
    t0 = time.perf_counter()
    rm_last = train_reward_model(rm_config(out, seed, s), out / "rm")
    times["rm_s"] = time.perf_counter() - t0
    rm_dir = out / "rm" / "model"
    print(f"[demo] reward model: held-out pairwise accuracy {rm_last.get('eval/pairwise_accuracy', float('nan')):.3f}")

    # ------------------------------------------------------------------ 4. GRPO against it: unguarded, then guarded
    runs = {}
    for name in GUARDS:
        t0 = time.perf_counter()
        train_rl(rl_config(out, seed, s, name), out / f"rl-{name}")
        times[f"rl_{name}_s"] = time.perf_counter() - t0
        runs[name] = score_policy(newest_model(out / f"rl-{name}"), rm_dir, seed, s)
        print(f"[demo] {name}: final gold {runs[name]['gold']:.3f}, proxy {runs[name]['proxy']:.3f}")
    start = score_policy(sft_dir, rm_dir, seed, s)

    # ------------------------------------------------------------------ summary and report
    curve = curves(out / "rl-unguarded", GOLD_LABEL, PROXY_LABEL, s["window"])
    peak = max(range(len(curve["gold_smooth"])), key=curve["gold_smooth"].__getitem__)
    summary = {
        "seed": seed,
        "quick": quick,
        "rm_accuracy": rm_last.get("eval/pairwise_accuracy"),
        "rm_top1_accuracy": rm_last.get("eval/top1_accuracy"),
        "rm_ensemble_std": rm_last.get("eval/ensemble_std"),
        "label_agreement_with_gold": label_agreement,
        "gold_start": start["gold"],
        "proxy_start": start["proxy"],
        # the unguarded run's curve (moving averages over guard.window steps of the training batches)
        "gold_peak": curve["gold_smooth"][peak],
        "gold_peak_step": curve["steps"][peak],
        "gold_peak_sqrt_kl": curve["sqrt_kl"][peak],
        "proxy_at_gold_peak": curve["proxy_smooth"][peak],
        "gold_end_unguarded_curve": curve["gold_smooth"][-1],
        "proxy_end_unguarded_curve": curve["proxy_smooth"][-1],
        "sqrt_kl_end_unguarded": curve["sqrt_kl"][-1],
        "unguarded_steps": curve["steps"][-1],
        # every run's final policy, scored on fresh samples
        "gold_final_unguarded": runs["unguarded"]["gold"],
        "proxy_final_unguarded": runs["unguarded"]["proxy"],
        "gold_final_guarded": runs["gold"]["gold"],
        "proxy_final_guarded": runs["gold"]["proxy"],
        "gold_final_support_guarded": runs["support"]["gold"],
        "proxy_final_support_guarded": runs["support"]["proxy"],
        "gold_final_ensemble_guarded": runs["ensemble"]["gold"],
        "proxy_final_ensemble_guarded": runs["ensemble"]["proxy"],
        **{f"guard_{name}": guard_stop(out / f"rl-{name}", curve) for name in GUARDS[1:]},
        "times_s": times,
        "wall_time_s": time.perf_counter() - t_start,
    }
    # the gold-guarded run's own peak: its best smoothed gold before it stopped (the unguarded peak if it never did)
    summary["gold_peak_guarded_run"] = (summary["guard_gold"] or {}).get("gold_at_best", summary["gold_peak"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_demo_report(out, summary, curve, runs)
    print_table(summary)
    print(f"[demo] wrote {out / 'summary.json'} and {out / 'report.html'}")
    return summary


def _copy_model(src: Path, dst: Path) -> None:
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"RLHF demo, seed {summary['seed']} — reward model held-out pairwise accuracy "
        f"{summary['rm_accuracy']:.3f}; {summary['wall_time_s']:.0f} s in all"
    )
    for col in ("policy", "gold", "proxy (reward model)", "stopped at step"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    table.add_row("SFT (start)", f"{summary['gold_start']:.3f}", f"{summary['proxy_start']:.3f}", "")
    table.add_row(
        f"unguarded, gold peak (step {summary['gold_peak_step']})",
        f"{summary['gold_peak']:.3f}",
        f"{summary['proxy_at_gold_peak']:.3f}",
        "",
    )
    table.add_row(
        "unguarded, end",
        f"{summary['gold_final_unguarded']:.3f}",
        f"{summary['proxy_final_unguarded']:.3f}",
        str(summary["unguarded_steps"]),
    )
    for key, label in GUARD_LABELS.items():
        stop = summary[f"guard_{key}"]
        final = summary["gold_final_guarded" if key == "gold" else f"gold_final_{key}_guarded"]
        proxy = summary["proxy_final_guarded" if key == "gold" else f"proxy_final_{key}_guarded"]
        where = f"{stop['step']} (rolled back to {stop['best_step']})" if stop else "never"
        table.add_row(label, f"{final:.3f}", f"{proxy:.3f}", where)
    table.caption = (
        f"gold guard: its own peak (smoothed gold at its best step) {summary['gold_peak_guarded_run']:.3f}; "
        "gold and proxy of each final policy on fresh samples, the peak from the unguarded run's curve"
    )
    Console().print(table)
