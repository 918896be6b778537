"""The reward-hacking guard on scripted metric streams (no model): stop, roll-back, patience, KL budget, the
no-gold modes (distance from the RM's data, ensemble disagreement), and the Gao et al. fit."""

from __future__ import annotations

import math
import random

import pytest

from aha.config import GuardConfig, RunConfig
from aha.guard import Guard, check_guard_config, fit_gao, gao_peak


def gold_proxy_stream(n=60, peak=25, noise=0.0, seed=0):
    """Proxy rises all along; gold rises until step ``peak`` and then falls (over-optimisation)."""
    rng = random.Random(seed)
    for step in range(1, n + 1):
        gold = 1.0 + 0.04 * min(step, peak) - 0.06 * max(step - peak, 0) + rng.gauss(0, noise)
        yield step, {"reward/mean": 0.1 * step + rng.gauss(0, noise), "reward/gold/mean": gold, "kl": 0.01 * step}


def run(cfg, stream):
    g = Guard(cfg)
    for step, m in stream:
        d = g.observe(step, m)
        if d.action != "continue":
            return g, step, d
    return g, None, None


def test_gold_vs_proxy_rolls_back_to_the_peak():
    cfg = GuardConfig(
        enabled=True, gold="gold", window=3, patience=4, min_steps=5, gold_tolerance=0.02, gao_confirms=False
    )
    g, step, d = run(cfg, gold_proxy_stream())
    assert d.action == "rollback"
    # smoothed gold (window 3) peaks at step 26; it falls 2 % below that by step 28, then 4 steps of patience
    assert g.best_step == 26 and d.best_step == 26
    assert 29 <= step <= 32
    assert "gold reward fell while the proxy rose" in d.reason and "rolling back to step 26" in d.reason
    assert d.metrics["guard/stop_reason"] == "gold_vs_proxy" and d.metrics["guard/stop_code"] == 2.0
    assert d.metrics["reward/proxy"] == pytest.approx(0.1 * step) and "reward/gold" in d.metrics


def test_stop_action_and_new_best_flags():
    cfg = GuardConfig(enabled=True, action="stop", gold="gold", window=1, patience=2, min_steps=0, gao_confirms=False)
    g = Guard(cfg)
    bests = []
    for step, m in gold_proxy_stream():
        d = g.observe(step, m)
        bests.append(d.new_best)
        if d.action != "continue":
            break
    assert d.action == "stop" and "rolling back" not in d.reason
    assert bests[:25] == [True] * 25 and not any(bests[25:])  # a new best every step while gold rises, none after
    assert step == 25 + 2  # window 1: gold below the peak from step 26, two steps of patience


def gao_stream(n=90, dip=(22, 30), depth=0.25, alpha=1.0, beta=0.5, seed=0):
    """Gold follows Gao et al.'s R(d) = d(α − β log d) in d = √KL (peak at d* = e^(α/β − 1) = e, step 54 here), with
    a dip before the peak; the proxy rises all along."""
    rng = random.Random(seed)
    for step in range(1, n + 1):
        d = 0.05 * step
        gold = d * (alpha - beta * math.log(d)) - (depth if dip[0] <= step < dip[1] else 0.0) + rng.gauss(0, 0.01)
        yield step, {"reward/mean": 0.1 * step, "reward/gold/mean": gold, "kl": d * d}


def test_the_gao_fit_waits_out_a_dip_before_the_peak():
    kw = dict(enabled=True, gold="gold", window=3, patience=4, min_steps=5)
    _, step, d = run(GuardConfig(**kw, gao_confirms=False), gao_stream())
    assert step < 30 and d.best_step < 22  # without the fit: acts in the dip, restores a step before it
    _, step, d = run(GuardConfig(**kw), gao_stream())
    assert step > 54 and 48 <= d.best_step <= 58  # with it: past the real peak (step 54), rolled back to about there
    assert "peaks at √KL" in d.reason and "passed" in d.reason
    assert d.metrics["guard/sqrt_kl"] >= d.metrics["guard/predicted_peak_sqrt_kl"] > 2.0


def test_patience_resets_when_the_warning_stops():
    """A dip shorter than the patience is noise: the counter resets and the guard keeps going."""
    cfg = GuardConfig(enabled=True, gold="gold", window=1, patience=3, min_steps=0)
    golds = [1, 2, 3, 2.5, 2.5, 3.5, 4, 3, 3, 5]  # two 2-step dips under patience 3
    g = Guard(cfg)
    seen = []
    for i, gold in enumerate(golds, 1):
        d = g.observe(i, {"reward/mean": float(i), "reward/gold/mean": gold})
        seen.append(d.metrics["guard/warning_steps"])
        assert d.action == "continue"
    assert seen == [0, 0, 0, 1, 2, 0, 0, 1, 2, 0]


def test_no_warning_when_proxy_falls_with_gold():
    """Gold falling while the proxy falls too is a bad step, not reward hacking."""
    cfg = GuardConfig(enabled=True, gold="gold", window=1, patience=2, min_steps=0)
    g = Guard(cfg)
    for i, v in enumerate([1, 2, 3, 2, 1, 0.5, 0.2], 1):
        d = g.observe(i, {"reward/mean": v, "reward/gold/mean": v})
        assert d.action == "continue" and d.metrics["guard/warning"] == 0.0


def test_kl_budget_stops_at_once():
    cfg = GuardConfig(enabled=True, action="stop", kl_budget=0.25)
    g, step, d = run(cfg, gold_proxy_stream())
    assert step == 26 and d.action == "stop"  # kl = 0.01·step > 0.25 first at step 26
    assert "exceeded the budget guard.kl_budget = 0.25" in d.reason and d.metrics["guard/stop_reason"] == "kl_budget"
    assert d.metrics["guard/sqrt_kl"] == pytest.approx(math.sqrt(0.26))


