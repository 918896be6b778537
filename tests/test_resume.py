"""Resume and failure: a run killed after a checkpoint and continued with ``resume=True`` logs the same
metrics and ends with the same weights as a run that was never interrupted; a step with a NaN loss is skipped
(weights and optimizer state untouched, counted in ``train/skipped_steps``), and ``train.max_skipped_steps`` of
them in a row stop the run with a message naming the step and the last intact checkpoint, which still loads.
(Killing a real ``aha train`` process with SIGKILL: tests/test_crash.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import aha.rl
import aha.rl.optimize
import aha.run
import aha.sft
from aha.checkpoint import list_checkpoints
from aha.cli import app
from aha.config import load_config
from aha.errors import TrainingError
from aha.optim import finite_step
from aha.rl import train_rl
from aha.sft import train_sft

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
    return load_config(
        write_config(
            {
                **lora,
                "rewards": [{"name": "accuracy"}, {"name": digits_reward}],
                "rl": {"beta": 0.04, "mu": 2, **ppo},
                "sft": {"imitation_steps": 3},
                "train": {"steps": 4, "lr_schedule": "linear", "warmup_steps": 1, "batch_size": 16},
                "log": {"save_every": 2, "eval_every": 2, "keep_checkpoints": 3},
            }
        )
    )


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path, resume_cfg, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    train_rl(resume_cfg, a)

    # run B: killed (Ctrl-C) right after its step-2 checkpoint is on disk
    real_save = aha.run.save_checkpoint

    def save_then_interrupt(run_dir, step, *args, **kwargs):
        path = real_save(run_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(aha.run, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_rl(resume_cfg, b)
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
    train_rl(resume_cfg, b, resume=True)
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
    critic_a, critic_b = (
        torch.load(r / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=False).get("critic") for r in (a, b)
    )
    assert (critic_a is None) == (resume_cfg.rl.algo == "grpo")
    if resume_cfg.model.lora.enabled:
        adapters = [
            torch.load(r / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=False)["adapter"] for r in (a, b)
        ]
        assert adapters[0].keys() == adapters[1].keys() and adapters[0]
        for name in adapters[0]:
            assert torch.equal(adapters[0][name], adapters[1][name]), name
    for name in critic_a or {}:
        assert torch.equal(critic_a[name], critic_b[name]), name


def test_resume_without_a_complete_checkpoint_is_a_clear_error(tmp_path, write_config):
    cfg = load_config(write_config())
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_rl(cfg, tmp_path / "fresh", resume=True)
    debris = tmp_path / "debris" / "checkpoints"
    (debris / ".tmp-step-6-123" / "model").mkdir(parents=True)
    (debris / "step-6" / "model").mkdir(parents=True)  # no trainer_state.pt: never finished
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_rl(cfg, tmp_path / "debris", resume=True)


def inject_nan(monkeypatch, nan_steps: set[int], seen: dict | None = None) -> None:
    """The RL loop's update, with a NaN loss at the steps in ``nan_steps`` (counted from 1 within this process);
    ``seen[step]`` records the policy's weights and the optimizer's state before and after each update."""
    real_update, real_loss = aha.rl.update, aha.rl.optimize.aggregate_loss
    now = {"step": 0}

    def loss(*args, **kwargs):
        return real_loss(*args, **kwargs) * (float("nan") if now["step"] in nan_steps else 1.0)

    def update(opt, batch):
        now["step"] += 1
        before = snapshot(opt)
        out = real_update(opt, batch)
        if seen is not None:
            seen[now["step"]] = before, snapshot(opt)
        return out

    monkeypatch.setattr(aha.rl.optimize, "aggregate_loss", loss)
    monkeypatch.setattr(aha.rl, "update", update)


def snapshot(opt) -> tuple[dict, dict]:
    """The optimizer step's policy weights and optimizer state, copied."""
    weights = {k: v.detach().clone() for k, v in opt.policy.state_dict().items()}
    adam = {(i, k): v.clone() for i, s in opt.optimizer.state_dict()["state"].items() for k, v in s.items()}
    return weights, adam


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_step_is_skipped_with_a_warning_and_the_run_finishes(
    tmp_path, write_config, digits_reward, monkeypatch, capsys
):
    cfg = load_config(
        write_config(
            {"rewards": [{"name": digits_reward}], "train": {"steps": 4}, "log": {"save_every": 2, "eval_every": 0}}
        )
    )
    seen = {}
    inject_nan(monkeypatch, {2}, seen)
    last = train_rl(cfg, tmp_path / "run")

    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1, 1]
    assert rows[1]["loss/policy"] is None and rows[1]["grad_norm"] is None  # NaN is logged as null
    assert all(math.isfinite(r["loss/policy"]) and r["grad_norm"] > 0 for r in rows[2:])
    assert last["train/skipped_steps"] == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: step 2: loss is nan: update skipped (1 in a row, train.max_skipped_steps=3)"]

    (weights_before, adam_before), (weights_after, adam_after) = seen[2]
    assert same(weights_before, weights_after) and same(adam_before, adam_after)  # the skipped step changed nothing
    (weights_before, adam_before), (weights_after, adam_after) = seen[3]
    assert not same(weights_before, weights_after) and not same(adam_before, adam_after)  # a taken one does
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-2", "step-4"]


