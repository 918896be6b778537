"""Reward-model losses and ranking metrics: pure tensor functions on the scores of one ranking at a time.

A ranking of K completions is given as *tiers* best-first, each a list of completion indices; a tier with
several members is a tie (``[[0, 2], [1], [3]]``: 0 and 2 share first place). ``scores`` are the reward
model's K scalars for those completions.

- :func:`bradley_terry_loss` — pairwise, −log σ(r_better − r_worse − margin) (InstructGPT, TRL's RewardTrainer);
- :func:`ranking_bt_loss` — a ranking expanded to all its ordered pairs, each ranking weighted once in total;
- :func:`plackett_luce_loss` — listwise: the ranking's likelihood as successive choices, ties with Breslow's
  denominator;
- :func:`reward_centering` — the centering regulariser (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``);
- :func:`ranking_metrics` — pairwise accuracy, mean margin, top-1 accuracy and Kendall τ-b over held-out rankings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Tiers = Sequence[Sequence[int]]


def ranked_pairs(tiers: Tiers) -> list[tuple[int, int]]:
    """Every ordered ``(better, worse)`` pair a ranking implies; tied completions give none.

    >>> ranked_pairs([[0, 2], [1]])
    [(0, 1), (2, 1)]
    """
    out = []
    for i, tier in enumerate(tiers):
        for worse in tiers[i + 1 :]:
            out += [(a, b) for a in tier for b in worse]
    return out


def bradley_terry_loss(
    r_better: torch.Tensor,
    r_worse: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry: ``−log σ(r_better − r_worse − margin)``, averaged (weighted by ``weight`` if given).

    The margin asks the better completion to win by at least ``margin`` (Llama 2's margin loss).

    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item(), 4)  # log(1 + e^-1)
    0.3133
    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0).item(), 4)  # log 2
    0.6931
    """
    losses = -F.logsigmoid(r_better - r_worse - margin)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp(min=1e-12)


def ranking_bt_loss(scores: torch.Tensor, tiers: Tiers, margin: float = 0.0) -> torch.Tensor:
    """Bradley-Terry on one ranking: the mean over its ordered pairs (so a K-way ranking weighs as much as one pair).

    ``scores`` may carry trailing dimensions (``[K, heads]``): the loss is then per head (``[heads]``).

    >>> s = torch.tensor([2.0, 1.0, 0.0])        # ranking 0 > 1 > 2: pairs (0,1), (0,2), (1,2)
    >>> round(ranking_bt_loss(s, [[0], [1], [2]]).item(), 4)  # (2·log(1+e^-1) + log(1+e^-2)) / 3
    0.2512
    """
    pairs = ranked_pairs(tiers)
    if not pairs:
        raise ValueError("a ranking with every completion tied states no preference")
    better = torch.tensor([a for a, _ in pairs], device=scores.device)
    worse = torch.tensor([b for _, b in pairs], device=scores.device)
    return (-F.logsigmoid(scores[better] - scores[worse] - margin)).mean(0)


