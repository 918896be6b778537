"""Episodes: one user environment instance driven turn by turn, whatever its shape.

The rollout's loop, for each batch of rows (``env`` an :class:`~aha.env.Environment`)::

    episodes = env.episodes(len(rows))
    observations = [ep.start(row, seed=s) for ep, row, s in zip(episodes, rows, seeds)]  # text to append, or None
    while any running:                        # one batched generate over the episodes still running
        turn = ep.respond(model_text)         # → Turn: messages to append, done, reward
    rewards: ep.reward (gym: the sum of step rewards), reward functions get environments=[ep.env, ...]

Two kinds behind one interface:

- :class:`ToolEpisode` (TRL's ``environment_factory`` class, or ``tools=`` functions alone): ``reset(**row)``; each
  model turn is parsed for tool calls, each call is answered by a ``tool`` message; a turn without a call ends
  the episode. Tool errors are answers, never exceptions.
- :class:`GymEpisode` (gym / OpenEnv / gymnasium): ``reset(seed=..., **row)``; each model turn is the action
  ``step(text)``; the observation comes back as a ``user`` message; rewards add up; ``done`` (or gymnasium's
  ``terminated or truncated``) ends it. A ``step`` that raises ends the episode and is counted (``step_raised``).

A ``reset`` that raises is an :class:`~aha.env.EnvError` naming the row: the run stops with that line.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aha.env.base import EnvError, Turn, describe_row
from aha.env.calls import parse_tool_calls
from aha.env.tools import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TIMEOUT_S, Tool
from aha.errors import first_line

log = logging.getLogger(__name__)

_TEXT_FIELDS = ("text", "content", "message", "prompt")


class Episode:
    """One episode of one environment instance (``env``: what reward functions receive as ``environments=``).

    Counters, read after the episode: ``turns`` (model turns answered), ``tool_calls``, ``errors`` (kind → count),
    ``calls_by_tool`` (tool name → count), ``rewards`` (one per step, gym-style).
    """

    style = ""

    def __init__(self, env: Any, name: str):
        self.env = env
        self.name = name
        self.done = False
        self.turns = 0
        self.tool_calls = 0
        self.errors: Counter[str] = Counter()
        self.calls_by_tool: Counter[str] = Counter()
        self.rewards: list[float] = []

    def start(self, row: dict, seed: int | None = None, row_index: int | None = None) -> str | None:
        """Reset the environment for ``row``: the text to append to the prompt's last user message (as TRL does),
        or None. A ``reset`` that raises is an :class:`EnvError` naming the row (``row_index`` when given)."""
        raise NotImplementedError

    def respond(self, model_text: str) -> Turn:
        """The environment's answer to one model turn (never raises for the model's or a tool's sake)."""
        raise NotImplementedError

    @property
    def reward(self) -> float | None:
        """The episode's own reward: the sum of step rewards (gym-style), None where the environment gives none."""
        return None

    def _reset(self, row: dict, seed: int | None, row_index: int | None, with_seed: str) -> Any:
        self.done, self.turns, self.tool_calls, self.rewards = False, 0, 0, []
        self.errors.clear()
        self.calls_by_tool.clear()
        reset = getattr(self.env, "reset", None)
        if reset is None:
            return None
        try:
            return reset(**reset_kwargs(reset, row, seed, with_seed))
        except Exception as exc:
            where = f"row {row_index} " if row_index is not None else "row "
            raise EnvError(
                f"env {self.name}: reset raised on {where}{describe_row(row)}: {type(exc).__name__}: {first_line(exc)}"
            ) from exc


