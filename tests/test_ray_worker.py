"""A Ray rollout worker's own process, without Ray (tests/ray_cases.py runs the real actors): its rewards run their
share of the cores' sandboxed programs, what they print reaches the trainer, and failures in several shards name
every failing reward."""

from __future__ import annotations

import os

from aha import sandbox
from aha.config import load_config
from aha.models import build_tiny
from aha.rewards import RewardError, _sample_error
from aha.rollout import SamplingParams
from aha.rollout.ray import RolloutWorker, shards_error
from aha.rollout.scoring import RewardRecipe, merge_scores
from aha.tasks import build_task

LOUD = (
    "from aha import sandbox\n"
    "def loud(prompts, completions, **kw):\n"
    "    print(f'loud saw {len(completions)} completions; sandbox runs {sandbox.default_workers()} at once')\n"
    "    return [0.0] * len(completions)\n"
)


def test_a_workers_rewards_print_to_the_trainer_and_run_its_share_of_programs(write_config, tmp_path):
    (tmp_path / "loud.py").write_text(LOUD)
    cfg = load_config(write_config({"rewards": [{"name": f"{tmp_path / 'loud.py'}:loud"}]}))
    task = build_task(cfg.task)
    policy, tok = build_tiny(cfg.model.name, task.alphabet, seed=0)
    try:
        worker = RolloutWorker(policy.config, tok, threads=1, rewards=RewardRecipe.of(cfg, task))
        worker.load({k: v.clone() for k, v in policy.state_dict().items()}, 1)
        rows = task.train[:2]
        prompts = [tok(r["prompt"]).input_ids for r in rows]
        roll, scores = worker.generate(prompts, cfg.rollout.group_size, SamplingParams(max_new_tokens=2), 0, 1, rows, 0)
    finally:
        sandbox.set_default_workers(None)
    assert len(roll.completion_ids) == 8 and scores.rewards == [0.0] * 8
    assert scores.printed == "loud saw 8 completions; sandbox runs 1 at once\n"
    assert merge_scores([scores, scores]).printed == scores.printed * 2
    assert sandbox.default_workers() == len(os.sched_getaffinity(0))


def test_failures_in_several_shards_name_every_failing_reward():
    boom = ValueError("boom")
    a = _sample_error("digits", 1, ["p0", "p1"], ["c0", "c1"], boom, first=0)
    b = _sample_error("digits", 0, ["p2"], ["c2"], boom, first=4)
    c = _sample_error("length", 0, ["p3"], ["c3"], boom, first=8)
    assert shards_error([a]) is a and shards_error([a, b]) is a  # one reward: the line one process gives
    combined = shards_error([a, b, c])
    assert isinstance(combined, RewardError) and str(combined).startswith(str(a))
    assert str(combined).endswith("; also failing: 'length' failed on sample 8")
    other = RuntimeError("not a reward's")
    assert shards_error([other, c]) is other
