"""Multi-turn against single-turn at the same number of the model's tokens: what a turn costs, and what the turn cache
saves.

One model (a tiny Llama by default, or ``--model smollm2-135m``), fp32, the same prompts, fixed-length turns (min =
max new tokens, every turn counted as finished, so lengths do not drift and no episode ends early), three ways:

- ``single``:        one turn of T × K tokens (a one-shot completion);
- ``multi``:         K turns of T tokens, an environment answering each with a short line (gym-style), the engine
                     keeping its KV cache from turn to turn (:class:`aha.rollout.turn_cache.TurnCache`: a turn encodes
                     only the answer, and the model's last token);
- ``multi-reencode``: the same episodes with the cache dropped after each turn: every turn encodes the episode's
                     whole context again (what the compiled engine and remote engines without the cache do).

For each: the rollout's seconds (median of ``--repeats`` after one warm-up), and one training pass (forward and
backward of the policy over the packed batch: prompt, the model's tokens and the answers as context), which differs
only by the answers' extra context tokens.

    python benchmarks/episodes_speed.py [--turns 4] [--tokens 8] [--episodes 64] [--model tiny:...] [--greedy]

Prints one table, the ratios to ``single``, the CPU's name and the thread count. Run it with nothing else training on
the machine (``flock /tmp/aha-train.lock python benchmarks/episodes_speed.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from aha.env import build_environment
from aha.rl.forward import policy_forward
from aha.rollout import Rollouts, SamplingParams, pack_rollouts
from aha.rollout.episodes import EpisodeFormat, run_episodes
from aha.rollout.hf import HFEngine


class Echo:
    """Answers every turn with the same short line; never ends an episode (the turn cap does)."""

    def reset(self, seed=None, **row):
        return None

    def step(self, action):
        return "ok, go on", 0.0, False, False, {}


class FixedTurns(HFEngine):
    """Every turn is exactly ``max_new_tokens`` long (``min_new_tokens`` equal to it) and counts as finished, so
    an episode plays all its turns."""

    def rollouts(self, prompts, drawn, sampling) -> Rollouts:
        roll = super().rollouts(prompts, drawn, sampling)
        return Rollouts(roll.prompt_ids, roll.completion_ids, roll.logprobs, ["stop"] * len(roll))


class ReEncoding(FixedTurns):
    keeps_turn_cache = False


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load(name: str):
    """``(model, tokenizer)``: a tiny model over printable characters, or any model aha loads by name."""
    import string

    from aha.config import ModelConfig
    from aha.models import load_policy

    return load_policy(ModelConfig(name=name), string.printable[:94] + " \n")


def play(kind: str, model, tok, template: str, n: int, turns: int, tokens: int, greedy: bool = False):
    length = tokens * turns if kind == "single" else tokens
    engine = (ReEncoding if kind == "multi-reencode" else FixedTurns)(model, tok, torch.device("cpu"), None)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=length, min_new_tokens=length, greedy=greedy)
    fmt = EpisodeFormat(tok, template, build_environment(Echo, tokenizer=tok))
    rows = [{"prompt": f"Write {i} and go on: "} for i in range(n)]
    return run_episodes(engine, fmt, rows, 1, sampling, 1 if kind == "single" else turns, 100_000)


def train_pass(model, tok, roll: Rollouts) -> float:
    t = pack_rollouts(roll, tok.pad_token_id, torch.device("cpu"))
    start = time.perf_counter()
    logp, _, _ = policy_forward(model, None, t["input_ids"], t["attention_mask"], t["mask"].shape[1])
    (logp * t["mask"]).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8, help="model tokens per turn")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--greedy", action="store_true", help="greedy turns instead of sampling at temperature 1")
    parser.add_argument("--model", default="tiny:layers=2,hidden=128,heads=4,ff=512,ctx=1024")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load(args.model)
    template = "plain" if args.model.startswith("tiny") else "chat"
    got, played = {}, {}
    for kind in ("single", "multi", "multi-reencode"):
        times, train = [], []
        for _ in range(args.repeats + 1):
            model.eval()
            torch.manual_seed(0)  # the same draws each time: the two multi-turn ways must play the same episodes
            start = time.perf_counter()
            batch = play(kind, model, tok, template, args.episodes, args.turns, args.tokens, args.greedy)
            times.append(time.perf_counter() - start)
            model.train()
            train.append(train_pass(model, tok, batch.rollouts))
        roll = batch.rollouts
        played[kind] = roll
        got[kind] = {
            "rollout_s": statistics.median(times[1:]),
            "train_s": statistics.median(train[1:]),
            "model_tokens": statistics.mean(
                sum(m) for m in roll.completion_mask or [[1] * len(c) for c in roll.completion_ids]
            ),
            "context_tokens": statistics.mean(len(p) + len(c) for p, c in zip(roll.prompt_ids, roll.completion_ids)),
        }
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, fp32, {args.model}, {args.episodes} episodes")
    print(f"{'':15} {'rollout s':>10} {'train s':>8} {'model tok':>10} {'tokens':>8} {'rollout ×':>10}")
    for kind, m in got.items():
        print(
            f"{kind:15} {m['rollout_s']:10.3f} {m['train_s']:8.3f} {m['model_tokens']:10.1f} "
            f"{m['context_tokens']:8.1f} {m['rollout_s'] / got['single']['rollout_s']:10.2f}"
        )
    a, b = played["multi"], played["multi-reencode"]
    same = a.completion_ids == b.completion_ids
    gap = max(abs(x - y) for p, q in zip(a.logprobs, b.logprobs) for x, y in zip(p, q)) if same else float("nan")
    print(f"turn cache vs re-encoding: the same episodes: {same}; logprobs' largest difference {gap:.1e}")
    kept, fresh = got["multi"]["rollout_s"], got["multi-reencode"]["rollout_s"]
    print(
        f"{args.turns} turns of {args.tokens} tokens vs one of {args.turns * args.tokens}: the turn cache takes the "
        f"multi-turn rollout from {fresh:.3f} s to {kept:.3f} s (×{fresh / kept:.2f} faster)"
    )


if __name__ == "__main__":
    main()
