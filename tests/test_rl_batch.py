"""aha.rl.batch: the typed batch the RL phases pass along; ``select`` / ``concat`` / ``head`` keep each prompt's G
completions together, with every per-completion field following its completion."""

from __future__ import annotations

from aha.rl.batch import RolloutBatch
from aha.rollout import Rollouts


def _batch(n_groups: int, G: int = 2, offset: int = 0) -> RolloutBatch:
    """``n_groups`` prompts p{offset}…, G completions each; completion i's id, text, reward and per-fn value are all i."""
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
