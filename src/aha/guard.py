"""The reward-hacking guard: watch an RL run's metrics, say when the optimised reward stopped meaning what it should.

Optimising a learned reward (the *proxy*) first improves what people want (the *gold* reward), then — once the
policy leaves the reward model's data behind — makes it worse while the proxy keeps rising (Gao et al. 2022). The
guard reads each step's metrics and returns a :class:`Decision`:

    guard = Guard(cfg.guard)
    for step ...:
        metrics = {...}                       # reward/mean, reward/<fn>/mean, kl, reward/<rm>/ensemble_std ...
        decision = guard.observe(step, metrics)
        metrics.update(decision.metrics)      # reward/proxy, reward/gold, guard/* — logged with the step
        if decision.new_best: keep a copy of the weights (rollback target)
        if decision.action != "continue": stop (and for "rollback" restore that copy); decision.reason says why

Signals, each optional:
  - **KL budget**: ``kl`` (to the reference) above ``kl_budget`` → act at once.
  - **gold vs proxy** (a held-out judge exists: a reward function logged with weight 0, never optimised): the
    smoothed gold has fallen more than ``gold_tolerance`` (relative) below its best while the smoothed proxy is
    above its value at that best — for ``patience`` consecutive steps.
  - **no gold, the real case**: a reward model's uncertainty, ``reward/<guard.disagreement>/<guard.signal>``,
    smoothed, is more than ``disagreement_rise`` (relative) above its early baseline (the mean over the first
    ``baseline_steps`` steps) — for ``patience`` consecutive steps. Rising, it says the policy has left the reward
    model's data, where its scores mean nothing. The signal is either
      - ``support_distance`` (the default): the samples' Mahalanobis distance from the reward model's training
        data in its feature space (:mod:`aha.rewards.support`), or
      - ``ensemble_std``: the disagreement of its ensemble heads (Coste et al. 2023). Heads on one trunk can agree
        off the data ("herding", Eisenstein et al. 2023): on ``aha demo rlhf`` they do, and this signal never fires.

The best step (what "rollback" restores): with gold, the highest smoothed gold; without, the highest smoothed proxy
among the steps whose smoothed no-gold signal was still within the baseline's tolerance ("the proxy where the reward
model was still trusted"); with neither, the highest smoothed proxy under the KL budget.

Optionally the gold curve is fitted online to Gao et al.'s R(d) = d(α − β log d), d = √KL (gold measured relative
to its start), giving the predicted peak d* = exp(α/β − 1) as ``guard/predicted_peak_sqrt_kl``. With
``gao_confirms`` (the default) the gold warning only acts once the run's √KL has passed that predicted peak (or the
warning has lasted 3 × ``patience``): a dip in gold before the real peak is waited out, and a rollback still
restores the best step, so acting later costs only compute.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from aha.errors import AhaError
from aha.rewards.learned import ENSEMBLE_FILE  # file names only (the reward loads the model itself)
from aha.rewards.specs import reward_labels
from aha.rewards.support import SUPPORT_FILE


class GuardError(AhaError, ValueError):
    """The guard cannot watch what it was configured to (one-line message)."""


STOP_CODES = {"kl_budget": 1, "gold_vs_proxy": 2, "disagreement": 3}  # guard/stop_code in metrics
_SIGNAL_FIX = {  # why a reward model logs no guard.signal, and the fix
    "support_distance": "the reward model has no saved support (train it with reward_model.support: true, or set "
    "guard.signal: ensemble_std)",
    "ensemble_std": "the reward model has one head (train it with reward_model.num_heads > 1, or set guard.signal: "
    "support_distance)",
}


@dataclass
class Decision:
    action: str = "continue"  # "continue" | "stop" | "rollback"
    reason: str = ""  # one line, empty while continuing
    new_best: bool = False  # this step is the best so far: keep its weights when rollback is configured
    best_step: int | None = None
    metrics: dict = field(default_factory=dict)  # reward/proxy, reward/gold, guard/* for this step's log line


def fit_gao(d: list[float], r: list[float]) -> tuple[float, float] | None:
    """Least squares fit of Gao et al.'s RL gold curve R(d) = d(α − β·log d) (no intercept: R(0) = 0).

    Linear in (α, β) with features (d, −d·log d). Returns None when the points cannot determine both.

    >>> a, b = fit_gao([0.5, 1.0, 2.0, 3.0], [0.5 * (1.0 - 0.5 * math.log(0.5)), 1.0, 2.0 * (1.0 - 0.5 * math.log(2.0)),
    ...                                         3.0 * (1.0 - 0.5 * math.log(3.0))])
    >>> round(a, 6), round(b, 6)
    (1.0, 0.5)
    """
    pts = [(x, y) for x, y in zip(d, r) if x > 0 and math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 3:
        return None
    s11 = s12 = s22 = t1 = t2 = 0.0
    for x, y in pts:
        f1, f2 = x, -x * math.log(x)
        s11, s12, s22 = s11 + f1 * f1, s12 + f1 * f2, s22 + f2 * f2
        t1, t2 = t1 + f1 * y, t2 + f2 * y
    det = s11 * s22 - s12 * s12
    if abs(det) < 1e-12 * max(s11 * s22, 1e-30):
        return None
    return (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det


def gao_peak(alpha: float, beta: float) -> float | None:
    """The d = √KL where R(d) = d(α − β log d) peaks: R'(d) = α − β(log d + 1) = 0 → d* = exp(α/β − 1).
    None when β ≤ 0 (the fit sees no downturn yet).

    >>> round(gao_peak(1.0, 0.5), 4)  # e^(2 − 1)
    2.7183
    """
    if beta <= 0:
        return None
    exponent = alpha / beta - 1
    return math.exp(exponent) if exponent < 50 else None


@dataclass
class _Smoothed:
    """One step's moving averages (None until there is a value) and the no-gold signal's baseline (None until known)."""

    proxy: float | None
    gold: float | None
    signal: float | None
    baseline: float | None


class Guard:
    """Stateful: feed it every step's metrics in order with :meth:`observe`. ``cfg`` is a ``GuardConfig``."""

    def __init__(self, cfg, labels: dict[str, str] | None = None):
        """``labels``: how the rewards' specs map to their labels in the metrics (aha.rewards.specs.label_map)."""
        self.cfg = cfg
        label = (labels or {}).get
        self.gold_key = f"reward/{label(cfg.gold, cfg.gold)}/mean" if cfg.gold else None
        self.proxy_key = f"reward/{label(cfg.proxy, cfg.proxy)}/mean" if cfg.proxy else "reward/mean"
        rm = label(cfg.disagreement, cfg.disagreement)  # the reward model whose uncertainty is the no-gold signal
        self.std_key = f"reward/{rm}/{cfg.signal}" if cfg.disagreement else None
        self.mean_key = f"reward/{rm}/mean" if cfg.disagreement else None
        self._signal_checked = False  # the no-gold signal is logged beside its reward (checked once, at its first step)
        w = cfg.window
        self._gold: deque[float]
        self._proxy: deque[float]
        self._std: deque[float]
        self._gold, self._proxy, self._std = deque(maxlen=w), deque(maxlen=w), deque(maxlen=w)
        self._baseline_std: list[float] = []
        self._gold0: list[float] = []  # the first window's gold: the start Gao's R(d) is measured from
        self._fit_d: list[float] = []
        self._fit_r: list[float] = []
        self.best_step: int | None = None
        self.best_score = -math.inf
        self._proxy_at_best = -math.inf
        self.warning_steps = 0
        self.n = 0
        self.stopped: Decision | None = None

    @property
    def mode(self) -> str:
        return "gold" if self.gold_key else ("disagreement" if self.std_key else "kl")

    def observe(self, step: int, metrics: dict) -> Decision:
        """One step's metrics in, the decision out: record the signals, smooth them, update the best step, read the
        warning sign, fit Gao's curve (with gold), and decide. ``Decision.metrics`` is what the run logs as
        ``guard/*``."""
        self.n += 1
        out: dict = {}
        gold, kl = _num(metrics.get(self.gold_key)), _num(metrics.get("kl"))
        self._record(metrics, out)
        smooth = self._smooth(kl, out)
        new_best = self._update_best(step, smooth, kl)
        self._read_warning(smooth, out)
        peak = self._fit(gold, kl, out)
        reason, code = self._why_act(smooth, kl, peak)
        return self._decide(reason, code, new_best, out)

    def _record(self, metrics: dict, out: dict) -> None:
        """Keep this step's proxy, gold and no-gold signal (the first ``window`` golds and ``baseline_steps`` signals
        also as the start's level); a signal the run never logs is one line at its first step."""
        c = self.cfg
        proxy, gold, std = (_num(metrics.get(k)) for k in (self.proxy_key, self.gold_key, self.std_key))
        if proxy is not None:
            self._proxy.append(proxy)
            out["reward/proxy"] = proxy
        if gold is not None:
            self._gold.append(gold)
            out["reward/gold"] = gold
            if len(self._gold0) < c.window:
                self._gold0.append(gold)
        if self.mode == "disagreement" and std is None and not self._signal_checked and self.mean_key in metrics:
            raise GuardError(
                f"guard: the run logs no {self.std_key}, the no-gold signal guard.signal = {c.signal!r}: "
                + _SIGNAL_FIX[c.signal]
            )
        if self.mode == "disagreement" and self.mean_key in metrics:
            self._signal_checked = True
        if std is not None:
            self._std.append(std)
            if len(self._baseline_std) < c.baseline_steps:
                self._baseline_std.append(std)

    def _smooth(self, kl: float | None, out: dict) -> _Smoothed:
        """The moving averages over the last ``window`` steps, the signal's baseline once known, and √KL."""
        c = self.cfg
        smooth = _Smoothed(_mean(self._proxy), _mean(self._gold), _mean(self._std), None)
        for key, v in (("guard/proxy_smooth", smooth.proxy), ("guard/gold_smooth", smooth.gold),
                       ("guard/disagreement_smooth", smooth.signal)):  # fmt: skip
            if v is not None:
                out[key] = v
        if len(self._baseline_std) >= c.baseline_steps:
            smooth.baseline = _mean(self._baseline_std)
        if smooth.baseline is not None:
            out["guard/disagreement_baseline"] = smooth.baseline
        if kl is not None:
            out["guard/sqrt_kl"] = math.sqrt(max(kl, 0.0))
        return smooth

    def _update_best(self, step: int, smooth: _Smoothed, kl: float | None) -> bool:
        """The best step so far by the score the mode trusts: smoothed gold; the proxy while the signal stays near its
        baseline; or the proxy within the KL budget. True when this step is the new best."""
        c = self.cfg
        if self.mode == "gold":
            score = smooth.gold
        elif self.mode == "disagreement":
            baseline, signal = smooth.baseline, smooth.signal
            trusted = baseline is None or (signal is not None and signal <= baseline * (1 + c.disagreement_rise))
            score = smooth.proxy if trusted else None
        else:
            score = smooth.proxy if (c.kl_budget is None or kl is None or kl <= c.kl_budget) else None
        if score is None or not score > self.best_score:
            return False
        self.best_score, self.best_step = score, step
        self._proxy_at_best = smooth.proxy if smooth.proxy is not None else -math.inf
        return True

    def _read_warning(self, smooth: _Smoothed, out: dict) -> None:
        """The warning sign, counted in a row: gold fallen from its best while the proxy rose past its value then, or
        the no-gold signal risen above its baseline (only after ``min_steps``)."""
        c, warning = self.cfg, False
        warmed = self.n >= max(c.min_steps, 1)
        p_s, g_s, s_s, baseline = smooth.proxy, smooth.gold, smooth.signal, smooth.baseline
        if warmed and self.mode == "gold" and g_s is not None and p_s is not None and self.best_step is not None:
            fallen = g_s < self.best_score - c.gold_tolerance * max(abs(self.best_score), 1e-8)
            warning = fallen and p_s > self._proxy_at_best
        elif warmed and self.mode == "disagreement" and baseline is not None and s_s is not None:
            warning = s_s > baseline * (1 + c.disagreement_rise)
        self.warning_steps = self.warning_steps + 1 if warning else 0
        out["guard/warning"] = float(warning)
        out["guard/warning_steps"] = float(self.warning_steps)
        if self.best_step is not None:
            out["guard/best_step"] = float(self.best_step)

    def _fit(self, gold: float | None, kl: float | None, out: dict) -> float | None:
        """Gao et al.'s R(d) = d(α − β log d), fitted online to gold's gain against √KL; the √KL of its peak, if any."""
        c = self.cfg
        if not (c.fit_gao and gold is not None and kl is not None and len(self._gold0) >= c.window):
            return None
        self._fit_d.append(math.sqrt(max(kl, 0.0)))
        self._fit_r.append(gold - cast(float, _mean(self._gold0)))  # len >= window >= 1
        fit = fit_gao(self._fit_d, self._fit_r)
        if fit is None:
            return None
        out["guard/gao_alpha"], out["guard/gao_beta"] = fit
        peak = gao_peak(*fit)
        if peak is not None:
            out["guard/predicted_peak_sqrt_kl"] = peak
        return peak

    def _why_act(self, smooth: _Smoothed, kl: float | None, peak: float | None) -> tuple[str, str | None]:
        """Why the guard acts now (one line, and its stop code), or ``("", None)``: the KL budget spent, gold falling
        for ``patience`` steps (past the fitted peak, with ``gao_confirms``), or the no-gold signal risen as long."""
        c = self.cfg
        p_s, g_s, s_s, baseline = smooth.proxy, smooth.gold, smooth.signal, smooth.baseline
        if c.kl_budget is not None and kl is not None and kl > c.kl_budget:
            return f"KL to the reference {kl:.4g} exceeded the budget guard.kl_budget = {c.kl_budget:g}", "kl_budget"
        if self.warning_steps >= c.patience and self.mode == "gold":
            confirmed = self._past_peak(peak, kl)
            if confirmed is not None:
                return (
                    f"gold reward fell while the proxy rose for {self.warning_steps} steps (patience "
                    f"{c.patience}): smoothed gold {g_s:.4g} vs its best {self.best_score:.4g} at step "
                    f"{self.best_step}, proxy {p_s:.4g} vs {self._proxy_at_best:.4g} then{confirmed}"
                ), "gold_vs_proxy"
        elif self.warning_steps >= c.patience and self.mode == "disagreement":
            what = (
                "reward-model ensemble disagreement"
                if c.signal == "ensemble_std"
                else "the samples' distance from the reward model's training data"
            )
            return (
                f"{what} rose for {self.warning_steps} steps (patience {c.patience}): smoothed "
                f"{c.signal} {s_s:.4g} > (1 + {c.disagreement_rise:g}) × baseline {baseline:.4g}"
            ), "disagreement"
        return "", None

    def _decide(self, reason: str, code: str | None, new_best: bool, out: dict) -> Decision:
        """The action ``guard.action`` asks for when there is a reason (a rollback with no best step yet stops)."""
        action = "continue"
        if code is not None:
            action = self.cfg.action
            if action == "rollback" and self.best_step is None:
                action, reason = "stop", reason + "; no best step seen yet, so stopping instead of rolling back"
            elif action == "rollback":
                reason += f"; rolling back to step {self.best_step}"
            out["guard/stop_code"] = float(STOP_CODES[code])
            out["guard/stop_reason"] = code
        decision = Decision(action, reason, bool(new_best), self.best_step, out)
        if action != "continue":
            self.stopped = decision
        return decision

    def _past_peak(self, peak: float | None, kl: float | None) -> str | None:
        """Whether a fall in gold may act (with ``guard.gao_confirms``): when the fitted R(d) peaks at a √KL the run
        has passed, or the warning has lasted 3 × patience anyway — the words to add to the reason; None while the
        fall is taken for a dip before the peak."""
        c = self.cfg
        if not (c.gao_confirms and c.fit_gao):
            return ""
        d = math.sqrt(max(kl, 0.0)) if kl is not None else None
        if peak is not None and d is not None and d >= peak:
            return f"; the fitted gold curve R(d) = d(α − β log d) peaks at √KL {peak:.3g}, passed (now {d:.3g})"
        if self.warning_steps >= 3 * c.patience:
            return "; for 3 × patience, though the fitted gold curve does not place its peak behind the run"
        return None


