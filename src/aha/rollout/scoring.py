"""Rewards for sampled completions, wherever they are computed: a :class:`RewardScorer` decodes a batch of rollouts
and rewards it with :func:`~aha.rewards.compute_rewards`. The trainer holds one; with ``distributed.rewards: workers``
each Ray rollout worker builds its own from a :class:`RewardRecipe` (the config, the task's own rewards, the ``py:``
callables) and rewards its shard beside the completions; :func:`merge_scores` joins the shards' results in order.

A reward's ``last_metrics`` are statistics of its last call (a batch). Over shards they are merged by the kind the
reward declares in ``metric_merge`` (:func:`merge_metrics`): count-weighted means, sums, maxima and pooled standard
deviations are the whole batch's, up to float rounding; undeclared keys are count-weighted means.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

from aha.rewards import (
    PYTHON_REWARDS,
    RewardFn,
    as_completions,
    build_rewards,
    columns_of,
    compute_rewards,
)
from aha.rewards.specs import unwrap_partial
from aha.rollout import Rollouts

log = logging.getLogger("aha.rewards")


@dataclass
class Scores:
    """A batch's rewards, in the order of its completions."""

    texts: list[str]  # the decoded completions (task.response_prefix first)
    rewards: list[float]  # the weighted total of each completion
    per_fn: dict[str, list]  # each reward's values (None = no opinion)
    skipped: int  # (reward, sample) pairs a failing reward skipped (rl.reward_on_error: skip)
    metrics: dict[str, dict[str, float]]  # each reward's last_metrics, by label
    merges: dict[str, dict[str, str]] = field(default_factory=dict)  # each reward's metric_merge, by label
    warnings: list[str] = field(default_factory=list)  # what the rewards logged (a worker's: the trainer repeats them)
    printed: str = ""  # what the rewards printed in a worker (the trainer prints it: their prints in one process)


@dataclass(frozen=True)
class ScoreSettings:
    """What scoring reads of the config: ``rollout.group_size``, ``task.response_prefix``, ``rl.reward_on_error``,
    ``rollout.max_new_tokens`` (the rewards' ``max_completion_length``)."""

    group_size: int
    response_prefix: str = ""
    on_error: str = "raise"
    max_completion_length: int = 0

    @classmethod
    def of(cls, cfg) -> ScoreSettings:
        """From a RunConfig: the builder's one look at the whole config."""
        return cls(cfg.rollout.group_size, cfg.task.response_prefix, cfg.rl.reward_on_error, cfg.rollout.max_new_tokens)


class RewardScorer:
    """``scorer(rows, rollouts) -> Scores``: decode (``response_prefix`` first: rewards judge the answer turn
    from its start), then :func:`~aha.rewards.compute_rewards` with ``on_error`` (``rl.reward_on_error``), the rows'
    dataset columns as keyword arguments, ``completion_ids`` and ``max_completion_length``."""

    def __init__(self, settings: ScoreSettings, tokenizer, reward_fns: list[tuple[str, RewardFn, float]]):
        self.settings, self.tokenizer, self.reward_fns = settings, tokenizer, reward_fns

    def __call__(
        self,
        rows: list[dict],
        roll: Rollouts,
        first_sample: int = 0,
        transcripts=None,
        environments=None,
        group_size: int | None = None,
    ) -> Scores:
        """``first_sample``: where these rollouts start in the step's batch (a worker's shard), for error messages.
        Multi-turn episodes: ``transcripts`` (each episode's chat messages after the prompt) are the completions
        (joined as text where the prompt is text), and ``environments`` (the episodes' instances) are passed to the
        rewards as ``environments=``, as TRL passes them. ``group_size``: completions per row where not the run's
        (an eval's one)."""
        st = self.settings
        G, prefix = group_size or st.group_size, st.response_prefix
        prompts = [r["prompt"] for r in rows for _ in range(G)]
        extra = {} if environments is None else {"environments": environments}
        if transcripts is None:
            texts = [prefix + self.tokenizer.decode(c, skip_special_tokens=True) for c in roll.completion_ids]
            completions = as_completions(prompts, texts)
        else:
            texts = ["\n".join(str(m.get("content", "")) for m in t) for t in transcripts]
            completions = [t if isinstance(p, list) else text for p, t, text in zip(prompts, transcripts, texts)]
        rewards, per_fn, skipped = compute_rewards(
            self.reward_fns,
            prompts,
            completions,
            columns_of(rows, G),
            on_error=st.on_error,
            first_sample=first_sample,
            completion_ids=roll.completion_ids,
            max_completion_length=st.max_completion_length,
            **extra,
        )
        metrics = {name: dict(last_metrics(fn) or {}) for name, fn, _ in self.reward_fns}
        merges = {name: dict(getattr(unwrap_partial(fn), "metric_merge", {})) for name, fn, _ in self.reward_fns}
        return Scores(texts, rewards, per_fn, skipped, {k: v for k, v in metrics.items() if v}, merges)


