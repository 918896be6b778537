"""What ``train.group_by_length`` saves: SFT and RL steps on ``aha demo think``'s traces, with and without it.

    flock /tmp/aha-train.lock python benchmarks/group_by_length.py                # SFT, then RL from a short SFT model
    flock /tmp/aha-train.lock python benchmarks/group_by_length.py --rl-from DIR  # RL from a trained model (a demo's
                                                                                  # DIR/sft/checkpoints/step-N/model)

The think demo's batches mix short answers (a guess, ~3 tokens after a ~14-token prompt) with long ones (the worked
steps, ~45 tokens): padded together, most of a micro-batch of guesses is padding. Each variant runs the same steps on
the same data from the same weights, in this process, one after the other (fp32; ``time/train_s`` per step, the
first steps left out as warm-up):

- SFT: one padded batch of 64 (``micro_batch_size: 64``), micro-batches of 16 in the sampler's order, and
  ``group_by_length`` with 16 (like lengths together, each micro-batch no more tokens than 16 of the longest);
- RL (GRPO, 32 prompts × 8): the training pass on the whole padded batch (``micro_batch_size: 256``) against
  ``group_by_length`` with 64, each micro-batch cut to its own longest prompt and completion. The rollouts differ
  between the two runs only by the order of float sums in the update before them. A third run adds
  ``model.lean_activations: true``, which 'auto' leaves off for a model this small (the same numbers, more time).

It prints seconds per step and each variant's ratio to the first. RL's ratio depends on the mix of lengths its start
model writes: the 150-step default writes shorter answers than the demo's SFT model (docs/think.md, *Time*). Run it alone (two torch processes on 2 cores slow
each other): under the training lock.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

WARMUP = 3  # steps left out of the mean


def step_times(run_dir: Path) -> list[float]:
    from aha.track.metrics import read_metrics

    return [r["time/train_s"] for r in read_metrics(run_dir) if r.get("step", 0) > WARMUP and "time/train_s" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--rl-steps", type=int, default=12)
    parser.add_argument("--rl-from", type=Path, help="a trained model to start RL from (default: a 150-step SFT)")
    args = parser.parse_args()

    from aha.config import RunConfig
    from aha.demos import think, think_world
    from aha.modeling.precision import cpu_features
    from aha.rl import train_rl
    from aha.sft import train_sft

    print(f"CPU: {cpu_features()}")
    out = Path(tempfile.mkdtemp(prefix="aha-group-by-length-"))
    s = think.settings(quick=False)
    train_rows, held_out = think_world.make_rows(s["n_train"], s["n_eval"], seed=1000)
    think.write_rows(out, "train", train_rows)
    think.write_rows(out, "eval", held_out)
    sft_cfg, rl_cfg = think.demo_config(out, 0, s)
    rng = random.Random(0)
    traces = [
        {"prompt": r["prompt"], "completion": think_world.teacher_trace(think_world.terms_of(r["prompt"]), rng)}
        for r in train_rows
    ]

    def with_train(
        cfg: RunConfig, save_every: int = 0, init_from: Path | None = None, lean: bool | str = "auto", **train
    ) -> RunConfig:
        data = cfg.model_dump(mode="json")
        data["train"].update(train)
        data["model"]["lean_activations"] = lean
        data["log"].update(save_every=save_every, eval_every=0)
        if init_from is not None:
            data["init_from"] = str(init_from)
        return RunConfig.model_validate(data)

    results: list[tuple[str, float]] = []
    for name, micro, grouped in (
        ("SFT, one padded batch of 64", 64, False),
        ("SFT, micro-batches of 16", 16, False),
        ("SFT, group_by_length (16)", 16, True),
    ):
        cfg = with_train(sft_cfg, steps=args.sft_steps, micro_batch_size=micro, group_by_length=grouped)
        train_sft(cfg, out / f"sft-{micro}-{grouped}", rows=traces)
        results.append((name, statistics.mean(step_times(out / f"sft-{micro}-{grouped}"))))

    start = args.rl_from
    if start is None:  # a model that writes guesses and worked steps, as the demo's SFT model does
        cfg = with_train(sft_cfg, steps=150, save_every=150)
        train_sft(cfg, out / "sft-start", rows=traces)
        start = think.checkpoint(out / "sft-start", 150)
    rl_results: list[tuple[str, float]] = []
    for name, micro, grouped, lean in (
        ("RL, the whole padded batch (256)", 256, False, "auto"),
        ("RL, group_by_length (64), cut", 64, True, "auto"),
        ("RL, the same with lean activations", 64, True, True),
    ):
        cfg = with_train(
            rl_cfg, init_from=start, steps=args.rl_steps, micro_batch_size=micro, group_by_length=grouped, lean=lean
        )
        train_rl(cfg, out / f"rl-{micro}-{grouped}-{lean}")
        rl_results.append((name, statistics.mean(step_times(out / f"rl-{micro}-{grouped}-{lean}"))))

    print(json.dumps({"sft_steps": args.sft_steps, "rl_steps": args.rl_steps, "rl_from": str(start)}))
    for group in (results, rl_results):
        base = group[0][1]
        for name, t in group:
            print(f"{name:36s} {t:.3f} s/step   x{t / base:.2f}")


if __name__ == "__main__":
    main()
