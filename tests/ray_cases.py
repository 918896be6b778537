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
