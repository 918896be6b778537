"""Ray rollout workers (``distributed.backend: ray``): they sample what the in-process engine samples from the same
weights, follow every sync, and survive a worker that dies mid-run. Run by tests/test_ray.py inside a network
namespace that has only the loopback interface (Ray's servers listen on every interface they see), where a local
Ray instance is started by these tests and stopped after them."""

from __future__ import annotations

import json

import pytest
import torch

ray = pytest.importorskip("ray")

from aha.distributed.ray_engine import RayEngine  # noqa: E402
from aha.models import build_tiny  # noqa: E402
from aha.rollout import SamplingParams  # noqa: E402
from aha.rollout.hf import HFEngine  # noqa: E402
from test_cli import aha  # noqa: E402

ALPHABET = "0123456789+="


@pytest.fixture(scope="module")
def local_ray():
    import os
    import socket

    assert [name for _, name in socket.if_nameindex()] == ["lo"], "run these through tests/test_ray.py"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()


def prompts(tok, n: int) -> list[list[int]]:
    return [tok(f"{i % 10}+{(3 * i) % 10}=").input_ids for i in range(n)]


def test_workers_sample_what_the_trainer_would_and_follow_each_sync(local_ray):
    policy, tok = build_tiny("tiny:layers=1,hidden=32,heads=2,ff=64", ALPHABET, seed=0)
    local = HFEngine(policy, tok, torch.device("cpu"), None)
    remote = RayEngine(policy, tok, workers=2, timeout_s=120)
    greedy = SamplingParams(max_new_tokens=4, greedy=True)
    try:
        assert remote.sync(policy) == 1
        batch = prompts(tok, 5)  # 5 prompts over 2 workers: shards of 3 and 2, joined in order
        a, b = local.generate(batch, 1, greedy), remote.generate(batch, 1, greedy)
        assert b.completion_ids == a.completion_ids and b.finish_reasons == a.finish_reasons
        for la, lb in zip(a.logprobs, b.logprobs):
            torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), atol=1e-5, rtol=1e-5)
        with torch.no_grad():  # the trainer's update: the workers must follow it after a sync, not before
            for p in policy.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        stale = remote.generate(batch, 1, greedy)
        assert stale.logprobs == b.logprobs
        assert remote.sync(policy) == 2
        fresh, moved = remote.generate(batch, 1, greedy), local.generate(batch, 1, greedy)
        assert fresh.completion_ids == moved.completion_ids
        for la, lb in zip(moved.logprobs, fresh.logprobs):
            torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), atol=1e-5, rtol=1e-5)
        # sampled (not greedy): n completions per prompt, grouped, and reproducible from the trainer's seed
        sampled = SamplingParams(max_new_tokens=4, temperature=1.0)
        torch.manual_seed(7)
        first = remote.generate(batch, 3, sampled)
        torch.manual_seed(7)
        again = remote.generate(batch, 3, sampled)
        assert len(first) == 15 and first.completion_ids == again.completion_ids
        assert first.prompt_ids[::3] == batch
    finally:
        remote.close()


def test_a_rollout_worker_that_dies_mid_run_is_restarted_and_the_run_completes(local_ray, tmp_path, write_config,
                                                                                monkeypatch):
    marker = tmp_path / "worker-died"
    monkeypatch.setenv("AHA_TEST_WORKER_FAIL_AT", f"3:{marker}")  # worker 0's process exits on its 3rd sampling call
    cfg = write_config({"train": {"steps": 4}, "distributed": {"backend": "ray", "rollout_workers": 2,
                                                               "timeout_s": 120}})
    result = aha("train", cfg, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert marker.exists()  # it really died
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["distributed/worker_restarts"] >= 1
    assert all(r["completions/mean_length"] > 0 for r in rows if "completions/mean_length" in r)


def read_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step}" / "model" / "model.safetensors")


# One process and two ranks add the same gradients in another order and forward other micro-batches (float rounding
# differs); Adam divides by √v + ε, which scales such a difference in a gradient near 0 up to lr·δ/ε in the weights.
# Measured: see README "Scale out on Ray" (the test prints it with -s).
RTOL, ATOL = 1e-5, 1e-6  # metrics each step
W_RTOL, W_ATOL = 1e-4, 1e-5  # weights after the run


