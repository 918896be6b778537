"""Crash safety of a real ``aha train`` process: SIGKILLed mid-step, or mid-way through writing a checkpoint, then
``--resume``d. The resumed run continues from the last complete checkpoint (a half-written one is never taken, and is
removed) and logs exactly the metrics of a run that was never interrupted — every key but wall-clock time, bit for
bit on CPU — with no step twice in metrics.jsonl or TensorBoard, and ends with the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DIGITS_REWARD, TINY, merge
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import TIMING, read_jsonl

from aha.checkpoint import list_checkpoints

AHA = Path(sys.executable).with_name("aha")

# the digits reward; with AHA_TEST_PAUSE_AT_CALL=N its N-th call (step N's: one call per step) touches the file
# AHA_TEST_PAUSE_MARKER and sleeps, so that the test kills a process that is mid-step (rolled out, not yet updated)
PAUSING_REWARD = (
    DIGITS_REWARD
    + """
import os, time
_digits, _calls = digits, [0]

def digits(prompts, completions, **kw):
    _calls[0] += 1
    if os.environ.get("AHA_TEST_PAUSE_AT_CALL") == str(_calls[0]):
        open(os.environ["AHA_TEST_PAUSE_MARKER"], "w").close()
        time.sleep(600)
    return _digits(prompts, completions, **kw)
"""
)


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


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs of 6 steps, a checkpoint every 2, TensorBoard on. ``rl``: GRPO with every piece of state a resume
    must restore (an SFT warm-up reference at β > 0, μ = 2, a decaying LR, two rewards); ``sft``: SFT on sums."""
    root = tmp_path_factory.mktemp("configs")
    (root / "pausing_reward.py").write_text(PAUSING_REWARD)
    (root / "sums.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n" for a in range(10) for b in range(10)
        )
    )
    common = {
        "train": {"steps": 6, "lr_schedule": "linear", "warmup_steps": 1},
        "log": {"save_every": 2, "eval_every": 2, "keep_checkpoints": 4, "tensorboard": True},
    }
    stages = {
        "rl": {
            "rewards": [{"name": "accuracy"}, {"name": f"{root / 'pausing_reward.py'}:digits"}],
            "rl": {"beta": 0.04, "mu": 2},
            "sft": {"imitation_steps": 3},
        },
        "sft": {"stage": "sft", "sft": {"path": str(root / "sums.jsonl")}, "train": {"batch_size": 8}},
    }
    for stage, extra in stages.items():
        (root / f"{stage}.yaml").write_text(yaml.safe_dump(merge(merge(TINY, common), extra), sort_keys=False))
    return {stage: root / f"{stage}.yaml" for stage in stages}


@pytest.fixture(scope="module")
def uninterrupted(configs, tmp_path_factory):
    """``uninterrupted(stage)``: the run directory of that stage's config run start to end (once per module)."""
    done = {}

    def get(stage: str) -> Path:
        if stage not in done:
            done[stage] = tmp_path_factory.mktemp("uninterrupted") / stage
            Aha(configs[stage], done[stage]).finish()
        return done[stage]

    return get


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


def tensorboard_steps(run: Path, tag: str = "lr") -> list[int]:
    """The steps TensorBoard shows for ``tag`` (it hides what a resumed run's purge_step says to)."""
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_killed_mid_step_resumes_from_the_last_checkpoint_with_identical_metrics(tmp_path, configs, uninterrupted):
    run, marker = tmp_path / "run", tmp_path / "paused"
    killed = Aha(configs["rl"], run, env={"AHA_TEST_PAUSE_AT_CALL": "3", "AHA_TEST_PAUSE_MARKER": str(marker)})
    killed.kill_when(marker.exists)  # step 3: rolled out and rewarded, not yet updated, nor logged
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]

    output = Aha(configs["rl"], run, "--resume").finish()
    assert f"resumed from {run / 'checkpoints' / 'step-2'} (step 2)" in output
    assert_same_run(run, uninterrupted("rl"), 6)
    assert tensorboard_steps(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("stage", ["rl", "sft"])
def test_killed_mid_checkpoint_write_resumes_from_the_complete_one_before(tmp_path, configs, uninterrupted, stage):
    # each checkpoint write pauses 2 s between the weights and the trainer state: the kill lands in step 4's
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    killed = Aha(configs[stage], run, env={"AHA_TEST_SLOW_CHECKPOINT": "2"})
    killed.kill_when(lambda: any((p / "model" / "model.safetensors").exists() for p in ckpts.glob(".tmp-step-4-*")))
    [partial] = ckpts.glob(".tmp-step-4-*")
    assert not (partial / "trainer_state.pt").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3, 4]  # logged before the save
    assert max(tensorboard_steps(run)) >= 3  # the dead process's events beyond step 2 reached the disk

    output = Aha(configs[stage], run, "--resume").finish()
    assert f"removed the half-written checkpoint {partial}" in output
    assert f"resumed from {ckpts / 'step-2'} (step 2)" in output
    assert not partial.exists()
    assert [p.name for p in list_checkpoints(run)] == ["step-2", "step-4", "step-6"]
    assert_same_run(run, uninterrupted(stage), 6)  # metrics.jsonl rewritten from step 2: steps 3 and 4 once each
    assert tensorboard_steps(run) == [1, 2, 3, 4, 5, 6]  # and TensorBoard hides the dead process's 3 and 4
