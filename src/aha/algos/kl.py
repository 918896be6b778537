"""Per-token estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman, "Approximating KL divergence")."""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0  # as verl: k3 is computed from log r clamped to ±20


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate with ``r = π_ref / π_θ`` evaluated at the sampled token:

    - ``k1 = −log r`` (unbiased, high variance, can be negative);
    - ``k2 = ½ (log r)²`` (biased, low variance);
    - ``k3 = r − 1 − log r`` (unbiased, always ≥ 0; GRPO's choice).

    Worked example: logp = −1.0, ref_logp = −1.5 → log r = −0.5:
    k1 = 0.5, k2 = 0.125, k3 = e^−0.5 − 1 + 0.5 = 0.1065.
    """
    log_r = ref_logp - logp
    if estimator == "k3":  # one token with π_ref ≫ π_θ would make exp(log r) blow up the loss and its gradient
        log_r = log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.exp(log_r) - 1 - log_r
    raise ValueError(f"kl estimator must be k1, k2 or k3, got {estimator!r}")