def assert_same_updates(got, want, steps: range) -> float:
    """Step by step: the same rollouts (rewards) and the same update (loss, gradient norm, clip ratio, KL, lr).
    Returns the largest relative difference of those metrics."""
    rows_g, rows_w = {r["step"]: r for r in read_rows(got)}, {r["step"]: r for r in read_rows(want)}
    pairs = [(step, key, rows_g[step][key], rows_w[step][key]) for step in steps
             for key in ("loss/policy", "grad_norm", "clip_ratio", "approx_kl", "kl", "lr")]
    worst = max(abs(g - w) / max(abs(w), 1e-30) for _, _, g, w in pairs)
    print(f"\n{got.name} vs {want.name}: metrics max rel. difference {worst:.1e}")
    for step in steps:
        g, w = rows_g[step], rows_w[step]
        assert g["reward/mean"] == w["reward/mean"] and g["completions/mean_length"] == w["completions/mean_length"]
    for step, key, g, w in pairs:
        assert g == pytest.approx(w, rel=RTOL, abs=ATOL), (step, key, g, w)
    return worst


def weight_difference(got: dict, want: dict) -> tuple[float, float]:
    """(max |got − want|, max |got − want| / |want|) over every weight."""
    diff = [(got[k] - want[k]).abs() for k in want]
    return (max(d.max().item() for d in diff),
            max((d / want[k].abs().clamp(min=1e-12)).max().item() for d, k in zip(diff, want)))


# 16 rows: 2 minibatches of 8; one process forwards micro-batches of 3+3+2 rows, each rank 3+1 of its 4
TRAINERS = {"rl": {"num_minibatches": 2, "beta": 0.04}, "train": {"steps": 3, "micro_batch_size": 3},
            "log": {"eval_every": 0, "save_every": 2}}


def test_two_trainer_ranks_update_as_one_process_and_resume_alike(local_ray, tmp_path, write_config, digits_reward):
    """2 rollout workers + 2 trainer ranks (gloo) against 2 rollout workers + 1 trainer: the same seed samples the same
    batches, and every step's update (two minibatches, gradient accumulation over micro-batches, β·KL in the loss) is
    the same: the metrics each step within RTOL/ATOL, the weights at the end within W_RTOL/W_ATOL. Then the 2-rank run, resumed from
    its step-2 checkpoint, takes step 3 as it did uninterrupted (the ranks start from the checkpoint's optimizer)."""
    import shutil

    from conftest import merge

    configs = {}
    for m in (1, 2):
        configs[m] = write_config(merge(TRAINERS, {"rewards": [{"name": digits_reward}], "distributed": {
            "backend": "ray", "rollout_workers": 2, "trainers": m, "timeout_s": 120}}), name=f"m{m}.yaml")
        result = aha("train", configs[m], "-o", tmp_path / f"m{m}")
        assert result.exit_code == 0, result.output
    assert_same_updates(tmp_path / "m2", tmp_path / "m1", range(1, 4))
    one, two = final_weights(tmp_path / "m1", 3), final_weights(tmp_path / "m2", 3)
    print("2 ranks vs 1: weights after 3 steps max abs. difference {:.1e}, max rel. difference {:.1e}".format(
        *weight_difference(two, one)))
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=W_RTOL, atol=W_ATOL)

    resumed = tmp_path / "resumed"  # the 2-rank run as if it had been stopped after its step-2 checkpoint
    shutil.copytree(tmp_path / "m2", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-3")
    result = aha("train", configs[2], "-o", resumed, "--resume")
    assert result.exit_code == 0, result.output
    assert "(step 2)" in result.output
    assert_same_updates(resumed, tmp_path / "m2", range(1, 4))
    again = final_weights(resumed, 3)
    print("resumed vs uninterrupted (2 ranks): weights max abs. difference {:.1e}".format(
        weight_difference(again, two)[0]))
    for k in two:
        torch.testing.assert_close(again[k], two[k], rtol=W_RTOL, atol=W_ATOL)