def _num(v) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _mean(xs) -> float | None:
    return sum(xs) / len(xs) if xs else None


def rollback_reach(window: int) -> int:
    """How many steps' weights a rollback keeps: enough to reach back to the middle of the guard's moving average
    of ``window`` steps (the weights that sampled the best window's middle step), plus the current ones."""
    return (window - 1) // 2 + 2


def check_guard_config(cfg) -> str | None:
    """A one-line problem with ``cfg.guard`` against ``cfg.rewards`` (a RunConfig), or None."""
    g = cfg.guard
    labels = reward_labels(cfg.rewards)
    weights = {}  # a reward is named by its spec or its label
    for spec, label in zip(cfg.rewards, labels):
        weights[spec.name] = weights[label] = spec.weight
    for field_name in ("gold", "proxy", "disagreement"):
        name = getattr(g, field_name)
        if name is not None and name not in weights:
            return (
                f"guard.{field_name} {name!r} is not among the rewards (names: {', '.join(labels)}); add it to "
                "rewards" + (" with weight 0" if field_name == "gold" else "")
            )
    if g.gold is not None and weights[g.gold] != 0:
        return (
            f"guard.gold {g.gold!r} has weight {weights[g.gold]:g}: a gold judge must not be optimised "
            "(give it weight 0 in rewards)"
        )
    if g.disagreement is not None and g.gold is None:  # (its signal is watched): known from its folder, before step 1
        spec = next(s.name for s, label in zip(cfg.rewards, labels) if g.disagreement in (s.name, label))
        if (missing := _rm_lacks_signal(spec, g.signal)) is not None:
            return f"guard.disagreement {g.disagreement!r} will log no {g.signal} (guard.signal): {missing}"
    return None


def _rm_lacks_signal(spec: str, signal: str) -> str | None:
    """Why the reward model ``rm:PATH`` cannot log ``signal`` (the words of :data:`_SIGNAL_FIX`), or None: the support
    file or the ensemble's heads beside its weights. Another kind of reward is checked at its first step."""
    path = Path(spec[3:]).expanduser() if spec.startswith("rm:") else None
    if path is None or not (path / "config.json").is_file():  # (a wrong path is the reward's own one-line error)
        return None
    if signal == "support_distance" and not (path / SUPPORT_FILE).is_file():
        return _SIGNAL_FIX[signal]
    if signal == "ensemble_std":
        try:
            heads = len(json.loads((path / ENSEMBLE_FILE).read_text())["weight"])
        except (OSError, ValueError, KeyError, TypeError):
            heads = 1
        if heads < 2:
            return _SIGNAL_FIX[signal]
    return None
