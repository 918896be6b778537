"""Where a think-demo student's worked steps go wrong: per step of the running total, how often its total is not the
true running sum, and how often it is not its own previous total plus the term (the step's own addition).

    python benchmarks/think_step_errors.py DIR SEED [--model sft|rl] [--samples 4]

``DIR`` is a finished ``aha demo think --out DIR --seed SEED``. Its SFT or RL model answers DIR's held-out sums
``--samples`` times each (temperature 1, as the demo evaluates); every first step of each term is read (a re-done
step is skipped). The two rates differ by the slips carried on from an earlier step: a student whose own additions
are sound but which copies the teacher's slips has a low second rate and a higher first one, and RL can sharpen
the slips away; a student that cannot carry out a late step has both high, and RL, which can only raise what the
student already samples, moves it little (docs/think.md, *Measured*).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

STEP = re.compile(r"([a-f])\+(\d)=(\d\d)")


def step_errors(rows: list[dict], texts: list[str]) -> dict[int, tuple[float, float, int]]:
    """``{step index: (share wrong against the true running sum, share wrong against its own previous total, n)}``."""
    from aha.demos.think_world import LABELS, terms_of

    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row, text in zip(rows, texts):
        terms, previous, seen = terms_of(row["prompt"]), 0, set()
        for m in STEP.finditer(text):
            i, total = LABELS.index(m.group(1)), int(m.group(3))
            if i < len(terms) and i not in seen:
                seen.add(i)
                c = counts[i]
                c[0] += total != sum(terms[: i + 1])
                c[1] += total != previous + terms[i]
                c[2] += 1
            previous = total
    return {i: (c[0] / c[2], c[1] / c[2], c[2]) for i, c in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--model", choices=("sft", "rl"), default="rl")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()

    from aha.demos import think

    s = think.settings(False)
    _, rl_cfg = think.demo_config(args.dir, args.seed, s)
    rows = [json.loads(line) for line in (args.dir / "eval.jsonl").read_text().splitlines()]
    model = think.checkpoint(args.dir / args.model, s["rl_steps"] if args.model == "rl" else s["sft_steps"])
    all_rows, texts = [], []
    for k in range(args.samples):
        sampled, _ = think.sample(model, rl_cfg, rows, greedy=False, seed=args.seed + 100 * k)
        all_rows += rows
        texts += sampled
    print(
        f"{args.dir} ({args.model}), {len(texts)} completions: step, wrong against the running sum / its own addition"
    )
    for i, (true, own, n) in step_errors(all_rows, texts).items():
        print(f"  step {i + 1}: {true:.3f} / {own:.3f}   (n = {n})")


if __name__ == "__main__":
    main()
