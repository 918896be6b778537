"""Ray rollout workers (``distributed.backend: ray``): they sample what the in-process engine samples from the same
weights, follow every sync, and survive a worker that dies mid-run. Run by tests/test_ray.py inside a network
namespace that has only the loopback interface (Ray's servers listen on every interface they see), where a local
Ray instance is started by these tests and stopped after them."""

from __future__ import annotations

import json

import pytest
import torch

ray = pytest.importorskip("ray")

from conftest import aha, merge, one_line_error, rm_config, sevens  # noqa: E402

from aha.models import build_tiny  # noqa: E402
from aha.rollout import SamplingParams  # noqa: E402
from aha.rollout.hf import HFEngine  # noqa: E402
from aha.rollout.ray import RayEngine  # noqa: E402

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


def test_a_rollout_worker_that_dies_mid_run_is_restarted_and_the_run_completes(
    local_ray, tmp_path, write_config, monkeypatch
):
    marker = tmp_path / "worker-died"
    monkeypatch.setenv("AHA_TEST_WORKER_FAIL_AT", f"3:{marker}")  # worker 0's process exits on its 3rd sampling call
    cfg = write_config(
        {"train": {"steps": 4}, "distributed": {"backend": "ray", "rollout_workers": 2, "timeout_s": 120}}
    )
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
# Measured: see docs/ray.md (the test prints it with -s).
RTOL, ATOL = 1e-5, 1e-6  # metrics each step
W_RTOL, W_ATOL = 1e-4, 1e-5  # weights after the run


def assert_same_updates(got, want, steps: range) -> float:
    """Step by step: the same rollouts (rewards) and the same update (loss, gradient norm, clip ratio, KL, lr).
    Returns the largest relative difference of those metrics."""
    rows_g, rows_w = {r["step"]: r for r in read_rows(got)}, {r["step"]: r for r in read_rows(want)}
    pairs = [
        (step, key, rows_g[step][key], rows_w[step][key])
        for step in steps
        for key in ("loss/policy", "grad_norm", "clip_ratio", "approx_kl", "kl", "lr")
    ]
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
    return (
        max(d.max().item() for d in diff),
        max((d / want[k].abs().clamp(min=1e-12)).max().item() for d, k in zip(diff, want)),
    )


# 16 rows: 2 minibatches of 8; one process forwards micro-batches of 3+3+2 rows, each rank 3+1 of its 4
TRAINERS = {
    "rl": {"num_minibatches": 2, "beta": 0.04},
    "train": {"steps": 3, "micro_batch_size": 3},
    "log": {"eval_every": 0, "save_every": 2},
}


def test_two_trainer_ranks_update_as_one_process_and_resume_alike(local_ray, tmp_path, write_config, digits_reward):
    """2 rollout workers + 2 trainer ranks (gloo) against 2 rollout workers + 1 trainer: the same seed samples the same
    batches, and every step's update (two minibatches, gradient accumulation over micro-batches, β·KL in the loss) is
    the same: the metrics each step within RTOL/ATOL, the weights at the end within W_RTOL/W_ATOL. Then the 2-rank run, resumed from
    its step-2 checkpoint, takes step 3 as it did uninterrupted (the ranks start from the checkpoint's optimizer)."""
    import shutil

    configs = {}
    for m in (1, 2):
        configs[m] = write_config(
            merge(
                TRAINERS,
                {
                    "rewards": [{"name": digits_reward}],
                    "distributed": {"backend": "ray", "rollout_workers": 2, "trainers": m, "timeout_s": 120},
                },
            ),
            name=f"m{m}.yaml",
        )
        result = aha("train", configs[m], "-o", tmp_path / f"m{m}")
        assert result.exit_code == 0, result.output
    assert_same_updates(tmp_path / "m2", tmp_path / "m1", range(1, 4))
    one, two = final_weights(tmp_path / "m1", 3), final_weights(tmp_path / "m2", 3)
    print(
        "2 ranks vs 1: weights after 3 steps max abs. difference {:.1e}, max rel. difference {:.1e}".format(
            *weight_difference(two, one)
        )
    )
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
    print(f"resumed vs uninterrupted (2 ranks): weights max abs. difference {weight_difference(again, two)[0]:.1e}")
    for k in two:
        torch.testing.assert_close(again[k], two[k], rtol=W_RTOL, atol=W_ATOL)