@dataclass
class RewardRecipe:
    """What another process needs to build the run's rewards itself: the reward specs (the config's ``rewards``:
    built-in names, ``module:function``, ``file.py:function``, ``rm:PATH``, with their args), ``task.answer_match``,
    the scoring settings, the task's own reward functions and the ``py:NAME`` callables handed to :func:`aha.train`
    (pickled by Ray: importable or self-contained there)."""

    specs: list
    answer_match: str
    settings: ScoreSettings
    task_rewards: dict
    python_rewards: dict
    env: object = None  # an aha.rollout.episodes.EnvRecipe: the workers play the run's episodes

    @classmethod
    def of(cls, cfg, task) -> RewardRecipe:
        names = {spec.name[3:] for spec in cfg.rewards if spec.name.startswith("py:")}
        return cls(
            list(cfg.rewards),
            cfg.task.answer_match,
            ScoreSettings.of(cfg),
            dict(task.rewards),
            {n: PYTHON_REWARDS[n] for n in names if n in PYTHON_REWARDS},
        )

    def scorer(self, tokenizer, env_reward=None) -> RewardScorer:
        """The run's rewards in this process; ``env_reward``: the environment's own (the spec ``env``)."""
        for name, fn in self.python_rewards.items():
            PYTHON_REWARDS.setdefault(name, fn)
        task = SimpleNamespace(rewards=self.task_rewards | ({"env": env_reward} if env_reward is not None else {}))
        return RewardScorer(self.settings, tokenizer, build_rewards(self.specs, task, self.answer_match))


class WarningsKept(logging.Handler):
    """Keeps what the rewards log while a worker scores (``with WarningsKept() as kept: ...; kept.lines``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> WarningsKept:
        log.addHandler(self)
        log.propagate = False  # (no second copy in the worker's log: the trainer prints them)
        return self

    def __exit__(self, *exc) -> None:
        log.removeHandler(self)
        log.propagate = True


def merge_scores(parts: list[Scores]) -> Scores:
    """The shards' scores joined in order; each reward's ``last_metrics`` merged over the shards by its
    ``metric_merge`` (:func:`merge_metrics`), weighted by the shards' sizes."""
    per_fn = {name: [v for p in parts for v in p.per_fn[name]] for name in (parts[0].per_fn if parts else {})}
    merges = {k: v for p in parts for k, v in p.merges.items()}
    labels = list(dict.fromkeys(label for p in parts for label in p.metrics))
    metrics = {
        label: merge_metrics(
            [(len(p.texts), p.metrics[label]) for p in parts if label in p.metrics], merges.get(label, {})
        )
        for label in labels
    }
    return Scores(
        [t for p in parts for t in p.texts],
        [r for p in parts for r in p.rewards],
        per_fn,
        sum(p.skipped for p in parts),
        metrics,
        merges,
        [w for p in parts for w in p.warnings],
        "".join(p.printed for p in parts),
    )


def merge_metrics(shards: list[tuple[int, dict[str, float]]], kinds: dict[str, str]) -> dict[str, float]:
    """One reward's ``last_metrics`` over shards of ``n`` samples each, as one call on the whole batch gives them.
    ``kinds[key]``: ``mean`` (the default) the ``n``-weighted mean; ``sum``; ``max``; ``min``; ``std:MEAN_KEY`` the
    pooled sample standard deviation (ddof 1; 0 for one sample) of the quantity whose shard means are ``MEAN_KEY``.

    Shards [1, 1] and [3, 3] (means 1 and 3, spreads 0): the whole batch's mean is 2 and its std √(4/3):

    >>> merge_metrics([(2, {"m": 1.0, "s": 0.0, "k": 2.0}), (2, {"m": 3.0, "s": 0.0, "k": 1.0})],
    ...               {"s": "std:m", "k": "sum"})
    {'m': 2.0, 's': 1.1547005383792515, 'k': 3.0}
    """
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for _, m in shards for k in m):
        have = [(n, m) for n, m in shards if key in m]
        kind, total = kinds.get(key, "mean"), sum(n for n, _ in have)
        values = [m[key] for _, m in have]
        if kind == "sum":
            out[key] = sum(values)
        elif kind in ("max", "min"):
            out[key] = max(values) if kind == "max" else min(values)
        elif kind.startswith("std:"):
            means = [(n, m[kind[4:]]) for n, m in have]
            mean = sum(n * m for n, m in means) / total
            squares = sum((n - 1) * m[key] ** 2 + n * (mu - mean) ** 2 for (n, m), (_, mu) in zip(have, means))
            out[key] = math.sqrt(squares / (total - 1)) if total > 1 else 0.0
        else:
            out[key] = sum(n * v for (n, _), v in zip(have, values)) / total if total else 0.0
    return out


def last_metrics(fn) -> dict | None:
    """A reward callable's ``last_metrics`` (also through a functools.partial)."""
    return getattr(fn, "last_metrics", None) or getattr(unwrap_partial(fn), "last_metrics", None)