class ToolEpisode(Episode):
    """TRL's shapes: an ``environment_factory`` instance whose tools are its public methods, plus ``tools=``
    functions (or those functions alone, ``env=None``). ``tools``: name → :class:`Tool` bound to this instance."""

    style = "tools"

    def __init__(
        self,
        env: Any,
        name: str,
        tools: dict[str, Tool],
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
        tokenizer: Any = None,
    ):
        super().__init__(env, name)
        self.tools = tools
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self.tokenizer = tokenizer  # (its response parser reads the calls, where it has one)

    def start(self, row: dict, seed: int | None = None, row_index: int | None = None) -> str | None:
        return observation_text(self._reset(row, seed, row_index, with_seed="named"))

    def respond(self, model_text: str) -> Turn:
        if self.done:
            return Turn([], done=True)
        self.turns += 1
        calls = parse_tool_calls(model_text, self.tokenizer)
        if not calls:
            self.done = True
            return Turn([], done=True)
        messages, errors = [], []
        for call in calls:
            self.tool_calls += 1
            name = call.name or "invalid"
            kind: str | None
            if call.error:
                content, kind = _malformed(call.detail), call.error
            elif call.name not in self.tools:
                known = ", ".join(sorted(self.tools)) or "none"
                content, kind = f"Error: unknown tool {call.name!r}. The tools are: {known}.", "unknown_tool"
            else:
                self.calls_by_tool[name] += 1
                content, kind = self.tools[name].call(call.arguments, self.timeout_s, self.max_result_chars)
            if kind:
                self.errors[kind] += 1
                errors.append(kind)
            messages.append({"role": "tool", "name": name, "content": content})
        return Turn(messages, done=False, tool_calls=len(calls), errors=errors)


class GymEpisode(Episode):
    """Gym-style: ``reset(seed=None, **row)`` and ``step(action_text)`` returning an object with ``.reward`` and
    ``.done`` (and ``.observation``, OpenEnv's ``StepResult``) or a tuple: gymnasium's ``(obs, reward, terminated,
    truncated, info)``, old gym's ``(obs, reward, done, info)``, or ``(obs, reward, done)``."""

    style = "gym"

    def start(self, row: dict, seed: int | None = None, row_index: int | None = None) -> str | None:
        result = self._reset(row, seed, row_index, with_seed="accepted")
        if isinstance(result, tuple) and len(result) == 2:  # gymnasium: (observation, info)
            result = result[0]
        return observation_text(result)

    def respond(self, model_text: str) -> Turn:
        if self.done:
            return Turn([], done=True)
        self.turns += 1
        try:
            observation, reward, done = read_step(self.env.step(model_text))
        except Exception as exc:
            self.done = True
            self.errors["step_raised"] += 1
            log.warning("env %s: step raised %s: %s (the episode ends)", self.name, type(exc).__name__, exc)
            return Turn([], done=True, errors=["step_raised"])
        self.rewards.append(reward)
        self.done = done
        messages = [] if observation is None else [{"role": "user", "content": observation}]
        return Turn(messages, done=done, reward=reward)

    @property
    def reward(self) -> float | None:
        return float(sum(self.rewards))


def respond_all(episodes: Sequence[Episode], texts: Sequence[str], workers: int = 1) -> list[Turn]:
    """Each episode's answer to its model turn, in order. ``workers`` > 1 answers that many episodes at once, in
    threads, so tools that wait (the sandboxed ``python``, a network call) overlap; each instance still sees one
    call at a time, but instances of a class that share mutable state (class attributes) should stay at 1."""
    if len(episodes) != len(texts):
        raise ValueError(f"respond_all got {len(texts)} model turns for {len(episodes)} episodes")
    if workers <= 1 or len(episodes) <= 1:
        return [episode.respond(text) for episode, text in zip(episodes, texts)]
    with ThreadPoolExecutor(max_workers=min(workers, len(episodes)), thread_name_prefix="aha-env") as pool:
        return list(pool.map(lambda pair: pair[0].respond(pair[1]), zip(episodes, texts)))


def with_observation(prompt: str | list[dict], observation: str | None) -> str | list[dict]:
    """The prompt with ``reset``'s observation appended to its last message, as TRL does (no separator added; a
    conversational prompt is copied, not changed in place).

    >>> with_observation([{"role": "user", "content": "Play. "}], "Secret has 5 letters.")
    [{'role': 'user', 'content': 'Play. Secret has 5 letters.'}]
    >>> with_observation("Guess: ", None)
    'Guess: '
    """
    if observation is None:
        return prompt
    if isinstance(prompt, str):
        return prompt + observation
    if not prompt:
        return [{"role": "user", "content": observation}]
    last = prompt[-1]
    return [*prompt[:-1], {**last, "content": f"{last.get('content') or ''}{observation}"}]


