"""Where a reward model's training data was: the support of its features, to say when the policy has left it.

A reward model is only trusted near the texts it learned from. Its last-layer feature (the pooled hidden state its
heads read) of every training completion gives a mean μ and a covariance Σ; a new text's **Mahalanobis distance**

    d(e) = √((e − μ)ᵀ (Σ + λI)⁻¹ (e − μ))

says how far it is from that data (Lee et al. 2018's feature-space out-of-distribution score; in RLHF the
last-layer uncertainty of Zhang et al. 2024, AdvPO). The stage saves μ, (Σ + λI)⁻¹ and the distances of the
*held-out* completions (in distribution, never trained on) to ``aha_support.safetensors`` beside the weights; the
``rm:`` reward then logs, per batch:

  - ``support_distance``: the mean distance in units of the held-out mean (≈ 1 where the policy writes what the
    reward model saw; it grows as the policy drifts off its data — the reward-hacking guard's no-gold signal when
    ``guard.signal: support_distance``);
  - ``ood_fraction``: the share of samples farther than the held-out 99th percentile.

Unlike an ensemble's disagreement, this does not rely on heads that happen to extrapolate differently: heads that
share a trunk often agree off the data (Eisenstein et al. 2023, "Helping or herding?").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

SUPPORT_FILE = "aha_support.safetensors"


@dataclass
class Support:
    mean: torch.Tensor  # [H]
    precision: torch.Tensor  # [H, H] = (Σ + λI)⁻¹
    ref_distance: float  # the held-out completions' mean distance (the unit of support_distance)
    q99: float  # their 99th percentile (beyond it: out of distribution)

    def distance(self, feats: torch.Tensor) -> torch.Tensor:
        """``[N]`` Mahalanobis distances of features ``[N, H]`` from the training data."""
        y = feats.float().to(self.mean.device) - self.mean
        return ((y @ self.precision) * y).sum(-1).clamp(min=0).sqrt()

    def metrics(self, feats: torch.Tensor) -> dict[str, float]:
        """``support_distance`` (mean distance / held-out mean) and ``ood_fraction`` (share beyond the held-out q99)."""
        d = self.distance(feats)
        return {
            "support_distance": d.mean().item() / self.ref_distance,
            "ood_fraction": (d > self.q99).float().mean().item(),
        }

    def save(self, model_dir: Path) -> None:
        from safetensors.torch import save_file

        tmp = Path(model_dir) / (SUPPORT_FILE + ".tmp")
        save_file(
            {
                "mean": self.mean.contiguous().cpu(),
                "precision": self.precision.contiguous().cpu(),
                "ref": torch.tensor([self.ref_distance, self.q99], dtype=torch.float64),
            },
            str(tmp),
        )
        tmp.replace(Path(model_dir) / SUPPORT_FILE)


def fit_support(train_feats: torch.Tensor, held_out_feats: torch.Tensor, ridge: float = 1e-3) -> Support:
    """μ and (Σ + λI)⁻¹ from the training features (fp64 for the inverse), λ = ``ridge`` × the mean variance (so a
    feature the data never varied in still has a finite distance); the reference distances from the held-out ones.

    >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # variance 0.5 and 2
    >>> s = fit_support(x, x, ridge=0.0)
    >>> [round(v, 4) for v in s.distance(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])).tolist()]
    [1.4142, 1.4142, 4.2426]
    """
    x = train_feats.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(1, len(x))
    lam = ridge * cov.diagonal().mean().clamp(min=1e-12)
    precision = torch.linalg.inv(cov + lam * torch.eye(cov.shape[0], dtype=cov.dtype))
    s = Support(mean.float(), precision.float(), 1.0, float("inf"))
    d = s.distance(held_out_feats)
    s.ref_distance = max(d.mean().item(), 1e-12)
    s.q99 = torch.quantile(d.double(), 0.99).item() if len(d) else float("inf")
    return s


def load_support(model_dir: Path, device: torch.device | str = "cpu") -> Support | None:
    """The support saved beside a reward model, or None (a model from elsewhere, or trained without it)."""
    path = Path(model_dir) / SUPPORT_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    t = load_file(str(path))
    ref, q99 = t["ref"].tolist()
    return Support(t["mean"].float().to(device), t["precision"].float().to(device), ref, q99)