# ----------------------------------------------------------------------------- rewards beside the completions

# A dense reward that reads a dataset column (answer) and keeps statistics of its batch, declared mergeable over the
# workers' shards (aha.rollout.scoring.merge_metrics): a spread (pooled std), a maximum, a count, a mean.
SHARD_REWARD = """
import statistics


class Digits:
    __name__ = "digits"
    metric_merge = {"spread": "std:mean_digits", "most": "max", "count": "sum"}

    def __init__(self):
        self.last_metrics = {}

    def __call__(self, prompts, completions, answer, **kw):
        digits = [sum(ch.isdigit() for ch in c) for c in completions]
        self.last_metrics = {"mean_digits": statistics.fmean(digits), "most": float(max(digits)),
                             "spread": statistics.stdev(digits) if len(digits) > 1 else 0.0,
                             "count": float(len(digits))}
        return [d / 3 + (0.5 if a in c else 0.0) for d, a, c in zip(digits, answer, completions)]


digits = Digits()
"""


def test_rewards_in_the_workers_are_the_trainers_even_when_a_worker_dies_rewarding(
    local_ray, tmp_path, write_config, monkeypatch
):
    """distributed.rewards: workers against trainer, same config and seed, 2 steps of 2 rollout workers with two
    rewards: a Python reward that reads the answer column and keeps batch statistics, and an rm: reward (a 3-head
    ensemble, so ensemble_std is a batch statistic merged over the shards). Worker 0 dies while it rewards step 2's
    shard: it is restarted and its shard sampled and rewarded again. The same rewards, reward statistics, update and
    final weights as the trainer computing every reward."""
    from aha.rm import train_reward_model

    train_reward_model(rm_config(sevens(tmp_path / "sevens.jsonl", n=120), num_heads=3), tmp_path / "rm")
    (tmp_path / "shard_reward.py").write_text(SHARD_REWARD)
    rewards = [{"name": f"{tmp_path / 'shard_reward.py'}:digits"}, {"name": f"rm:{tmp_path / 'rm' / 'model'}"}]
    base = {"rewards": rewards, "rl": {"beta": 0.04}, "log": {"eval_every": 0}}
    marker = tmp_path / "worker-died"
    for where in ("trainer", "workers"):
        if where == "workers":  # worker 0's process exits on its 2nd call, after sampling, before rewarding
            monkeypatch.setenv("AHA_TEST_WORKER_FAIL_AT", f"2:reward:{marker}")
        cfg = write_config(
            merge(base, {"distributed": {"backend": "ray", "rollout_workers": 2, "rewards": where, "timeout_s": 120}}),
            name=f"{where}.yaml",
        )
        result = aha("train", cfg, "-o", tmp_path / where)
        assert result.exit_code == 0, result.output
    assert marker.exists()
    rows_w, rows_t = read_rows(tmp_path / "workers"), read_rows(tmp_path / "trainer")
    assert rows_w[-1]["distributed/worker_restarts"] >= 1 and "distributed/worker_restarts" in rows_t[-1]
    keys = sorted(k for k in rows_t[-1] if k.startswith("reward/"))
    assert {"reward/digits/spread", "reward/digits/count", "reward/rm/ensemble_std", "reward/rm/score_std"} <= set(keys)
    worst, worst_key = 0.0, ""
    for got, want in zip(rows_w, rows_t):
        assert got["step"] == want["step"] and set(got) >= set(keys)
        assert got["completions/mean_length"] == want["completions/mean_length"]
        assert got["reward/digits/mean"] == want["reward/digits/mean"]  # the same numbers from the same code
        assert got["reward/digits/count"] == want["reward/digits/count"] == 16
        for k in keys + ["loss/policy", "grad_norm", "kl"]:
            worst, worst_key = max((worst, worst_key), (abs(got[k] - want[k]) / max(abs(want[k]), 1e-30), k))
            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7), (got["step"], k)
    w, t = final_weights(tmp_path / "workers", 2), final_weights(tmp_path / "trainer", 2)
    print(
        f"\nrewards in the workers vs the trainer: metrics max rel. difference {worst:.1e} ({worst_key}), "
        "weights max abs. difference {:.1e}".format(weight_difference(w, t)[0])
    )
    for k in t:
        torch.testing.assert_close(w[k], t[k], rtol=W_RTOL, atol=W_ATOL)


