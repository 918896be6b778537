"""Shared fixtures: a tiny GRPO run config (a 1-layer Llama on 1-digit sums; a step takes ~0.1 s on a CPU)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

TINY = {
    "model": {"name": "tiny:layers=1,hidden=32,heads=2,ff=64"},
    "task": {"name": "arithmetic", "digits": 1, "num_train": 200, "num_eval": 20},
    "rollout": {"group_size": 4, "max_new_tokens": 3},
    "rl": {"prompts_per_step": 4},
    "train": {"steps": 2, "lr": 1e-3, "precision": "fp32", "device": "cpu", "seed": 0},
    "log": {"tensorboard": False, "report": False, "progress": False, "eval_every": 2, "save_every": 2},
}

# A dense reward with spread inside each group, so advantages, the loss and the gradients are non-zero
# (a random tiny model almost never gets a sum right, which would leave accuracy at 0 everywhere).
DIGITS_REWARD = (
    "def digits(prompts, completions, **kw):\n    return [sum(ch.isdigit() for ch in c) / 3 for c in completions]\n"
)


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated section by section with ``extra`` (nested dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_config(tmp_path: Path):
    """``write_config({"train": {"steps": 4}})`` → path of a YAML file: TINY with those changes."""

    def write(extra: dict | None = None, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(merge(TINY, extra or {}), sort_keys=False))
        return path

    return write


@pytest.fixture
def digits_reward(tmp_path: Path) -> str:
    """A reward spec (``path/to/file.py:digits``) for :data:`DIGITS_REWARD`."""
    path = tmp_path / "digits_reward.py"
    path.write_text(DIGITS_REWARD)
    return f"{path}:digits"
