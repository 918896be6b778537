"""Multi-turn against single-turn at the same number of the model's tokens: what a turn costs.

Two GRPO runs of the same tiny model, fp32, on the same prompts, with fixed-length turns (min_new_tokens =
max_new_tokens, so lengths do not drift as the model learns):

- single: one turn of T × K tokens;
- multi:  K turns of T tokens each, with an environment that answers every turn with a short line (gym-style), so an
  episode's completion is T × K model tokens plus (K − 1) short answers.

Each turn of an episode re-encodes its context in one batched prefill, then decodes with the KV cache; the cache is not
carried across turns. The ratio of the rollout times shows what that and the per-turn overheads (a generate call, the
environment's answers, re-tokenising) cost; the train phase differs only by the answers' extra context tokens.

    python benchmarks/episodes_speed.py [--turns 4] [--tokens 8] [--steps 6]

Prints one table (median s/step over the steps after the first) and the multi/single ratios, with the CPU's name and
the thread count. Run it with nothing else training on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

ECHO = '''
class Echo:
    """Answers every turn with the same short line; never ends an episode (env.max_turns does)."""

    def reset(self, seed=None, **row):
        return None

    def step(self, action):
        return "ok", 0.0, False, False, {}
'''

DIGITS = "def digits(prompts, completions, **kw):\n    return [sum(ch.isdigit() for ch in str(c)) / 30 for c in completions]\n"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(kind: str, turns: int, tokens: int, steps: int, root: Path) -> dict:
    from aha.config import load_config
    from aha.rl import train_rl

    (root / "echo.py").write_text(ECHO)
    (root / "digits.py").write_text(DIGITS)
    length = tokens if kind == "multi" else tokens * turns
    cfg = {
        "model": {"name": "tiny:layers=2,hidden=128,heads=4,ff=512,ctx=1024"},
        "task": {"name": "arithmetic", "digits": 2, "num_train": 200, "num_eval": 10},
        "rewards": [{"name": f"{root / 'digits.py'}:digits"}],
        "rollout": {"group_size": 8, "max_new_tokens": length, "min_new_tokens": length, "max_episode_tokens": 1000},
        "rl": {"prompts_per_step": 8},
        "train": {"steps": steps, "lr": 1e-3, "precision": "fp32", "device": "cpu", "seed": 0},
        "log": {"tensorboard": False, "report": False, "progress": False, "eval_every": 0, "save_every": 0},
    }
    if kind == "multi":
        cfg["env"] = {"factory": f"{root / 'echo.py'}:Echo", "max_turns": turns}
    out = root / kind
    train_rl(load_config(None, [], **cfg), out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r][1:]  # the first step warms caches up
    return {
        "rollout_s": statistics.median(r["time/rollout_s"] for r in rows),
        "train_s": statistics.median(r["time/train_s"] for r in rows),
        "step_s": statistics.median(r["time/step_s"] for r in rows),
        "model_tokens": statistics.median(r["completions/mean_length"] for r in rows),
        "episode_tokens": statistics.median(r.get("env/episode_tokens", r["completions/mean_length"]) for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8, help="model tokens per turn")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        got = {k: run(k, args.turns, args.tokens, args.steps, Path(tmp)) for k in ("single", "multi")}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, fp32, AHA_THREADS={os.environ.get('AHA_THREADS')}")
    print(f"{'':8} {'rollout s':>10} {'train s':>8} {'step s':>8} {'model tok':>10} {'episode tok':>12}")
    for kind, m in got.items():
        print(
            f"{kind:8} {m['rollout_s']:10.3f} {m['train_s']:8.3f} {m['step_s']:8.3f} "
            f"{m['model_tokens']:10.1f} {m['episode_tokens']:12.1f}"
        )
    s, m = got["single"], got["multi"]
    print(
        f"multi / single: rollout ×{m['rollout_s'] / s['rollout_s']:.2f}, train ×{m['train_s'] / s['train_s']:.2f}, "
        f"step ×{m['step_s'] / s['step_s']:.2f} ({args.turns} turns of {args.tokens} tokens vs one of "
        f"{args.turns * args.tokens})"
    )


if __name__ == "__main__":
    main()
