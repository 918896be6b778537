"""From what a user names (``env.factory``, ``env.tools``, ``env.style``) to an :class:`Environment`: checked once,
when the run is built, so a class or function that fits no shape is one line before any training.

Shapes (``style='auto'`` tells them apart by the class's public methods):

- gym-style: ``reset`` and ``step`` and nothing else public (gym's and OpenEnv's ``render``, ``close``, ``seed``,
  ``state`` and gymnasium's wrapper helpers aside);
- TRL's ``environment_factory``: ``reset`` and any other public methods, which are its tools (``get_reward``, when
  present, is the environment's own reward, as in TRL);
- ``tools`` alone: plain functions (TRL's ``tools=``), alongside a TRL-style class or without one.

``style='tools'`` or ``'gym'`` overrides the guess (a TRL class whose only tool is named ``step``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aha.env.base import EnvError
from aha.env.builtin import BUILTIN_TOOLS
from aha.env.calls import template_supports_tools, tools_system_prompt
from aha.env.episode import Episode, GymEpisode, ToolEpisode
from aha.env.games import BUILTIN_ENVS
from aha.env.tools import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TIMEOUT_S, Tool, tool_from_function
from aha.errors import first_line

STYLES = ("auto", "tools", "gym")
GYM_LIFECYCLE = frozenset(
    {"render", "close", "seed", "state", "get_wrapper_attr", "set_wrapper_attr", "has_wrapper_attr"}
)
NOT_TOOLS = frozenset({"reset", "get_reward"})  # TRL: every other public method of the class is a tool
_SHAPES = (
    "expected TRL's environment_factory shape (a no-argument __init__, reset(**row) -> str | None, public methods "
    "with docstrings as tools) or a gym-style class (reset(seed=None, **row) and step(action_text))"
)
_SPEC_FORMS = "'path/to/file.py:Name' or 'package.module:Name'"


class Environment:
    """A checked environment: makes :class:`~aha.env.Episode` objects for the rollout, lists the tools.

    ``style``: 'tools' or 'gym'; ``name``: the class's name ('tools' for functions alone); ``tools``: every tool
    the model may call (the class's methods, bound to a probe instance, then the ``tools=`` functions);
    ``native_tools``: the tokenizer's chat template renders tools itself (else the Hermes format is used).
    """

    def __init__(
        self,
        name: str,
        style: str,
        factory: Callable[[], Any] | None,
        probe: Any,
        method_schemas: dict[str, dict],
        functions: list[Tool],
        tool_timeout_s: float | None,
        max_result_chars: int,
        tokenizer: Any = None,
    ):
        self.name, self.style, self.factory = name, style, factory
        self.method_schemas, self.functions = method_schemas, functions
        self.tool_timeout_s, self.max_result_chars = tool_timeout_s, max_result_chars
        self._pool: list[Any] = [probe] if factory is not None else []  # TRL's "construct once, reset often"
        self._episode_of: dict[int, Episode] = {}  # id(instance) → its latest episode (the gym reward function)
        self.tools = self._tools_of(probe)
        self.native_tools = bool(tokenizer is not None and self.tools and template_supports_tools(tokenizer))
        self._parser = tokenizer if self.native_tools else None

    def schemas(self) -> list[dict]:
        """The tools' JSON schemas, in the order they are listed to the model."""
        return [tool.schema for tool in self.tools]

    def system_prompt(self) -> str | None:
        """The Hermes block listing the tools (for a template without tool support), None without tools."""
        return tools_system_prompt(self.schemas()) if self.tools else None

    def episodes(self, n: int) -> list[Episode]:
        """``n`` episodes for a batch, each on its own instance. Instances are reused by the next call (as TRL
        pools them), so a batch's episodes and ``environments=`` are valid until the next batch is drawn."""
        if self.factory is not None:
            while len(self._pool) < n:
                self._pool.append(_build(self.factory, self.name))
        out: list[Episode] = []
        for i in range(n):
            instance = self._pool[i] if self.factory is not None else None
            episode: Episode
            if self.style == "gym":
                episode = GymEpisode(instance, self.name)
            else:
                tools = {tool.name: tool for tool in self._tools_of(instance)}
                episode = ToolEpisode(
                    instance, self.name, tools, self.tool_timeout_s, self.max_result_chars, self._parser
                )
            if instance is not None:
                self._episode_of[id(instance)] = episode
            out.append(episode)
        return out

    def reward_function(self) -> Callable[..., list] | None:
        """The environment's own reward as a reward function (TRL's signature, named after the class, weight 1 in
        TRL): gym-style, each episode's summed step rewards; a TRL class with ``get_reward``, its value. None
        otherwise. Called with ``environments=[episode.env, ...]``; None for an instance it does not know."""
        owner = type(self._pool[0]) if self._pool else None
        if self.style == "gym":

            def summed(prompts=None, completions=None, environments=(), **kwargs) -> list:
                episodes = [self._episode_of.get(id(e)) for e in environments]
                return [ep.reward if ep is not None else None for ep in episodes]

            summed.__name__ = self.name
            return summed
        if owner is None or not callable(getattr(owner, "get_reward", None)):
            return None

        def get_reward(prompts=None, completions=None, environments=(), **kwargs) -> list:
            return [_awaited(e.get_reward()) if type(e) is owner else None for e in environments]

        get_reward.__name__ = self.name
        return get_reward

    def summary(self) -> str:
        """One line for the run's first lines: the environment, its shape, its tools and their call format."""
        shape = {"gym": "gym-style (each model turn is the action)", "tools": "TRL-style tools"}[self.style]
        if self.style == "tools" and self.factory is None:
            shape = "tool functions"
        if not self.tools:
            return f"env: {self.name}, {shape}"
        names = ", ".join(tool.name for tool in self.tools)
        fmt = (
            "in the chat template's own format"
            if self.native_tools
            else 'in the Hermes format (<tool_call>{"name": …, "arguments": {…}}</tool_call>), listed in the system prompt'
        )
        return f"env: {self.name}, {shape}: {names}; tool calls {fmt}"

    def _tools_of(self, instance: Any) -> list[Tool]:
        bound = [Tool(name, getattr(instance, name), schema) for name, schema in self.method_schemas.items()]
        return bound + list(self.functions)


def build_environment(
    factory: Any = None,
    tools: Sequence[Any] = (),
    style: str = "auto",
    tool_timeout_s: float | None = DEFAULT_TIMEOUT_S,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    tokenizer: Any = None,
) -> Environment:
    """Check and build an environment from ``factory`` (a spec, a class, or a no-argument callable returning an
    instance, as TRL's ``environment_factory``) and ``tools`` (specs or functions, as TRL's ``tools=``).

    Specs: a built-in name (``guess_number``; tools ``calculator``, ``python``), ``path/to/file.py:Name`` or
    ``package.module:Name``. One instance is built now (a probe, as TRL does) to find its tools. Anything that
    fits no shape is an :class:`EnvError` of one line saying what was expected.
    """
    if style not in STYLES:
        raise EnvError(f"env.style must be one of {', '.join(STYLES)}, got {style!r}")
    if tool_timeout_s is not None and not tool_timeout_s > 0:
        raise EnvError(
            f"env.tool_timeout_s must be a positive number of seconds (or null for none), got {tool_timeout_s!r}"
        )
    if not isinstance(max_result_chars, int) or max_result_chars < 1:
        raise EnvError(f"env: max_result_chars must be a positive integer, got {max_result_chars!r}")
    if factory is None and not tools:
        raise EnvError("env: give env.factory (a class) or env.tools (functions), or both")
    functions = [_resolve_tool(item) for item in tools]
    if factory is None:
        if style == "gym":
            raise EnvError("env.style gym needs env.factory: a class with reset and step")
        env = Environment("tools", "tools", None, None, {}, functions, tool_timeout_s, max_result_chars, tokenizer)
        _no_duplicates(env.tools)
        return env
    label, make = _resolve_factory(factory)
    probe = _build(make, label)
    cls = type(probe)
    detected = detect_style(cls)
    if style == "auto":
        if detected is None:
            raise EnvError(f"env.factory {label}: {cls.__name__} fits no environment shape: {_SHAPES}")
        style = detected
    if not callable(getattr(probe, "reset", None)) and style == "tools":
        raise EnvError(f"env.factory {label}: {cls.__name__} has no reset(**row) (TRL's environment_factory needs one)")
    if style == "gym":
        missing = [m for m in ("reset", "step") if not callable(getattr(probe, m, None))]
        if missing:
            raise EnvError(f"env.factory {label}: {cls.__name__} has no {' or '.join(missing)} (gym-style needs both)")
        if functions:
            raise EnvError(
                f"env.tools cannot go with the gym-style {cls.__name__}: its step takes the whole model turn "
                "(use a TRL-style class, or env.style: tools)"
            )
    schemas: dict[str, dict] = {}
    if style == "tools":
        for name in public_methods(cls):
            if name not in NOT_TOOLS:
                schemas[name] = tool_from_function(getattr(probe, name), where=f"{cls.__name__}.{name}").schema
    env = Environment(cls.__name__, style, make, probe, schemas, functions, tool_timeout_s, max_result_chars, tokenizer)
    _no_duplicates(env.tools)
    return env


def detect_style(cls: type) -> str | None:
    """'gym' for a class whose public methods are ``reset`` and ``step`` (lifecycle ones aside), 'tools' for any
    other class with ``reset``, None for a class with no ``reset``.

    >>> class Game:
    ...     def reset(self, seed=None, **row): ...
    ...     def step(self, action): ...
    >>> class Wordle:
    ...     def reset(self, **row): ...
    ...     def guess(self, word: str) -> str: ...
    >>> detect_style(Game), detect_style(Wordle), detect_style(int)
    ('gym', 'tools', None)
    """
    methods = set(public_methods(cls))
    if "reset" not in methods:
        return None
    if "step" in methods and methods - {"reset", "step"} <= GYM_LIFECYCLE:
        return "gym"
    return "tools"


def public_methods(cls: type) -> list[str]:
    """The class's public methods, sorted (what TRL lists: functions defined on the class or its bases, not
    properties, not names starting with ``_``)."""
    return [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction) if not name.startswith("_")]


