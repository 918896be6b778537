"""Reward functions: the registry, spec resolution, and the weighted combiner.

A reward function has TRL's signature, so users bring theirs unchanged::

    def my_reward(prompts: list, completions: list, **kwargs) -> list[float | None]: ...

``None`` means "no opinion" for that sample: it is left out of the weighted sum.

- ``BUILTIN_REWARDS`` maps names (``accuracy``, ``think_format``, ...) to functions.
- ``resolve_reward(spec, args)`` (in :mod:`aha.rewards.specs`) turns a config string into a function: a built-in
  name, ``package.module:function``, ``path/to/file.py:function``, ``rm:PATH`` or ``py:NAME``.
- ``as_completions(prompts, texts)``: completions as TRL passes them (message lists for chat prompts).
- ``compute_rewards(funcs, prompts, completions, columns)`` calls each function once on the
  batch, checks what it returns, and sums ``weight × value`` per sample.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from typing import Any

from aha.errors import AhaError
from aha.rewards.builtin import (
    accuracy,
    completion_text,
    overlong,
    repetition,
    tag_count,
    think_format,
)
from aha.rewards.specs import (
    BUILTIN_REWARDS,
    PYTHON_REWARDS,
    RewardConfigError,
    RewardFn,
    bind_args,
    build_rewards,
    register_reward,
    resolve_reward,
)

__all__ = [
    "BUILTIN_REWARDS",
    "PYTHON_REWARDS",
    "RewardConfigError",
    "RewardError",
    "RewardFn",
    "accuracy",
    "as_completions",
    "columns_of",
    "bind_args",
    "build_rewards",
    "completion_text",
    "compute_rewards",
    "overlong",
    "register_reward",
    "repetition",
    "resolve_reward",
    "tag_count",
    "think_format",
]

log = logging.getLogger(__name__)


def as_completions(prompts: Sequence, texts: Sequence[str]) -> list:
    """What reward functions receive as ``completions``, as TRL passes them: the text where the prompt is text, a
    one-message list ``[{"role": "assistant", "content": text}]`` where the prompt is a list of chat messages.

    >>> as_completions(["2+2=", [{"role": "user", "content": "2+2?"}]], ["4", "4"])
    ['4', [{'role': 'assistant', 'content': '4'}]]
    """
    return [[{"role": "assistant", "content": t}] if isinstance(p, list) else t for p, t in zip(prompts, texts)]


def columns_of(rows: list[dict], repeat: int = 1) -> dict[str, list]:
    """Every column of ``rows`` but the prompt, each value repeated ``repeat`` times (the G completions of a row):
    the keyword arguments a reward function gets, as TRL passes them."""
    keys = {k for r in rows for k in r if k != "prompt"}
    return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in keys}


class RewardError(AhaError, RuntimeError):
    """A reward function raised, or returned something other than one number/None per sample."""

    reward: str | None  # the failing reward's name, where one is known (set on the instance; no class default)


# ─────────────────────────────── calling & checking ───────────────────────────────


def _preview(item: Any, limit: int = 80) -> str:
    """A one-line quoted preview of a prompt or completion, at most ``limit`` characters."""
    try:
        text = completion_text(item)
    except TypeError:
        text = str(item)
    text = " ".join(text.split())
    if len(text) > limit - 2:
        text = text[: limit - 5] + "..."
    return f'"{text}"'


def _sample_error(
    name: str, index: int, prompts: Sequence, completions: Sequence, exc: BaseException, first: int = 0
) -> RewardError:
    error = RewardError(
        f"reward function '{name}' failed on sample {first + index} "
        f"(prompt {_preview(prompts[index])}, completion {_preview(completions[index])}): "
        f"{type(exc).__name__}: {exc}"
    )
    error.reward = name  # (kept through pickling: a Ray worker's error names its reward to the trainer)
    return error


def _fail_or_none(
    name: str, i: int, prompts, completions, exc: Exception, on_error: str, first: int = 0
) -> float | None:
    """Sample ``i`` failed: raise a :class:`RewardError` naming it (as sample ``first + i`` of the whole batch), or
    (on_error='skip') warn and give None."""
    error = _sample_error(name, i, prompts, completions, exc, first)
    if on_error == "raise":
        raise error from exc
    log.warning("%s; this sample gets None", error)
    return None


def _check_value(value: Any) -> float | None:
    """One reward value as a float (or None); raises TypeError/ValueError otherwise."""
    if value is None:
        return None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # 0-d tensor or numpy scalar
    if isinstance(value, numbers.Real):  # float, int, bool, numpy reals
        number = float(value)
    else:
        raise TypeError(f"returned {value!r} ({type(value).__name__}); expected a float, int, bool or None")
    if not math.isfinite(number):
        raise ValueError(f"returned {number}; rewards must be finite (use None for 'no opinion')")
    return number


def _as_list(output: Any, n: int) -> list:
    """The function's output as a list of length ``n``; raises TypeError/ValueError otherwise."""
    if isinstance(output, (str, bytes, dict)) or not hasattr(output, "__len__"):
        raise TypeError(f"returned a {type(output).__name__}; expected a list with one value per sample")
    values = list(output)
    if len(values) != n:
        raise ValueError(f"returned {len(values)} values for a batch of {n} samples")
    return values