def test_nan_steps_in_a_row_stop_with_step_and_last_intact_checkpoint(
    tmp_path, write_config, digits_reward, monkeypatch, capsys
):
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": digits_reward}],
                "train": {"steps": 5, "max_skipped_steps": 2},
                "log": {"save_every": 2, "eval_every": 0},
            }
        )
    )
    run = tmp_path / "run"
    inject_nan(monkeypatch, {1, 3, 4})  # step 2 is fine: the count in a row starts again
    with pytest.raises(TrainingError) as err:
        train_rl(cfg, run)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("stopped at step 4: the loss or gradient norm was not finite 2 steps in a row")
    assert f"last intact checkpoint: {run / 'checkpoints' / 'step-2'}" in message
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["train/skipped_steps"] for r in rows] == [1, 1, 2, 3]
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]  # the failing step is not saved

    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-2" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    result = CliRunner().invoke(app, ["eval", str(run / "checkpoints" / "step-2" / "model")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 20

    monkeypatch.undo()  # the fix: continue from step 2
    capsys.readouterr()
    last = train_rl(cfg, run, resume=True)
    assert f"resumed from {run / 'checkpoints' / 'step-2'} (step 2)" in capsys.readouterr().out
    assert math.isfinite(last["loss/policy"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["train/skipped_steps"] for r in rows] == [1, 1, 1, 1, 1]  # the count the step-2 checkpoint held


def test_sft_skips_a_nan_step(tmp_path, write_config, monkeypatch, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n" for a in range(10) for b in range(10)
        )
    )
    cfg = load_config(
        write_config(
            {
                "stage": "sft",
                "sft": {"path": str(data)},
                "train": {"steps": 3, "batch_size": 8},
                "log": {"eval_every": 0},
            }
        )
    )
    real_loss, calls = aha.sft.sft_loss, []

    def nan_at_step_2(*args, **kwargs):
        calls.append(1)
        return real_loss(*args, **kwargs) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(aha.sft, "sft_loss", nan_at_step_2)
    last = train_sft(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], r["train/skipped_steps"]) for r in rows] == [(1, 0), (2, 1), (3, 1)]
    assert rows[1]["loss/sft"] is None and math.isfinite(last["loss/sft"])
    assert "warning: step 2: loss is nan: update skipped" in capsys.readouterr().err


def test_finite_step_leaves_weights_and_adam_state_alone_on_a_non_finite_value():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)

    def backward(scale: float) -> tuple[float, float]:
        optimizer.zero_grad()
        loss = layer(torch.ones(1, 3)).sum() * scale
        loss.backward()
        return loss.item(), torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0).item()

    assert finite_step(optimizer, *backward(1.0)) is None  # Adam's moments exist from here on
    weights, adam = dict(layer.state_dict()), optimizer.state_dict()
    weights, adam = (
        {k: v.clone() for k, v in weights.items()},
        {(i, k): v.clone() for i, s in adam["state"].items() for k, v in s.items()},
    )
    loss, norm = backward(1.0)
    for args, problem in [
        ((float("nan"), norm), "loss is nan"),
        ((loss, float("inf")), "gradient norm is inf"),
        ((loss, norm, float("nan")), "gradient norm is nan"),
    ]:
        assert finite_step(optimizer, *args) == problem
        assert all(p.grad is None for p in layer.parameters())  # dropped: the next step starts clean
        assert same(weights, dict(layer.state_dict()))
        assert same(adam, {(i, k): v for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()})
        backward(1.0)
    assert finite_step(optimizer, *backward(1.0)) is None
    assert not same(weights, dict(layer.state_dict()))
