"""Demos beyond the AlphaGo lesson (``aha demo NAME``): each module has ``run_demo(out, seed)``; and the pair of
configs the imitation-then-RL demos run (:func:`imitate_then_rl`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aha.config import RunConfig


def imitate_then_rl(
    common: dict[str, Any], out: Path, seed: int, sft_train: dict, rl: dict, rl_train: dict, **rl_sections: Any
) -> tuple[RunConfig, RunConfig]:
    """(SFT config, RL config) of a demo: SFT on ``out/teacher.jsonl``, then RL (its ``rl`` section, and any other
    sections in ``rl_sections`` over ``common``'s) from the SFT run's last checkpoint. Both seeded with ``seed`` and in
    fp32 everywhere: a demo's numbers are the same on a CPU with fast bf16, where precision 'auto' may sample in
    bf16 (aha.modeling.precision)."""
    pinned = {"seed": seed, "precision": "fp32"}
    sft = RunConfig.model_validate(
        {**common, "stage": "sft", "sft": {"path": str(out / "teacher.jsonl")}, "train": {**sft_train, **pinned}}
    )
    last = out / "sft" / "checkpoints" / f"step-{sft.train.steps}" / "model"
    rl_cfg = RunConfig.model_validate(
        {**common, "stage": "rl", "init_from": str(last), "rl": rl, **rl_sections, "train": {**rl_train, **pinned}}
    )
    return sft, rl_cfg
