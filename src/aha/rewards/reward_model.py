"""A trained reward model as a reward function (config: ``rewards: [{name: "rm:PATH", args: {std_coef: 1.0}}]``).

``RewardModelReward(path)`` has TRL's reward signature, so it sums by weight with verifiable rewards and works for
every ``rl.algo``. It scores ``(prompt, completion)`` exactly as the reward-model stage trained on it
(:func:`aha.rm.render_text`: the model's chat template where the stage used one), in batches, in fp32, under
``torch.no_grad()``. With an ensemble (``reward_model.num_heads > 1``) the reward is a conservative
``mean − std_coef · std`` over the heads (Coste et al. 2023's uncertainty-weighted objective, with the std) or
their ``min`` (worst-case), and ``last_metrics`` reports their disagreement for the trainer to log as
``reward/<name>/<key>``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aha.rewards.learned import load_reward_model


class RewardModelReward:
    """``fn(prompts, completions, **kw) -> list[float]`` scored by the reward model in ``path``.

    - ``batch_size``: sequences per forward pass;
    - ``aggregate``: how an ensemble's heads become one reward — ``"mean"`` (minus ``std_coef`` × their std) or
      ``"min"`` (the most pessimistic head); a single-head model gives its score either way;
    - ``std_coef``: λ of the conservative reward ``mean − λ·std`` (0 = the plain ensemble mean);
    - ``device``: where the model runs (default: cuda if available, else cpu).

    After every call ``last_metrics`` holds ``score_mean`` (the batch mean of the ensemble-mean score), ``score_std``
    (its spread over the batch) and, for an ensemble, ``ensemble_std`` (the batch mean of the per-sample std over
    heads) and ``ensemble_std_max``; where the stage saved its training data's support (:mod:`aha.rewards.support`),
    ``support_distance`` (the batch's mean Mahalanobis distance from that data, in units of the held-out data's:
    ≈ 1 in distribution, rising as the policy drifts off it) and ``ood_fraction`` (the share beyond the held-out
    99th percentile). Either can be the reward-hacking guard's no-gold warning sign (``guard.signal``).
    """

    # how those statistics of shards (Ray rollout workers) make the whole batch's (aha.rollout.scoring.merge_metrics)
    # (the others, ensemble_std, support_distance, ood_fraction, score_mean, are batch means: count-weighted means)
    metric_merge = {"score_std": "std:score_mean", "ensemble_std_max": "max"}

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 32,
        aggregate: str = "mean",
        std_coef: float = 0.0,
        device: str | None = None,
    ):
        if aggregate not in ("mean", "min"):
            raise ValueError(f"aggregate must be 'mean' or 'min', got {aggregate!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if std_coef < 0:
            raise ValueError(f"std_coef must be ≥ 0, got {std_coef}")
        self.path = Path(path)
        self.batch_size, self.aggregate, self.std_coef = batch_size, aggregate, float(std_coef)
        self.rm = load_reward_model(self.path, device)
        self.__name__ = f"rm:{self.path}"
        self.last_metrics: dict[str, float] = {}

    @property
    def num_heads(self) -> int:
        return self.rm.num_heads

    def head_scores(self, prompts: list, completions: list) -> torch.Tensor:
        """``[N, heads]``: every head's score of every sample."""
        return self.rm.score(list(prompts), list(completions), self.batch_size)

    def combine(self, scores: torch.Tensor) -> torch.Tensor:
        """``[N, heads]`` → ``[N]`` rewards: mean − std_coef·std, or min, over the heads."""
        if scores.shape[1] == 1:
            return scores[:, 0]
        if self.aggregate == "min":
            return scores.min(1).values
        return scores.mean(1) - self.std_coef * scores.std(1)

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        feats = self.rm.features(list(prompts), list(completions), self.batch_size)
        scores = self.rm.heads_of(feats)
        rewards = self.combine(scores)
        mean = scores.mean(1)
        metrics = {"score_mean": mean.mean().item(), "score_std": mean.std().item() if len(mean) > 1 else 0.0}
        if scores.shape[1] > 1:
            std = scores.std(1)
            metrics.update({"ensemble_std": std.mean().item(), "ensemble_std_max": std.max().item()})
        if self.rm.support is not None:  # how far the batch is from the reward model's training data
            metrics.update(self.rm.support.metrics(feats))
        self.last_metrics = metrics
        return rewards.tolist()
