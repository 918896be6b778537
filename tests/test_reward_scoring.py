"""Rewards computed in shards (Ray rollout workers, ``distributed.rewards: workers``) and joined: the same rewards
and the same batch statistics as one call on the whole batch (aha.rollout.scoring), checked without Ray."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

from aha.rewards import RewardError, compute_rewards
from aha.rewards.reward_model import RewardModelReward
from aha.rollout.scoring import Scores, merge_metrics, merge_scores


def test_merge_metrics_by_hand():
    # shards [1, 1] and [3, 3, 5]: the whole batch [1, 1, 3, 3, 5] has mean 13/5 and sample std √(11.2/4)
    shards = [
        (2, {"m": 1.0, "s": 0.0, "top": 1.0, "n": 2.0}),
        (3, {"m": 11 / 3, "s": statistics.stdev([3, 3, 5]), "top": 5.0, "n": 3.0}),
    ]
    got = merge_metrics(shards, {"s": "std:m", "top": "max", "n": "sum"})
    assert got["m"] == pytest.approx(13 / 5) and got["s"] == pytest.approx(statistics.stdev([1, 1, 3, 3, 5]))
    assert got["top"] == 5.0 and got["n"] == 5.0
    assert merge_metrics([(1, {"s": 0.0, "m": 2.0})], {"s": "std:m"}) == {"s": 0.0, "m": 2.0}  # one sample: 0


class FakeHeads:
    """Stands in for a loaded reward model: fixed features per completion (by its text), its 3 heads' scores those
    features themselves, and a real support (aha.rewards.support) fitted on other features."""

    num_heads = 3

    def __init__(self, table: dict[str, list[float]]):
        from aha.rewards.support import fit_support

        g = torch.Generator().manual_seed(1)
        self.table = table
        self.support = fit_support(torch.randn(50, 3, generator=g), torch.randn(20, 3, generator=g))

    def features(self, prompts, completions, batch_size):
        return torch.tensor([self.table[c] for c in completions])

    def heads_of(self, feats):
        return feats


def test_an_ensembles_statistics_over_shards_are_the_whole_batchs():
    g = torch.Generator().manual_seed(0)
    texts = [f"c{i}" for i in range(16)]
    table = {t: torch.randn(3, generator=g).tolist() for t in texts}
    rm = RewardModelReward.__new__(RewardModelReward)  # the real reward, without loading a model
    rm.rm, rm.batch_size, rm.aggregate, rm.std_coef, rm.last_metrics = FakeHeads(table), 32, "mean", 0.5, {}
    whole = rm(["p"] * 16, texts)
    want = dict(rm.last_metrics)
    parts, values = [], []
    for shard in (texts[:5], texts[5:8], texts[8:]):  # uneven shards, as contiguous prompt shards can be
        values += rm(["p"] * len(shard), shard)
        parts.append((len(shard), dict(rm.last_metrics)))
    got = merge_metrics(parts, RewardModelReward.metric_merge)
    assert values == whole
    assert (
        set(got)
        == set(want)
        == {"score_mean", "score_std", "ensemble_std", "ensemble_std_max", "support_distance", "ood_fraction"}
    )
    for key in want:  # float32 statistics of each shard, merged in float64
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key


def test_merge_scores_joins_the_shards_in_order():
    a = Scores(["x", "y"], [1.0, 0.0], {"f": [1.0, None]}, 1, {"f": {"k": 2.0}}, {"f": {"k": "sum"}}, ["w1"])
    b = Scores(["z"], [0.5], {"f": [0.5]}, 0, {"f": {"k": 3.0}}, {"f": {"k": "sum"}}, [])
    got = merge_scores([a, b])
    assert (got.texts, got.rewards, got.skipped) == (["x", "y", "z"], [1.0, 0.0, 0.5], 1)
    assert got.per_fn == {"f": [1.0, None, 0.5]}
    assert got.metrics == {"f": {"k": 5.0}} and got.warnings == ["w1"]


def test_a_shards_error_names_the_sample_by_its_index_in_the_whole_batch():
    def bad(prompts, completions, **kw):
        if "boom" in completions:
            raise ValueError("boom")
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"failed on sample 9 \(prompt \"p\", completion \"boom\"\)"):
        compute_rewards([("bad", bad, 1.0)], ["p", "p"], ["ok", "boom"], {}, first_sample=8)


def test_the_scorer_decodes_with_the_response_prefix_and_passes_the_columns():
    from aha.rollout import Rollouts
    from aha.rollout.scoring import RewardScorer, ScoreSettings

    seen = {}

    def judge(prompts, completions, answer, completion_ids, max_completion_length, **kw):
        seen.update(answer=answer, ids=completion_ids, max=max_completion_length)
        return [float(c.endswith(a)) for c, a in zip(completions, answer)]

    settings = ScoreSettings(group_size=2, response_prefix="=", on_error="raise", max_completion_length=4)
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens: "".join(map(str, ids)))
    roll = Rollouts([[0]] * 2, [[4], [5]], [[0.0], [0.0]], ["stop", "stop"])
    got = RewardScorer(settings, tok, [("judge", judge, 2.0)])([{"prompt": "2+2", "answer": "4"}], roll)
    assert got.texts == ["=4", "=5"] and got.rewards == [2.0, 0.0] and got.per_fn == {"judge": [1.0, 0.0]}
    assert seen == {"answer": ["4", "4"], "ids": [[4], [5]], "max": 4}
