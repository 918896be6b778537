"""Reward functions: the registry, spec resolution, and the weighted combiner.

A reward function has TRL's signature, so users bring theirs unchanged::

    def my_reward(prompts: list, completions: list, **kwargs) -> list[float | None]: ...

``None`` means "no opinion" for that sample: it is left out of the weighted sum.

- ``BUILTIN_REWARDS`` maps names (``accuracy``, ``think_format``, ...) to functions.
- ``resolve_reward(spec)`` turns a config string into a function: a built-in name,
  ``package.module:function``, or ``path/to/file.py:function``.
- ``compute_rewards(funcs, prompts, completions, columns)`` calls each function once on the
  batch, checks what it returns, and sums ``weight × value`` per sample.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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
from aha.rewards import code as _code  # (the module: aha.rewards.code stays importable as one)

__all__ = [
    "BUILTIN_REWARDS",
    "RewardConfigError",
    "RewardError",
    "RewardFn",
    "accuracy",
    "completion_text",
    "compute_rewards",
    "overlong",
    "repetition",
    "resolve_reward",
    "tag_count",
    "think_format",
]

log = logging.getLogger(__name__)

RewardFn = Callable[..., list]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "think_format": think_format,
    "tag_count": tag_count,
    "overlong": overlong,
    "repetition": repetition,
    "code": _code.code,  # runs programs in aha.sandbox; exposes .last_metrics
}


class RewardConfigError(AhaError, ValueError):
    """A reward spec in the config cannot be turned into a function (one-line message)."""


class RewardError(AhaError, RuntimeError):
    """A reward function raised, or returned something other than one number/None per sample."""


# ─────────────────────────────── resolving specs ───────────────────────────────

_SPEC_FORMS = "a built-in name, 'package.module:function' or 'path/to/file.py:function'"


def _load_file_module(path: Path, spec: str) -> Any:
    """Import a Python file under a unique module name (registered in ``sys.modules``)."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"aha_user_rewards_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise RewardConfigError(f"reward '{spec}': cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so dataclasses/pickle inside the file can find it
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise RewardConfigError(
            f"reward '{spec}': importing {path} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def resolve_reward(spec: str, args: dict | None = None) -> RewardFn:
    """The reward function named by ``spec``.

    ``spec`` is a built-in name (``"accuracy"``), ``"package.module:function"``,
    ``"path/to/file.py:function"`` (a path relative to the working directory, or absolute), or
    ``"rm:PATH"``: a trained reward model's directory, as a
    :class:`~aha.rewards.reward_model.RewardModelReward` built with ``args`` as keyword arguments
    (``batch_size``, ``aggregate``, ``std_coef``, ``device``). ``args`` of other specs are left to the caller.
    Raises ``RewardConfigError`` with a one-line message when it cannot.

    >>> resolve_reward("accuracy").__name__
    'accuracy'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardConfigError(f"a reward must be named by a non-empty string ({_SPEC_FORMS})")
    spec = spec.strip()
    if spec.startswith("rm:"):
        return _reward_model(spec, args)
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise RewardConfigError(
            f"unknown reward '{spec}'; built-ins are: {', '.join(sorted(BUILTIN_REWARDS))} "
            f"(or use 'package.module:function' or 'path/to/file.py:function')"
        )
    target, attr = spec.rsplit(":", 1)
    if not target or not attr:
        raise RewardConfigError(f"reward '{spec}' must look like {_SPEC_FORMS}")

    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardConfigError(f"reward '{spec}': file not found: {path}")
        module = _load_file_module(path, spec)
        where = str(path)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise RewardConfigError(
                f"reward '{spec}': cannot import module '{target}': {type(exc).__name__}: {exc}"
            ) from exc
        where = f"module '{target}'"

    if not hasattr(module, attr):
        raise RewardConfigError(f"reward '{spec}': {where} has no attribute '{attr}'")
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardConfigError(
            f"reward '{spec}': '{attr}' in {where} is a {type(fn).__name__}, not a function"
        )
    return fn


def _reward_model(spec: str, args: dict | None) -> RewardFn:
    """``rm:PATH`` → a RewardModelReward; a missing path, a directory that is no reward model or a wrong
    argument is one line."""
    import inspect

    from aha.rewards.reward_model import RewardModelReward
    from aha.rm import RewardModelError

    path = Path(spec[3:]).expanduser()
    if not spec[3:].strip():
        raise RewardConfigError(f"reward '{spec}': give the reward model's directory, e.g. rm:runs/rm/model")
    if not path.exists():
        raise RewardConfigError(f"reward '{spec}': {path} not found (the reward-model stage writes RUN_DIR/model)")
    args = dict(args or {})
    allowed = [p for p in inspect.signature(RewardModelReward).parameters if p != "path"]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise RewardConfigError(f"reward '{spec}': unknown args {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    try:
        return RewardModelReward(path, **args)
    except (RewardModelError, ValueError, TypeError) as exc:
        raise RewardConfigError(f"reward '{spec}': {exc}") from None


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
    name: str, index: int, prompts: Sequence, completions: Sequence, exc: BaseException
) -> RewardError:
    return RewardError(
        f"reward function '{name}' failed on sample {index} "
        f"(prompt {_preview(prompts[index])}, completion {_preview(completions[index])}): "
        f"{type(exc).__name__}: {exc}"
    )


def _fail_or_none(name: str, i: int, prompts, completions, exc: Exception, on_error: str) -> None:
    """Sample ``i`` failed: raise a :class:`RewardError` naming it, or (on_error='skip') warn and give None."""
    error = _sample_error(name, i, prompts, completions, exc)
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
        raise TypeError(
            f"returned {value!r} ({type(value).__name__}); expected a float, int, bool or None"
        )
    if not math.isfinite(number):
        raise ValueError(f"returned {number}; rewards must be finite (use None for 'no opinion')")
    return number


def _as_list(output: Any, n: int) -> list:
    """The function's output as a list of length ``n``; raises TypeError/ValueError otherwise."""
    if isinstance(output, (str, bytes, dict)) or not hasattr(output, "__len__"):
        raise TypeError(
            f"returned a {type(output).__name__}; expected a list with one value per sample"
        )
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
                values.append(_fail_or_none(name, i, prompts, completions, exc, on_error))
                skipped += 1
        if on_error == "raise":  # every sample works alone: the batch call itself is broken
            raise RewardError(
                f"reward function '{name}' failed on the batch of {n} samples (each sample alone "
                f"works): {type(batch_exc).__name__}: {batch_exc}"
            ) from batch_exc
        if skipped == 0:
            log.warning(
                "reward function '%s' failed on the batch (%s: %s) but worked sample by sample",
                name, type(batch_exc).__name__, batch_exc,
            )
        return values, skipped

    values = []
    skipped = 0
    for i, value in enumerate(raw):
        try:
            values.append(_check_value(value))
        except (TypeError, ValueError) as exc:
            values.append(_fail_or_none(name, i, prompts, completions, exc, on_error))
            skipped += 1
    return values, skipped


def compute_rewards(
    funcs: list[tuple[str, RewardFn, float]],
    prompts: Sequence,
    completions: Sequence,
    columns: dict[str, list],
    on_error: str = "raise",
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
        values, fn_skipped = _evaluate(name, fn, prompts, completions, kwargs, on_error)
        skipped += fn_skipped
        per_function[name] = values
        for i, value in enumerate(values):
            if value is not None:
                totals[i] += weight * value
    return totals, per_function, skipped