def load_object(spec: str, field: str = "env") -> Any:
    """The object a spec names: ``path/to/file.py:Name`` (imported as the reward loader imports it, so a reward
    function in the same file sees the same classes) or ``package.module:Name`` (``Name`` may be dotted)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EnvError(f"{field} {spec!r}: expected {_SPEC_FORMS}")
    target, attr = spec.strip().rsplit(":", 1)
    if not target or not attr:
        raise EnvError(f"{field} '{spec}': expected {_SPEC_FORMS}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        from aha.rewards.specs import RewardConfigError, load_file_module

        path = Path(target).expanduser()
        if not path.is_file():
            raise EnvError(f"{field} '{spec}': file not found: {path}")
        try:
            module = load_file_module(path, spec)
        except RewardConfigError as exc:  # ("reward 'SPEC': importing PATH failed: ...")
            raise EnvError(f"{field} '{spec}': {str(exc).split(': ', 1)[-1]}") from None
        where = str(path)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise EnvError(f"{field} '{spec}': cannot import module '{target}': {first_line(exc)}") from None
        where = f"module '{target}'"
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EnvError(f"{field} '{spec}': {where} has no '{attr}'")
        obj = getattr(obj, part)
    return obj


def _resolve_factory(factory: Any) -> tuple[str, Callable[[], Any]]:
    """``(label, a no-argument callable that builds an instance)``."""
    if isinstance(factory, str):
        label = f"'{factory}'"
        if factory in BUILTIN_ENVS:
            obj = BUILTIN_ENVS[factory]
        elif ":" not in factory:
            raise EnvError(
                f"env.factory: unknown environment '{factory}'; built-ins: {', '.join(sorted(BUILTIN_ENVS))} "
                f"(or {_SPEC_FORMS})"
            )
        else:
            obj = load_object(factory, "env.factory")
    else:
        obj, label = factory, getattr(factory, "__qualname__", type(factory).__name__)
    if not callable(obj):
        raise EnvError(f"env.factory {label}: expected a class, got {type(obj).__name__}: {_SHAPES}")
    required = _required_parameters(obj)
    if required and inspect.isclass(obj):
        raise EnvError(
            f"env.factory {label}: {obj.__name__}.__init__ needs {', '.join(required)}, but an environment is built "
            "with no arguments (TRL's environment_factory): give them defaults"
        )
    if required:
        raise EnvError(
            f"env.factory {label}: a function with parameters ({', '.join(required)}) is not an environment: "
            "a factory is a class or a no-argument callable; tools go in env.tools"
        )
    return label, obj


def _resolve_tool(item: Any) -> Tool:
    if isinstance(item, str):
        label = f"'{item}'"
        if item in BUILTIN_TOOLS:
            fn = BUILTIN_TOOLS[item]()
        elif ":" not in item:
            raise EnvError(
                f"env.tools: unknown tool '{item}'; built-ins: {', '.join(sorted(BUILTIN_TOOLS))} (or {_SPEC_FORMS})"
            )
        else:
            fn = load_object(item, "env.tools")
    else:
        fn, label = item, getattr(item, "__qualname__", type(item).__name__)
    if inspect.isclass(fn):
        raise EnvError(
            f"env.tools {label}: {fn.__name__} is a class; tools are functions (a class goes in env.factory)"
        )
    if not callable(fn):
        raise EnvError(f"env.tools {label}: expected a function with a docstring, got {type(fn).__name__}")
    return tool_from_function(fn, where=label)


def _build(make: Callable[[], Any], label: str) -> Any:
    try:
        return make()
    except Exception as exc:
        raise EnvError(
            f"env.factory {label}: building an instance raised {type(exc).__name__}: {first_line(exc)}"
        ) from exc


def _required_parameters(fn: Any) -> list[str]:
    """The parameters a call must give (a class: its constructor's, without ``self``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing we know we must give
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.default is p.empty and p.kind in kinds]


def _no_duplicates(tools: list[Tool]) -> None:
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise EnvError(f"env: two tools are named '{tool.name}': rename one (the model calls tools by name)")
        seen.add(tool.name)


def _awaited(value: Any) -> Any:
    """``get_reward`` may be ``async`` (TRL allows it): run it to its value."""
    if inspect.isawaitable(value):

        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value
