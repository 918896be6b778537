"""Crash safety of a real ``aha train`` process: SIGKILLed mid-step, or mid-way through writing a checkpoint, then
``--resume``d. The resumed run continues from the last complete checkpoint (a half-written one is never taken, and is
removed) and logs exactly the metrics of a run that was never interrupted — every key but wall-clock time, bit for
bit on CPU — with no step twice in metrics.jsonl or TensorBoard, and ends with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DIGITS_REWARD, TINY, Aha, assert_same_run, merge, read_jsonl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aha.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow  # eight `aha train` processes: about a minute on 2 cores

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
    """``uninterrupted(stage)``: the run directory of that stage's config run start to end, once per module. Both
    runs start at once, in processes of their own, while the tests kill and resume theirs (each waits on its first
    reader)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    running = {stage: Aha(configs[stage], root / stage) for stage in configs}
    done: dict[str, Path] = {}

    def get(stage: str) -> Path:
        if stage not in done:
            running[stage].finish()
            done[stage] = running[stage].out
        return done[stage]

    yield get
    for run in running.values():  # a test that failed before reading one leaves nothing running
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


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
