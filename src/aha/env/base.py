"""What every environment adapter shares: the error a user's environment can cause, one turn's answer, a step's
result in OpenEnv's shape, and the kinds of tool-call errors counted in metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aha.errors import AhaError

# The ways a tool call can fail; each is answered with an error message as the tool's result and counted
# (``env/tool_errors/<kind>``), never raised out of :meth:`aha.env.Episode.respond`.
ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "raised", "timeout")


class EnvError(AhaError, ValueError):
    """An environment or tool cannot be built or started: a spec that names nothing, a class or function that fits
    none of the accepted shapes, a tool without a usable docstring, a ``reset`` that raised (the row is named)."""


@dataclass
class Turn:
    """The environment's answer to one model turn.

    ``messages``: chat messages to append after the model's turn: ``{"role": "tool", "name": ..., "content": ...}``
    for each tool call (TRL's shape), or ``{"role": "user", "content": ...}`` for a gym-style observation; empty
    when the episode ended without a reply. ``done``: the episode is over (the model called no tool, or the
    environment said so). ``reward``: this turn's reward (gym-style; 0.0 for tools). ``tool_calls``: calls made
    this turn; ``errors``: the kind (see :data:`ERROR_KINDS`) of each call that failed.
    """

    messages: list[dict[str, Any]]
    done: bool
    reward: float = 0.0
    tool_calls: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One step's result in OpenEnv's ``StepResult`` shape: what built-in gym-style games return from ``step``."""

    observation: str
    reward: float = 0.0
    done: bool = False


def describe_row(row: dict, limit: int = 80) -> str:
    """A row, short enough for a one-line message.

    >>> describe_row({"prompt": "Guess the number", "low": 1, "high": 100}, limit=40)
    "{'prompt': 'Guess the number', 'low': ..."
    """
    text = repr(row)
    return text if len(text) <= limit else text[: limit - 3].rstrip() + " ..."
