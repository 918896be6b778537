"""Resume and failure: a run killed after a checkpoint and continued with ``resume=True`` logs the same
metrics and ends with the same weights as a run that was never interrupted; a NaN loss stops the run
with a message naming the step and the last intact checkpoint, which still loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import aha.rl.optimize
import aha.run
from aha.checkpoint import list_checkpoints
from aha.config import load_config
from aha.runtime import TrainingError
from aha.rl import train_grpo

TIMING = ("time/", "throughput/")  # wall-clock keys: the only ones allowed to differ between runs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_row(got: dict, want: dict) -> None:
    got = {k: v for k, v in got.items() if not k.startswith(TIMING)}
    want = {k: v for k, v in want.items() if not k.startswith(TIMING)}
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-6), (want["step"], key, got[key], value)
        else:
            assert got[key] == value, (want.get("step"), key)


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step}" / "model" / "model.safetensors")


@pytest.fixture(params=["grpo", "ppo", "grpo-lora"])
def resume_cfg(write_config, digits_reward, request):
    # β > 0 after an SFT warm-up (a reference model that is neither the init nor a checkpoint), μ = 2
    # (ratios ≠ 1) and a decaying LR: every piece of trainer state — weights, reference, Adam moments,
    # schedule, data position, RNG — must survive the restart; under PPO also the critic and its optimizer
    # state, and the RNG that shuffles the minibatches
    # (LoRA: a checkpoint holds only the adapters, over base weights that hold the imitation steps)
    ppo = {"algo": "ppo", "num_minibatches": 2} if request.param == "ppo" else {}
    lora = {"model": {"lora": {"enabled": True, "r": 4}}} if request.param == "grpo-lora" else {}
    return load_config(write_config({
        **lora,
        "rewards": [{"name": "accuracy"}, {"name": digits_reward}],
        "rl": {"beta": 0.04, "mu": 2, **ppo},
        "sft": {"imitation_steps": 3},
        "train": {"steps": 4, "lr_schedule": "linear", "warmup_steps": 1, "batch_size": 16},
        "log": {"save_every": 2, "eval_every": 2, "keep_checkpoints": 3},
    }))


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path, resume_cfg, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    train_grpo(resume_cfg, a)

    # run B: killed (Ctrl-C) right after its step-2 checkpoint is on disk
    real_save = aha.run.save_checkpoint

    def save_then_interrupt(run_dir, step, *args, **kwargs):
        path = real_save(run_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(aha.run, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_grpo(resume_cfg, b)
    monkeypatch.setattr(aha.run, "save_checkpoint", real_save)
    assert [p.name for p in list_checkpoints(b)] == ["step-2"]

    # what a process killed later might leave: a half-written checkpoint, a step dir without trainer
    # state, a metrics line logged after the checkpoint and a line cut short
    (b / "checkpoints" / ".tmp-step-4-12345" / "model").mkdir(parents=True)
    (b / "checkpoints" / "step-3" / "model").mkdir(parents=True)
    (b / "checkpoints" / "step-3" / "model" / "config.json").write_text("{}")
    with (b / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "reward/mean": 123.0}) + "\n" + '{"step": 3, "reward/me')

    capsys.readouterr()
    train_grpo(resume_cfg, b, resume=True)
    assert f"resumed from {b / 'checkpoints' / 'step-2'} (step 2)" in capsys.readouterr().out

    rows_a, rows_b = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [0, 1, 2, 3, 4]  # no duplicates, nothing from the dead process
    assert [r["step"] for r in rows_a] == [0, 1, 2, 3, 4]
    assert rows_a[4]["grad_norm"] > 0 and rows_a[4]["kl"] > 0  # the comparison below is not of zeros
    if resume_cfg.rl.algo == "ppo":
        assert rows_a[4]["loss/value"] > 0 and rows_a[4]["value/grad_norm"] > 0
    assert rows_a[3]["lr"] != rows_a[4]["lr"]
    for row_a, row_b in zip(rows_a, rows_b):
        assert_same_row(row_b, row_a)
    assert read_jsonl(b / "samples.jsonl") == read_jsonl(a / "samples.jsonl")

    weights_a, weights_b = final_weights(a, 4), final_weights(b, 4)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    critic_a, critic_b = (torch.load(r / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=False).get("critic")
                          for r in (a, b))
    assert (critic_a is None) == (resume_cfg.rl.algo == "grpo")
    if resume_cfg.model.lora.enabled:
        adapters = [torch.load(r / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=False)["adapter"]
                    for r in (a, b)]
        assert adapters[0].keys() == adapters[1].keys() and adapters[0]
        for name in adapters[0]:
            assert torch.equal(adapters[0][name], adapters[1][name]), name
    for name in critic_a or {}:
        assert torch.equal(critic_a[name], critic_b[name]), name


def test_resume_without_a_complete_checkpoint_is_a_clear_error(tmp_path, write_config):
    cfg = load_config(write_config())
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_grpo(cfg, tmp_path / "fresh", resume=True)
    debris = tmp_path / "debris" / "checkpoints"
    (debris / ".tmp-step-6-123" / "model").mkdir(parents=True)
    (debris / "step-6" / "model").mkdir(parents=True)  # no trainer_state.pt: never finished
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_grpo(cfg, tmp_path / "debris", resume=True)


def test_nan_loss_stops_with_step_and_last_intact_checkpoint(tmp_path, write_config, digits_reward, monkeypatch):
    cfg = load_config(write_config({"rewards": [{"name": digits_reward}], "train": {"steps": 4},
                                    "log": {"save_every": 2, "eval_every": 0}}))
    run = tmp_path / "run"
    real_loss = aha.rl.optimize.aggregate_loss

    def nan_after_step_2(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if (run / "checkpoints" / "step-2").is_dir() else loss

    monkeypatch.setattr(aha.rl.optimize, "aggregate_loss", nan_after_step_2)
    with pytest.raises(TrainingError) as err:
        train_grpo(cfg, run)
    message = str(err.value)
    assert "\n" not in message
    assert "nan at step 3" in message
    assert f"last intact checkpoint: {run / 'checkpoints' / 'step-2'}" in message
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]

    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-2" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    monkeypatch.setattr(aha.rl.optimize, "aggregate_loss", real_loss)  # the fix: continue from step 2
    last = train_grpo(cfg, run, resume=True)
    assert math.isfinite(last["loss/policy"])
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