def plackett_luce_loss(scores: torch.Tensor, tiers: Tiers) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of a ranking, per choice, with ties (Breslow).

    Without ties the ranking is a sequence of choices: the best of all K, then the best of the rest, ...;
    ``P = Π_j exp(s_{π_j}) / Σ_{l ≥ j} exp(s_{π_l})``. A tie group shares its position (Breslow's
    approximation, as for tied events in a Cox model): each member of tier ``j`` is chosen from the same risk set
    ``R_j`` = tier j and every tier below it, so the tier contributes ``Σ_{i∈T_j} s_i − |T_j|·log Σ_{l∈R_j} exp s_l``.
    That likelihood rises when tie-mates score alike, so ties pull their members together, while every member is
    still pushed above everything ranked lower. The loss is ``−log P`` divided by the number of choices with more
    than one candidate (K − 1 without ties), so that a pair gives exactly the Bradley-Terry loss.

    ``scores`` may carry trailing dimensions (``[K, heads]``): the loss is then per head.

    >>> round(plackett_luce_loss(torch.tensor([1.0, 0.0]), [[0], [1]]).item(), 4)  # = Bradley-Terry, log(1 + e^-1)
    0.3133
    >>> s = torch.tensor([2.0, 1.0, 0.0])  # (log(e²+e+1) − 2 + log(e+1) − 1) / 2
    >>> round(plackett_luce_loss(s, [[0], [1], [2]]).item(), 4)
    0.3604
    >>> round(plackett_luce_loss(torch.tensor([1.0, 0.0, 1.0]), [[0, 2], [1]]).item(), 4)  # log(2e+1) − 1
    0.862
    """
    nll = torch.zeros(scores.shape[1:], dtype=scores.dtype, device=scores.device)
    n_choices = 0
    for j, tier in enumerate(tiers):
        risk = [i for t in tiers[j:] for i in t]
        if len(risk) < 2:
            continue  # the last item alone: chosen with probability 1
        lse = torch.logsumexp(scores[risk], dim=0)
        nll = nll + len(tier) * lse - scores[list(tier)].sum(0)
        n_choices += len(tier)
    if n_choices == 0:
        raise ValueError("a ranking needs at least 2 completions")
    return nll / n_choices


def reward_centering(scores: torch.Tensor, groups: Sequence[Sequence[int]], coef: float) -> torch.Tensor:
    """``coef · mean over rankings of (mean score of the ranking)²``: keeps rewards centred on zero per prompt.

    The BT and PL losses see only differences, so the scale's offset drifts freely; this pins it (Eisenstein et
    al. 2023). TRL's ``center_rewards_coefficient`` term on a pair is ``(r_chosen + r_rejected)²`` = 4·mean², so
    TRL's coefficient c corresponds to ``coef = 4c`` here. ``groups`` lists each ranking's rows of ``scores``.

    >>> round(reward_centering(torch.tensor([1.0, 3.0, -1.0, -1.0]), [[0, 1], [2, 3]], 0.1).item(), 4)  # 0.1·(4+1)/2
    0.25
    """
    if coef == 0:
        return scores.new_zeros(scores.shape[1:])
    means = torch.stack([scores[list(g)].mean(0) for g in groups])
    return coef * (means**2).mean(0)


# ----------------------------------------------------------------------------- metrics


def kendall_tau_b(scores: Sequence[float], tiers: Tiers) -> float:
    """Kendall's τ-b between predicted scores and a ranking with ties (NaN where it is undefined).

    ``τ_b = (concordant − discordant) / √((n0 − ties_in_scores)(n0 − ties_in_ranking))`` over all
    ``n0 = K(K−1)/2`` pairs; a pair tied in either counts as neither concordant nor discordant.

    >>> kendall_tau_b([3.0, 2.0, 1.0], [[0], [1], [2]])
    1.0
    >>> round(kendall_tau_b([3.0, 1.0, 2.0], [[0, 1], [2]]), 4)  # 1 concordant, 1 discordant, 1 tied in the ranking
    0.0
    >>> round(kendall_tau_b([3.0, 2.0, 1.0], [[0, 1], [2]]), 4)  # 2 concordant / √(3·2)
    0.8165
    """
    rank = {i: -j for j, tier in enumerate(tiers) for i in tier}  # higher = better, like scores
    items = sorted(rank)
    conc = disc = tie_x = tie_y = n0 = 0
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            i, k = items[a], items[b]
            n0 += 1
            dx = scores[i] - scores[k]
            dy = rank[i] - rank[k]
            tie_x += dx == 0
            tie_y += dy == 0
            if dx != 0 and dy != 0:
                conc += (dx > 0) == (dy > 0)
                disc += (dx > 0) != (dy > 0)
    denom = math.sqrt((n0 - tie_x) * (n0 - tie_y))
    return (conc - disc) / denom if denom > 0 else float("nan")


def ranking_metrics(scores: Sequence[Sequence[float]], tiers: Sequence[Tiers]) -> dict[str, float]:
    """Held-out metrics of a reward model over rankings (``scores[r]`` = the K scores of ranking ``r``).

    - ``pairwise_accuracy``: the fraction of all implied (better, worse) pairs, pooled over rankings, that the model
      orders correctly (an exact tie in score counts ½);
    - ``margin``: the mean of ``score_better − score_worse`` over the same pairs;
    - over the rankings with K > 2 only (absent if there are none): ``top1_accuracy`` — the top-scored completion
      is in the ranking's first tier — and ``kendall_tau`` — the mean τ-b (rankings where it is undefined skipped).

    >>> m = ranking_metrics([[2.0, 1.0, 0.0], [0.0, 1.0]], [[[0], [1], [2]], [[0], [1]]])
    >>> m["pairwise_accuracy"], m["margin"], m["top1_accuracy"], m["kendall_tau"]
    (0.75, 0.75, 1.0, 1.0)
    """
    right, margins, top1, taus = [], [], [], []
    for s, t in zip(scores, tiers):
        s = [float(x) for x in s]
        for a, b in ranked_pairs(t):
            d = s[a] - s[b]
            right.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
            margins.append(d)
        if len(s) > 2:
            best = max(range(len(s)), key=s.__getitem__)
            top1.append(float(best in t[0]))
            tau = kendall_tau_b(s, t)
            if not math.isnan(tau):
                taus.append(tau)
    out = {"pairwise_accuracy": _mean(right), "margin": _mean(margins)}
    if top1:
        out["top1_accuracy"] = _mean(top1)
        out["kendall_tau"] = _mean(taus)
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
