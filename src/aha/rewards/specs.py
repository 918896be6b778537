"""Reward specs → functions: built-in names, ``module:function``, ``file.py:function``, ``rm:PATH``, ``py:NAME``
(a Python callable handed to :func:`aha.train`), with keyword ``args`` bound; and the list a run optimises."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aha.errors import AhaError
from aha.rewards import code as _code
from aha.rewards.builtin import accuracy, overlong, repetition, tag_count, think_format
from aha.rewards.learned import RewardModelError
from aha.rewards.reward_model import RewardModelReward

RewardFn = Callable[..., list]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "think_format": think_format,
    "tag_count": tag_count,
    "overlong": overlong,
    "repetition": repetition,
    "code": _code.code,  # runs programs in aha.sandbox; exposes .last_metrics
}

PYTHON_REWARDS: dict[str, RewardFn] = {}  # py:NAME → a callable registered in this process (the Python API)


class RewardConfigError(AhaError, ValueError):
    """A reward spec in the config cannot be turned into a function (one-line message)."""


def unwrap_partial(fn: Any) -> Any:
    """The callable under any functools.partial (a spec's bound ``args``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def reward_name(fn: Any) -> str:
    """A callable's name: its ``__name__`` (through functools.partial), else its class's name."""
    fn = unwrap_partial(fn)
    return getattr(fn, "__name__", None) or type(fn).__name__


def register_reward(fn: RewardFn, name: str | None = None) -> str:
    """Make a Python callable a reward for this process; returns its spec ``py:NAME`` (NAME: ``name`` or the
    function's own name). Registering another callable under a taken name is an error."""
    if not callable(fn):
        raise RewardConfigError(f"a reward function must be callable, got {type(fn).__name__}")
    name = name or reward_name(fn)
    if PYTHON_REWARDS.get(name, fn) is not fn:
        raise RewardConfigError(
            f"two different reward functions are named {name!r}: give one another name "
            "(reward_funcs={'other_name': fn})"
        )
    PYTHON_REWARDS[name] = fn
    return f"py:{name}"


def bind_args(fn: RewardFn, args: dict | None, spec: str) -> RewardFn:
    """``fn`` with ``args`` bound as keywords; each must name one of its parameters (a typo would otherwise vanish
    into ``**kwargs``)."""
    if not args:
        return fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: take the args on trust
        return functools.partial(fn, **args)
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(args) - set(named))
    if unknown:
        raise RewardConfigError(
            f"reward '{spec}': unknown args {', '.join(unknown)} (its parameters: "
            f"{', '.join(n for n in named if n not in ('prompts', 'completions')) or 'none'})"
        )
    return functools.partial(fn, **args)


_SPEC_FORMS = "a built-in name, 'package.module:function', 'path/to/file.py:function' or 'rm:PATH'"


def load_file_module(path: Path, spec: str) -> Any:
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
        raise RewardConfigError(f"reward '{spec}': importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def resolve_reward(spec: str, args: dict | None = None) -> RewardFn:
    """The reward function named by ``spec``.

    ``spec`` is a built-in name (``"accuracy"``), ``"package.module:function"``,
    ``"path/to/file.py:function"`` (a path relative to the working directory, or absolute; ``load_config`` makes a
    config's paths absolute), ``"py:NAME"`` (a callable handed to :func:`aha.train`, see :func:`register_reward`),
    or ``"rm:PATH"``: a trained reward model's directory, as a
    :class:`~aha.rewards.reward_model.RewardModelReward` built with ``args`` as keyword arguments
    (``batch_size``, ``aggregate``, ``std_coef``, ``device``). For a function, ``args`` are bound to its keyword
    parameters (``functools.partial``). Raises ``RewardConfigError`` with a one-line message when it cannot.

    >>> resolve_reward("accuracy").__name__
    'accuracy'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardConfigError(f"a reward must be named by a non-empty string ({_SPEC_FORMS})")
    spec = spec.strip()
    if spec.startswith("rm:"):
        return _reward_model(spec, args)
    return bind_args(_function(spec), args, spec)


def _function(spec: str) -> RewardFn:
    if spec.startswith("py:"):
        if spec[3:] not in PYTHON_REWARDS:
            raise RewardConfigError(
                f"reward '{spec}' is a Python function handed to aha.train(reward_funcs=...) in "
                "another process: pass it again (aha.train(..., reward_funcs=[fn], resume=True))"
            )
        return PYTHON_REWARDS[spec[3:]]
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
        module = load_file_module(path, spec)
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
        raise RewardConfigError(f"reward '{spec}': '{attr}' in {where} is a {type(fn).__name__}, not a function")
    return fn


def _reward_model(spec: str, args: dict | None) -> RewardFn:
    """``rm:PATH`` → a RewardModelReward; a missing path, a directory that is no reward model or a wrong
    argument is one line."""
    import inspect

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


def default_label(spec: str) -> str:
    """A reward's short name: ``file.py:fn`` and ``module:fn`` → ``fn``, ``py:NAME`` → ``NAME``, ``rm:PATH`` → ``rm``,
    a built-in → itself.

    >>> [default_label(s) for s in ["accuracy", "/a/b/my_rewards.py:exact", "trl.rewards:think_format_reward", "rm:x"]]
    ['accuracy', 'exact', 'think_format_reward', 'rm']
    """
    if spec.startswith("rm:"):
        return "rm"
    return spec.rsplit(":", 1)[-1] or spec


def reward_labels(specs) -> list[str]:
    """Each spec's label (its own ``label``, else :func:`default_label`), made distinct with ``_2``, ``_3``, …"""
    labels: list[str] = []
    for spec in specs:
        base = spec.label or default_label(spec.name)
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base}_{n}"
        labels.append(label)
    return labels


def label_map(specs) -> dict[str, str]:
    """Every way the config may name a reward (its spec or its label) → its label."""
    labels = reward_labels(specs)
    return {**{spec.name: label for spec, label in zip(specs, labels)}, **{label: label for label in labels}}


def build_rewards(specs, task, answer_match: str = "auto") -> list[tuple[str, RewardFn, float]]:
    """``(label, function, weight)`` for every reward the run optimises: the config's ``rewards`` specs (a task's own
    reward first, then the registries), ``args`` bound; the built-in accuracy uses ``answer_match``
    (``task.answer_match``) unless its args say otherwise."""
    return [
        (label, resolve_task_reward(spec.name, task, spec.args, answer_match), spec.weight)
        for spec, label in zip(specs, reward_labels(specs))
    ]


def resolve_task_reward(spec: str, task, args: dict | None, answer_match: str) -> RewardFn:
    """A spec resolved with the task's own rewards first; ``accuracy`` gets ``match=answer_match``."""
    if spec in getattr(task, "rewards", {}):
        return bind_args(task.rewards[spec], args, spec)
    if spec == "accuracy":
        args = {"match": answer_match, **(args or {})}
    return resolve_reward(spec, args)