def _slice_kwargs(kwargs: dict[str, Any], index: int, n: int) -> dict[str, Any]:
    """Per-sample keyword arguments: lists with one entry per sample are cut to ``[entry]``."""
    return {
        key: [value[index]] if isinstance(value, (list, tuple)) and len(value) == n else value
        for key, value in kwargs.items()
    }


def _call_one(
    fn: RewardFn, prompts: Sequence, completions: Sequence, kwargs: dict[str, Any], index: int
) -> float | None:
    n = len(completions)
    output = fn(
        prompts=[prompts[index]],
        completions=[completions[index]],
        **_slice_kwargs(kwargs, index, n),
    )
    return _check_value(_as_list(output, 1)[0])


def _evaluate(
    name: str,
    fn: RewardFn,
    prompts: Sequence,
    completions: Sequence,
    kwargs: dict[str, Any],
    on_error: str,
    first: int = 0,
) -> tuple[list[float | None], int]:
    """One function's values for the batch and how many samples were skipped.

    The function is called once on the whole batch. When that call raises or returns the
    wrong shape, it is called again sample by sample to find which samples fail (to name one in
    the error, or with ``on_error="skip"`` to give only those None).
    """
    n = len(completions)
    try:
        raw = _as_list(fn(prompts=prompts, completions=completions, **kwargs), n)
    except Exception as batch_exc:
        values: list[float | None] = []
        skipped = 0
        for i in range(n):
            try:
                values.append(_call_one(fn, prompts, completions, kwargs, i))
            except Exception as exc:
                values.append(_fail_or_none(name, i, prompts, completions, exc, on_error, first))
                skipped += 1
        if on_error == "raise":  # every sample works alone: the batch call itself is broken
            raise RewardError(
                f"reward function '{name}' failed on the batch of {n} samples (each sample alone "
                f"works): {type(batch_exc).__name__}: {batch_exc}"
            ) from batch_exc
        if skipped == 0:
            log.warning(
                "reward function '%s' failed on the batch (%s: %s) but worked sample by sample",
                name,
                type(batch_exc).__name__,
                batch_exc,
            )
        return values, skipped

    values = []
    skipped = 0
    for i, value in enumerate(raw):
        try:
            values.append(_check_value(value))
        except (TypeError, ValueError) as exc:
            values.append(_fail_or_none(name, i, prompts, completions, exc, on_error, first))
            skipped += 1
    return values, skipped


def compute_rewards(
    funcs: list[tuple[str, RewardFn, float]],
    prompts: Sequence,
    completions: Sequence,
    columns: dict[str, list],
    on_error: str = "raise",
    first_sample: int = 0,
    **extra: Any,
) -> tuple[list[float], dict[str, list[float | None]], int]:
    """Weighted total reward per sample, the values of each function, and the skip count.

    Each ``(name, fn, weight)`` is called once as
    ``fn(prompts=prompts, completions=completions, **columns, **extra)`` (``extra`` carries e.g.
    ``completion_ids`` and ``max_completion_length``; it wins over a column of the same name).
    The output must be one float/int/bool/None per sample; NaN or infinity is an error.

    The total of a sample is ``sum(weight * value)`` over the functions whose value is not None
    (TRL's nansum). A sample on which every function says None gets a total of 0.0.

    ``on_error="raise"``: a failing function raises ``RewardError`` naming it and the sample.
    ``on_error="skip"``: only the samples on which it fails get None from that function; the
    third return value counts those (function, sample) pairs. An exception never becomes 0.
    ``first_sample``: the index of the first sample in a larger batch (a Ray worker's shard), for those messages.

    >>> funcs = [("a", lambda prompts, completions, **kw: [1.0, None], 2.0),
    ...          ("b", lambda prompts, completions, **kw: [0.5, None], 1.0)]
    >>> compute_rewards(funcs, ["p", "q"], ["x", "y"], {})
    ([2.5, 0.0], {'a': [1.0, None], 'b': [0.5, None]}, 0)
    """
    if on_error not in ("raise", "skip"):
        raise RewardConfigError(f"on_error must be 'raise' or 'skip', got '{on_error}'")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"compute_rewards got {len(prompts)} prompts for {n} completions")
    for key, column in columns.items():
        if hasattr(column, "__len__") and not isinstance(column, str) and len(column) != n:
            raise ValueError(f"column '{key}' has {len(column)} entries for {n} completions")
    names = [name for name, _, _ in funcs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RewardConfigError(f"reward names must be distinct; repeated: {', '.join(duplicates)}")

    kwargs = {**columns, **extra}
    per_function: dict[str, list[float | None]] = {}
    totals = [0.0] * n
    skipped = 0
    for name, fn, weight in funcs:
        if n == 0:
            per_function[name] = []
            continue
        values, fn_skipped = _evaluate(name, fn, prompts, completions, kwargs, on_error, first_sample)
        skipped += fn_skipped
        per_function[name] = values
        for i, value in enumerate(values):
            if value is not None:
                totals[i] += weight * value
    return totals, per_function, skipped
