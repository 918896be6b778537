"""Asynchronous rollouts (``rollout.asynchronous``) on Ray rollout workers: the workers sample the next steps' batches
while the trainer trains, a batch at most ``rl.max_staleness`` weight versions old, each token's loss weighted by the
truncated importance weight; reproducible under a seed, resumable from a checkpoint taken with batches under way.
Run by tests/test_ray.py in a loopback-only network namespace, like tests/ray_cases.py (whose Ray fixture it uses)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("ray")

from conftest import aha, merge  # noqa: E402
from ray_cases import final_weights, local_ray, read_rows  # noqa: E402, F401  (local_ray: this module's Ray instance)

ASYNC = {
    "rollout": {"asynchronous": True},
    "rl": {"mu": 2},
    "train": {"steps": 5},
    "log": {"eval_every": 0, "save_every": 2, "keep_checkpoints": 3},
    "distributed": {"backend": "ray", "rollout_workers": 2, "timeout_s": 120},
}
UNTIMED = ("time/", "throughput/")


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(UNTIMED)} for r in rows]


def train(write_config, out, extra: dict, *args) -> list[dict]:
    result = aha("train", write_config(extra, name=f"{out.name}.yaml"), "-o", out, *args)
    assert result.exit_code == 0, result.output
    return read_rows(out)


@pytest.mark.usefixtures("local_ray")
def test_asynchronous_rollouts_are_one_step_off_reproducible_and_resume_alike(tmp_path, write_config, digits_reward):
    """Two runs under one seed: the same metrics and the same weights, bit for bit, though sampling and training
    overlap (the weights each batch samples from are fixed when it is started, not by timing). Step 1's batch comes
    from the starting weights, as in a synchronous run (the same rewards; importance weights 1), every later one from
    the weights one update back (staleness 1, weights ≠ 1). Resumed from the step-2 checkpoint, written while step 3's
    batch was under way, the run takes steps 3–5 as it did uninterrupted, bit for bit."""
    cfg = merge(ASYNC, {"rewards": [{"name": digits_reward}]})
    first, again = train(write_config, tmp_path / "a", cfg), train(write_config, tmp_path / "b", cfg)
    assert untimed(again) == untimed(first)
    assert final_weights(tmp_path / "b", 5).keys() == final_weights(tmp_path / "a", 5).keys()
    for k, v in final_weights(tmp_path / "a", 5).items():
        assert final_weights(tmp_path / "b", 5)[k].equal(v), k

    steps = {r["step"]: r for r in first}
    assert [steps[s]["async/staleness"] for s in range(1, 6)] == [0, 1, 1, 1, 1]
    assert steps[1]["is/weight_mean"] == pytest.approx(1.0, abs=1e-5)  # the sampler's logprobs are the trainer's
    assert steps[1]["is/weight_max"] == pytest.approx(1.0, abs=1e-5)
    assert all(abs(steps[s]["is/weight_max"] - 1) > 1e-3 for s in range(2, 6))  # sampled one update back
    assert all(steps[s]["time/trainer_idle_s"] >= 0 and steps[s]["time/sampler_idle_s"] >= 0 for s in steps if s)

    sync = train(write_config, tmp_path / "sync", merge(cfg, {"rollout": {"asynchronous": False}}))
    assert sync[1]["reward/mean"] == first[1]["reward/mean"]  # step 1: the same batch
    assert "async/staleness" not in sync[1] and "is/weight_mean" not in sync[1]

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a", resumed)
    for step in (4, 5):
        shutil.rmtree(resumed / "checkpoints" / f"step-{step}", ignore_errors=True)
    rows = train(write_config, resumed, cfg, "--resume")
    assert untimed(rows) == untimed(first)
    for k, v in final_weights(tmp_path / "a", 5).items():
        assert final_weights(resumed, 5)[k].equal(v), k


@pytest.mark.usefixtures("local_ray")
def test_two_steps_ahead_with_rewards_in_the_trainer_and_a_worker_that_dies(
    tmp_path, write_config, digits_reward, monkeypatch
):
    """rl.max_staleness 2: the batches of two steps ahead are under way, so from step 3 each is two updates old;
    rewarded in this process (distributed.rewards: trainer); a worker that dies mid-run is restarted and its shard
    sampled again, from newer weights (the staleness reported is the oldest shard's), and the run completes."""
    marker = tmp_path / "worker-died"
    monkeypatch.setenv("AHA_TEST_WORKER_FAIL_AT", f"4:{marker}")  # worker 0 exits on its 4th sampling call
    cfg = merge(
        ASYNC,
        {
            "rewards": [{"name": digits_reward}],
            "rl": {"max_staleness": 2, "is_level": "sequence"},
            "distributed": {"rewards": "trainer"},
        },
    )
    rows = {r["step"]: r for r in train(write_config, tmp_path / "run", cfg)}
    assert marker.exists()
    assert [rows[s]["async/staleness"] for s in range(1, 6)] == [0, 1, 2, 2, 2]
    assert rows[5]["distributed/worker_restarts"] >= 1
    assert all(0 < rows[s]["is/weight_max"] <= 2.0 for s in range(1, 6))  # capped at rl.is_cap