def read_step(result: Any) -> tuple[str | None, float, bool]:
    """``(observation text, reward, done)`` from what a gym-style ``step`` returned.

    >>> read_step(("Higher.", 0.0, False, False, {}))
    ('Higher.', 0.0, False)
    >>> read_step(("x", 1, True, {})), read_step("plain text")
    (('x', 1.0, True), ('plain text', 0.0, False))
    """
    if isinstance(result, tuple):
        if len(result) == 5:
            observation, reward, terminated, truncated, _ = result
            done = bool(terminated) or bool(truncated)
        elif len(result) in (3, 4):
            observation, reward, done = result[:3]
        else:
            raise ValueError(
                f"step returned a tuple of {len(result)}; expected (obs, reward, terminated, truncated, info), "
                "(obs, reward, done, info) or (obs, reward, done)"
            )
        return observation_text(observation), _number(reward), bool(done)
    reward, done = getattr(result, "reward", None), getattr(result, "done", False)
    observation = result.observation if hasattr(result, "observation") else result
    return observation_text(observation), _number(reward), bool(done)


def observation_text(observation: Any) -> str | None:
    """An observation as text: a string as it is; OpenEnv's ``StepResult`` by its ``.observation``; an object or
    dict by its first string field of ``text``, ``content``, ``message``, ``prompt``; a dict otherwise as JSON;
    anything else by ``str``. None stays None.

    >>> from types import SimpleNamespace
    >>> observation_text(SimpleNamespace(observation=SimpleNamespace(text="Lower.", done=False)))
    'Lower.'
    """
    if observation is None or isinstance(observation, str):
        return observation
    if hasattr(observation, "observation"):
        return observation_text(observation.observation)
    for key in _TEXT_FIELDS:
        value = observation.get(key) if isinstance(observation, dict) else getattr(observation, key, None)
        if isinstance(value, str):
            return value
    if isinstance(observation, dict):
        return json.dumps(observation, ensure_ascii=False, default=str)
    return str(observation)


def reset_kwargs(reset: Any, row: dict, seed: int | None, with_seed: str) -> dict:
    """The keyword arguments ``reset`` gets for ``row``: the whole row where it takes ``**kwargs`` (TRL's
    ``reset(**row)``), else only the columns it names (gymnasium's ``reset(*, seed, options)`` gets the row as
    ``options``). ``seed`` is passed where ``reset`` names a ``seed`` parameter, or (``with_seed='accepted'``,
    gym-style) also where it takes ``**kwargs``; a ``seed`` column of the row wins over it."""
    try:
        params = inspect.signature(reset).parameters
    except (TypeError, ValueError):
        return dict(row)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = dict(row) if var_kw else {k: v for k, v in row.items() if k in named}
    if "options" in named and "options" not in row and not var_kw:
        kwargs["options"] = dict(row)
    if seed is not None and "seed" not in kwargs and ("seed" in named or (var_kw and with_seed == "accepted")):
        kwargs["seed"] = seed
    return kwargs


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Per-episode means over a batch, under the names the run logs: ``env/turns``, ``env/tool_calls``,
    ``env/tool_errors`` and ``env/tool_errors/<kind>``, ``env/tool_calls/<tool>``, ``env/done`` (the share that
    ended by themselves, not cut by a cap), and ``env/reward`` (gym-style)."""
    if not episodes:
        return {}
    n = len(episodes)
    out = {
        "env/turns": sum(e.turns for e in episodes) / n,
        "env/done": sum(e.done for e in episodes) / n,
    }
    if any(e.style == "tools" for e in episodes):  # (also counters copied from a worker: EpisodeStats)
        out["env/tool_calls"] = sum(e.tool_calls for e in episodes) / n
        out["env/tool_errors"] = sum(sum(e.errors.values()) for e in episodes) / n
    kinds: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    for e in episodes:
        kinds.update(e.errors)
        tools.update(e.calls_by_tool)
    prefix = "env/tool_errors/" if "env/tool_calls" in out else "env/errors/"
    out.update({f"{prefix}{kind}": count / n for kind, count in sorted(kinds.items())})
    out.update({f"env/tool_calls/{name}": count / n for name, count in sorted(tools.items())})
    rewards = [e.reward for e in episodes if e.reward is not None]
    if rewards:
        out["env/reward"] = sum(rewards) / len(rewards)
    return out


def _malformed(detail: str) -> str:
    return (
        f"Error: malformed tool call: {detail}. Write "
        '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>.'
    )


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"step returned a reward of type {type(value).__name__}, not a number") from None
