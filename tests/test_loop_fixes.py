"""The defects and weak spots issue 13's review found, each fixed with a test: KL that cannot blow up, an agreeing group's
advantage exactly 0, GRPO with one sample per prompt refused, SFT's --resume with nothing to resume refused, the overlong
reward's message, and the phases used on their own (a typed batch's select / concat / head)."""

from __future__ import annotations

import pytest
import torch

from aha.algos.advantages import group_relative_advantages
from aha.algos.kl import kl_estimate
from aha.config import ConfigError, load_config
from aha.errors import TrainingError
from aha.rewards.builtin import overlong
from aha.rl.batch import RolloutBatch
from aha.rollout import Rollouts


def test_k3_kl_is_clamped_where_the_reference_is_far_more_likely():
    logp, ref = torch.tensor([-60.0, -1.0]), torch.tensor([-0.5, -1.5])  # log r = 59.5 (clamped to 20) and -0.5
    kl = kl_estimate(logp, ref, "k3")
    assert torch.isfinite(kl).all()
    assert kl[0].item() == pytest.approx(torch.exp(torch.tensor(20.0)).item() - 21, rel=1e-6)
    assert kl[1].item() == pytest.approx(0.1065, abs=1e-4)  # the worked example is unchanged


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_group_whose_rewards_agree_gets_advantage_exactly_zero(scale):
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 0.0, 1.0])  # 0.7 has no exact float mean: rounding shows
    adv, _ = group_relative_advantages(rewards, 4, scale)
    assert torch.equal(adv[:4], torch.zeros(4))
    assert adv[4] > 0 > adv[5]


def test_grpo_with_one_sample_per_prompt_is_refused(write_config):
    with pytest.raises(ConfigError, match="group_size ≥ 2"):
        load_config(write_config({"rollout": {"group_size": 1}}))
    load_config(write_config({"rollout": {"group_size": 1}, "rl": {"algo": "reinforce++"}}))  # no baseline needed


def test_sft_resume_without_a_checkpoint_raises_and_clears_nothing(tmp_path, write_config):
    from aha.sft import train_sft

    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n' * 4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    cfg = load_config(write_config({"stage": "sft", "sft": {"path": str(data)}}))
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_sft(cfg, run, resume=True)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_overlong_message_names_what_exists():
    with pytest.raises(ValueError, match="rollout.max_new_tokens"):
        overlong([None], ["x"])


def _batch(n_groups: int, G: int = 2, offset: int = 0) -> RolloutBatch:
    n = n_groups * G
    ids = [[offset + i] for i in range(n)]
    return RolloutBatch(
        G,
        [{"prompt": f"p{offset + g}"} for g in range(n_groups)],
        Rollouts([[0]] * n, ids, [[0.0]] * n, ["stop"] * n),
        [str(i[0]) for i in ids],
        [float(i[0]) for i in ids],
        {"f": [float(i[0]) for i in ids]},
    )


def test_batch_select_concat_head_keep_groups_whole():
    a, b = _batch(3), _batch(2, offset=10)
    kept = a.select([True, False, True]).concat(b)
    assert [r["prompt"] for r in kept.rows] == ["p0", "p2", "p10", "p11"]
    assert kept.rollouts.completion_ids == [[0], [1], [4], [5], [10], [11], [12], [13]]
    assert kept.rewards == kept.per_fn["f"] == [0.0, 1.0, 4.0, 5.0, 10.0, 11.0, 12.0, 13.0]
    head = kept.head(3)
    assert head.n_groups == 3 and len(head) == 6 and head.texts == ["0", "1", "4", "5", "10", "11"]