def test_kl_budget_rollback_restores_best_proxy_under_budget():
    cfg = GuardConfig(enabled=True, action="rollback", kl_budget=0.25, window=1)
    g, step, d = run(cfg, gold_proxy_stream())
    assert d.action == "rollback" and d.best_step == 25  # the last step under budget has the highest proxy


def disagreement_stream(n=60, off_support=30, seed=0, key="ensemble_std", level=0.1):
    """A no-gold signal (an ensemble's std, or the distance from the RM's data) stays near ``level`` while the
    policy stays on the RM's data, then grows; no gold anywhere."""
    rng = random.Random(seed)
    for step in range(1, n + 1):
        value = level * (1 + rng.gauss(0, 0.05) + 0.2 * max(step - off_support, 0))
        yield (
            step,
            {"reward/mean": 0.1 * step, f"reward/rm:x/{key}": value, "reward/rm:x/mean": 0.1 * step, "kl": 0.01 * step},
        )


@pytest.mark.parametrize(
    "signal,level,words",
    [
        ("ensemble_std", 0.1, "ensemble disagreement rose"),
        ("support_distance", 1.0, "distance from the reward model's training"),
    ],
)
def test_no_gold_signal_rising_rolls_back(signal, level, words):
    cfg = GuardConfig(
        enabled=True,
        disagreement="rm:x",
        signal=signal,
        window=3,
        patience=3,
        baseline_steps=10,
        disagreement_rise=0.5,
        min_steps=10,
    )
    g, step, d = run(cfg, disagreement_stream(key=signal, level=level))
    assert g.mode == "disagreement" and d.action == "rollback"
    assert d.metrics["guard/stop_reason"] == "disagreement" and words in d.reason and signal in d.reason
    assert d.metrics["guard/disagreement_baseline"] == pytest.approx(level, rel=0.1)
    # the signal crosses 1.5 × its level at step 33 (1 + 0.2·3 = 1.6; the 3-step mean a step later), 3 steps of patience
    assert 35 <= step <= 38
    # best = the highest proxy while the signal was still low: the last trusted step, before it rose
    assert 31 <= d.best_step < step - 2
    assert "reward/gold" not in d.metrics


def test_disagreement_that_stays_flat_never_triggers():
    cfg = GuardConfig(enabled=True, disagreement="rm:x", window=3, patience=3)
    g, step, _ = run(cfg, disagreement_stream(off_support=10**6, key="support_distance", level=1.0))
    assert step is None


@pytest.mark.parametrize(
    "signal,fix", [("support_distance", "reward_model.support"), ("ensemble_std", "reward_model.num_heads")]
)
def test_a_no_gold_signal_the_reward_does_not_log_is_one_clear_error(signal, fix):
    from aha.guard import GuardError

    g = Guard(GuardConfig(enabled=True, disagreement="rm:x", signal=signal))
    g.observe(1, {"reward/mean": 0.1, "kl": 0.0})  # a step without the reward (every group agreed): no verdict yet
    with pytest.raises(GuardError, match=f"logs no reward/rm:x/{signal}.*{fix}"):
        g.observe(2, {"reward/mean": 0.1, "reward/rm:x/mean": 0.1, "kl": 0.0})


def test_gao_fit_recovers_alpha_beta_and_the_peak():
    alpha, beta = 1.3, 0.45
    rng = random.Random(0)
    d = [0.05 * i for i in range(1, 120)]
    r = [x * (alpha - beta * math.log(x)) + rng.gauss(0, 0.01) for x in d]
    a, b = fit_gao(d, r)
    assert a == pytest.approx(alpha, abs=0.02) and b == pytest.approx(beta, abs=0.02)
    assert gao_peak(a, b) == pytest.approx(math.exp(alpha / beta - 1), rel=0.1)
    assert gao_peak(1.0, -0.1) is None and fit_gao([1.0], [1.0]) is None


def test_guard_logs_the_online_gao_fit():
    alpha, beta = 1.0, 0.5  # peak at √KL = e ≈ 2.72
    cfg = GuardConfig(enabled=True, gold="gold", window=3, patience=1000)
    g = Guard(cfg)
    for step in range(1, 200):
        dd = 0.03 * step
        d = g.observe(
            step, {"reward/mean": dd, "reward/gold/mean": 2.0 + dd * (alpha - beta * math.log(dd)), "kl": dd * dd}
        )
    # gold is fitted relative to its first window's mean (≈ R at d ≈ 0.06), so α, β are close, not exact
    assert d.metrics["guard/predicted_peak_sqrt_kl"] == pytest.approx(math.e, rel=0.1)


def test_config_checks_name_the_field():
    cfg = RunConfig.model_validate(
        {"rewards": [{"name": "accuracy"}, {"name": "gold", "weight": 1.0}], "guard": {"enabled": True, "gold": "gold"}}
    )
    assert "give it weight 0" in check_guard_config(cfg)
    cfg = RunConfig.model_validate({"rewards": [{"name": "accuracy"}], "guard": {"enabled": True, "gold": "judge"}})
    assert "guard.gold 'judge' is not among the rewards" in check_guard_config(cfg)
    cfg = RunConfig.model_validate(
        {"rewards": [{"name": "accuracy"}, {"name": "gold", "weight": 0}], "guard": {"enabled": True, "gold": "gold"}}
    )
    assert check_guard_config(cfg) is None
