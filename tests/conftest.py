"""Shared fixtures and helpers: a tiny GRPO run config (a 1-layer Llama on 1-digit sums; a step takes ~0.1 s on a CPU),
the ``aha`` command in-process and in a process of its own, two runs compared row by row and weight by weight, and a
tiny reward model's rankings and config."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

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


# ----------------------------------------------------------------------------- the aha command


def aha(*args):
    """``aha ARGS…`` in this process (typer's CliRunner): the result, with its exit code, stdout and stderr."""
    from aha.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    """The single line a user error prints on stderr (and checks that nothing else reached the user)."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("threads: ")]
    assert len(lines) == 1, result.output  # (a run says its thread count as it starts: aha.threads)
    assert result.stdout.strip() == "", result.output
    return lines[0]


AHA = Path(sys.executable).with_name("aha")


class Aha:
    """``aha train CONFIG -o OUT [--resume]`` in a process of its own, its output in OUT.N.log."""

    def __init__(self, config: Path, out: Path, *args: str, env: dict | None = None):
        self.out, self.log = out, out.with_name(f"{out.name}.{time.monotonic_ns()}.log")
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [str(AHA), "train", str(config), "-o", str(out), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def output(self) -> str:
        return self.log.read_text()

    def finish(self) -> str:
        """Wait for a good end; returns what the run printed."""
        assert self.proc.wait(timeout=300) == 0, self.output()
        return self.output()

    def kill_when(self, ready, timeout: float = 120) -> None:
        """SIGKILL the process as soon as ``ready()`` holds (checked every 10 ms)."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the run ended before it could be killed:\n{self.output()}"
            assert time.monotonic() < deadline, f"timed out waiting to kill:\n{self.output()}"
            time.sleep(0.01)
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL


# ----------------------------------------------------------------------------- two runs compared

TIMING = ("time/", "throughput/")  # wall-clock keys: the only ones allowed to differ between runs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_run(resumed: Path, uninterrupted: Path, last_step: int) -> None:
    """Every metrics row but its wall-clock keys is equal (==, not close), the samples and the final weights too."""
    rows_r, rows_u = read_jsonl(resumed / "metrics.jsonl"), read_jsonl(uninterrupted / "metrics.jsonl")
    assert [r["step"] for r in rows_r] == [r["step"] for r in rows_u] == list(range(last_step + 1))
    stage = yaml.safe_load((uninterrupted / "config.yaml").read_text())["stage"]
    # what is compared is not zeros (an RL run at β > 0 logs its KL; SFT has none)
    assert rows_u[-1]["grad_norm"] > 0 and (rows_u[-1]["kl"] > 0 if stage == "rl" else "kl" not in rows_u[-1])
    for row_r, row_u in zip(rows_r, rows_u):
        assert {k: v for k, v in row_r.items() if not k.startswith(TIMING)} == {
            k: v for k, v in row_u.items() if not k.startswith(TIMING)
        }
    if (uninterrupted / "samples.jsonl").exists():  # (RL's)
        assert read_jsonl(resumed / "samples.jsonl") == read_jsonl(uninterrupted / "samples.jsonl")
    weights_r, weights_u = (
        load_file(r / "checkpoints" / f"step-{last_step}" / "model" / "model.safetensors")
        for r in (resumed, uninterrupted)
    )
    assert weights_r.keys() == weights_u.keys()
    assert all(torch.equal(weights_r[k], weights_u[k]) for k in weights_u)


# ----------------------------------------------------------------------------- a tiny reward model

TINY_RM = "tiny:layers=1,hidden=32,heads=2,ff=64"


def sevens(path: Path, n: int = 300, k: int = 4, seed: int = 0) -> Path:
    """Rankings by a hidden preference: more 7s is better."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        comps = ["".join(rng.choice("0123456789") for _ in range(8)) for _ in range(k)]
        counts = [c.count("7") for c in comps]
        tiers = [[i for i in range(k) if counts[i] == v] for v in sorted(set(counts), reverse=True)]
        if len(tiers) < 2:
            continue
        rows.append({"prompt": "n:", "completions": comps, "ranking": tiers})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rm_config(data: Path, **rm):
    """A 40-step reward-model run of a 1-layer tiny model on the rankings in ``data`` (``rm``: reward_model.*)."""
    from aha.config import load_config

    return load_config(
        None,
        [],
        stage="reward_model",
        model={"name": TINY_RM},
        reward_model={"path": str(data), **rm},
        train={
            "steps": 40,
            "lr": 3e-3,
            "batch_size": 16,
            "micro_batch_size": 64,
            "device": "cpu",
            "precision": "fp32",
            "seed": 0,
        },
        log={"tensorboard": False, "report": False, "progress": False, "eval_every": 20, "save_every": 20},
    )