def test_a_reward_that_fails_in_a_worker_is_the_trainers_one_line(local_ray, tmp_path, write_config):
    """A reward that fails on one prompt of worker 1's shard: the same line as when the trainer rewards, naming the
    reward and the sample by its index in the step's batch."""
    from aha.config import load_config
    from aha.data.sampler import PromptSampler
    from aha.tasks import build_task

    cfg = write_config({"train": {"steps": 1}, "log": {"eval_every": 0}})
    train = build_task(load_config(cfg).task).train
    first = [train[i]["prompt"] for i in PromptSampler(len(train), 0).take(4)]  # step 1's prompts
    k = next(k for k in range(2, 4) if first[k] not in first[:k])  # in worker 1's shard (prompts 2 and 3)
    (tmp_path / "bad_reward.py").write_text(
        f"def bad(prompts, completions, **kw):\n    if {first[k]!r} in prompts:\n        raise ValueError('boom')\n"
        "    return [0.0] * len(prompts)\n"
    )
    lines = {}
    for where in ("trainer", "workers"):
        lines[where] = one_line_error(
            aha(
                "train",
                cfg,
                "-o",
                tmp_path / where,
                "--set",
                "distributed.backend=ray",
                "--set",
                f"distributed.rewards={where}",
                "--set",
                f"rewards=[{{name: {tmp_path / 'bad_reward.py'}:bad}}]",
            )
        )
    assert lines["workers"] == lines["trainer"]
    assert lines["workers"].startswith(f"error: reward function 'bad' failed on sample {4 * k} (prompt ")
    assert "ValueError: boom" in lines["workers"]


def test_workers_play_episodes_in_their_own_environments(local_ray, tmp_path, write_config):
    """Multi-turn episodes (the guess_number game) played and rewarded in the workers: the game's answers come back
    in the transcripts, eval plays in the trainer with the workers sampling."""
    data = tmp_path / "games.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Guess: ", "low": 1, "high": 3 + i % 3}) + "\n" for i in range(40)))
    cfg = write_config(
        {
            "model": {"name": "tiny:layers=1,hidden=32,heads=2,ff=64,ctx=1024"},
            "env": {"factory": "guess_number", "max_turns": 3},
            "rollout": {"max_new_tokens": 6, "stop": list("0123456789"), "max_episode_tokens": 300},
            "task": {"name": "dataset", "path": str(data), "num_eval": 6},
            "train": {"steps": 2},
            "log": {"eval_every": 2, "save_every": 2},
            "distributed": {"backend": "ray", "rollout_workers": 2, "rewards": "workers", "timeout_s": 120},
        }
    )
    result = aha("train", cfg, "-o", tmp_path / "ray")
    assert result.exit_code == 0, result.output[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0 and "env/turns" in r]
    assert len(steps) == 2 and all(r["env/turns"] >= 1 and "reward/env/mean" in r for r in steps)
    assert any("eval/env/turns" in r for r in rows)  # eval plays in the trainer, with the engine's workers sampling
    episodes = [json.loads(line) for line in (tmp_path / "ray" / "samples.jsonl").read_text().splitlines()]
    assert any(m["role"] == "user" for e in episodes for m in e["completion"])  # the game's answers came back
