"""Where a run computes and from which random state: the seeds and the device a config names."""

from __future__ import annotations

import random

import numpy as np
import torch

from aha.errors import TrainingError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA GPU is visible (use 'auto' or 'cpu')")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise TrainingError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("train.device is 'mps' but no Apple GPU is available (use 'auto' or 'cpu')")
    return torch.device(name)
