"""Environments and tools for multi-turn episodes, in the shapes users already write.

One entry, :func:`build_environment`, takes any of them and checks it once, when the run is built:

- TRL's ``environment_factory``: a class with a no-argument ``__init__``, ``reset(**row) -> str | None`` and public
  methods with Google-style docstrings as tools (``get_reward()``, if defined, is its own reward);
- TRL's ``tools=[fn, ...]``: plain functions with docstrings, stateless tools (alone or beside such a class);
- gym-style text environments: ``reset(seed=None, **row)`` and ``step(action_text)`` returning OpenEnv's
  ``StepResult`` (``.observation``, ``.reward``, ``.done``) or gymnasium's 5-tuple;

and the :class:`Environment` it returns makes :class:`Episode` objects with one interface for the rollout:
``start(row, seed)`` → text for the prompt, ``respond(model_text)`` → :class:`Turn` (messages to append, done,
reward), counters for metrics (:func:`episode_metrics`). Tool calls use the chat template's own format where it has
one (:func:`template_supports_tools`), else Hermes' ``<tool_call>{...}</tool_call>`` (:mod:`aha.env.calls`).

>>> env = build_environment("guess_number")
>>> [episode] = env.episodes(1)
>>> episode.start({"low": 1, "high": 8, "target": 6}, seed=0)[:44]
'I am thinking of a whole number from 1 to 8.'
>>> [(t.messages[0]["content"], t.done) for t in map(episode.respond, ["4", "6"])], episode.reward
([('Higher.', False), ('Correct!', True)], 1.0)
"""

from __future__ import annotations

from aha.env.base import ERROR_KINDS, EnvError, Step, Turn
from aha.env.build import Environment, build_environment, detect_style, load_object
from aha.env.builtin import calculator, python_tool
from aha.env.calls import (
    ToolCall,
    as_hermes_messages,
    env_suffix_text,
    parse_tool_calls,
    render_prompt,
    template_supports_tools,
    tools_system_prompt,
    with_tools_prompt,
)
from aha.env.episode import (
    Episode,
    GymEpisode,
    ToolEpisode,
    episode_metrics,
    observation_text,
    read_step,
    respond_all,
    with_observation,
)
from aha.env.games import GuessNumber
from aha.env.tools import Tool, tool_from_function

__all__ = [
    "ERROR_KINDS",
    "EnvError",
    "Environment",
    "Episode",
    "GuessNumber",
    "GymEpisode",
    "Step",
    "Tool",
    "ToolCall",
    "ToolEpisode",
    "Turn",
    "as_hermes_messages",
    "build_environment",
    "calculator",
    "detect_style",
    "env_suffix_text",
    "episode_metrics",
    "load_object",
    "observation_text",
    "parse_tool_calls",
    "python_tool",
    "read_step",
    "render_prompt",
    "respond_all",
    "template_supports_tools",
    "tool_from_function",
    "tools_system_prompt",
    "with_observation",
    "with_tools_prompt",
]
