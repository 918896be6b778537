"""Tools: a Python function (or an environment's bound method) with the JSON schema its docstring describes, called
with a model's arguments under a time limit.

A tool is what TRL takes in ``tools=[fn, ...]`` and finds on an ``environment_factory`` class: type hints, and a
Google-style docstring with a description and an ``Args:`` line per parameter. Its schema is built by
``transformers.utils.get_json_schema`` (what TRL and chat templates use), e.g. for::

    def multiply(a: int, b: int) -> int:
        '''Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        '''

``{"type": "function", "function": {"name": "multiply", "description": "Multiply two integers.", "parameters":
{"type": "object", "properties": {"a": {"type": "integer", ...}, ...}, "required": ["a", "b"]}, ...}}``.

:meth:`Tool.call` never raises: arguments that do not fit the signature or the schema's types, an exception from the
tool, or a call that outlives ``timeout_s`` each come back as ``(error text, kind)``. A call runs in a daemon thread
so a hang is cut off (the thread itself cannot be killed: it is left to finish, and its result is dropped); an
``async def`` tool runs on an event loop of its own in that thread.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aha.env.base import EnvError
from aha.errors import first_line

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RESULT_CHARS = 4000
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}
_HUNG: list[threading.Thread] = []  # threads of calls that timed out and are still running


@dataclass
class Tool:
    """A callable the model may call by ``name``; ``schema`` is its JSON schema (``{"type": "function", ...}``)."""

    name: str
    fn: Callable[..., Any]
    schema: dict[str, Any]

    def call(
        self,
        arguments: dict[str, Any],
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> tuple[str, str | None]:
        """Run the tool with ``arguments``: ``(result text, None)``, or ``(error text, kind)`` where kind is
        ``bad_arguments``, ``raised`` or ``timeout``. The result is ``str`` of what the tool returned (JSON for a
        dict or list), cut to ``max_chars``."""
        why = check_arguments(self, arguments)
        if why:
            return f"Error: bad arguments for {self.name}: {why}.", "bad_arguments"
        kwargs = {k: _integral(v, self.schema, k) for k, v in arguments.items()}
        outcome = _run(self.fn, kwargs, timeout_s, self.name)
        if outcome is None:
            return f"Error: {self.name} took longer than {timeout_s:g} s and was stopped.", "timeout"
        value, exc = outcome
        if exc is not None:
            return f"Error: {type(exc).__name__}: {exc}", "raised"
        return truncate(result_text(value), max_chars), None


def tool_from_function(fn: Callable[..., Any], where: str = "") -> Tool:
    """A :class:`Tool` for ``fn`` (a function or bound method); a missing docstring, description or type hint is a
    one-line :class:`EnvError` (``where`` names it, e.g. ``WordleEnv.guess``)."""
    from transformers.utils import get_json_schema

    label = where or getattr(fn, "__qualname__", None) or repr(fn)
    if not callable(fn):
        raise EnvError(f"tool {label}: a tool must be a function, got {type(fn).__name__}")
    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # DocstringParsingException, TypeHintParsingException, ...
        raise EnvError(
            f"tool {label}: {first_line(exc)} (a tool needs type hints and a Google-style docstring: a description, "
            "then 'Args:' with one line per parameter)"
        ) from None
    return Tool(name=schema["function"]["name"], fn=fn, schema=schema)


def check_arguments(tool: Tool, arguments: Any) -> str | None:
    """Why ``arguments`` cannot be passed to ``tool`` (None when they can): not an object, a missing or unknown
    parameter, a value of the wrong JSON type."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    try:
        inspect.signature(tool.fn).bind(**arguments)
    except TypeError as exc:
        return str(exc)
    except ValueError:  # a builtin without a signature: the schema's check below is all there is
        pass
    properties = tool.schema.get("function", {}).get("parameters", {}).get("properties", {})
    for key, value in arguments.items():
        spec = properties.get(key, {})
        expected = spec.get("type")
        if value is None and spec.get("nullable"):
            continue
        names = expected if isinstance(expected, list) else [expected] if isinstance(expected, str) else []
        kinds = tuple(t for name in names for t in _JSON_TYPES.get(name, ()))
        if not kinds:  # (a schema this check does not read: anyOf, a custom type)
            continue
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok and "integer" in names and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            return f"'{key}' must be {' or '.join(names)}, got {_json_type(value)} {json.dumps(value)[:40]}"
        if "enum" in spec and value not in spec["enum"]:
            return f"'{key}' must be one of {spec['enum']}, got {json.dumps(value)[:40]}"
    return None


def result_text(value: Any) -> str:
    """What a tool's return value reads as in the conversation: a string as it is, a dict or list as JSON, anything
    else as ``str``.

    >>> result_text(3), result_text("GGXYX"), result_text({"score": 2})
    ('3', 'GGXYX', '{"score": 2}')
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, saying how much was left out.

    >>> truncate("abcdefghij", 4)
    'abcd… [6 more characters]'
    """
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… [{len(text) - max_chars} more characters]"


def hung_calls() -> int:
    """Tool calls that timed out and whose threads still run (a tool that never returns holds one for good)."""
    _HUNG[:] = [t for t in _HUNG if t.is_alive()]
    return len(_HUNG)


def _run(fn: Callable[..., Any], kwargs: dict, timeout_s: float | None, name: str):
    """``(value, None)`` or ``(None, exception)``; None when the call outlived ``timeout_s``."""
    if timeout_s is None:
        return _invoke(fn, kwargs)
    box: list[tuple[Any, BaseException | None]] = []
    thread = threading.Thread(target=lambda: box.append(_invoke(fn, kwargs)), name=f"aha-tool-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _HUNG.append(thread)
        if hung_calls() in (1, 10, 100):
            log.warning("env: %d tool call(s) timed out and still run in the background (tool %s)", len(_HUNG), name)
        return None
    return box[0] if box else (None, RuntimeError("the tool's thread ended without a result"))


def _invoke(fn: Callable[..., Any], kwargs: dict) -> tuple[Any, BaseException | None]:
    try:
        value = fn(**kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
        return value, None
    except (Exception, SystemExit) as exc:  # (SystemExit: a tool's sys.exit() must not end the run)
        return None, exc


async def _awaited(value: Any) -> Any:
    return await value


def _integral(value: Any, schema: dict, key: str) -> Any:
    """3.0 → 3 where the schema wants an integer (a model may write either)."""
    spec = schema.get("function", {}).get("parameters", {}).get("properties", {}).get(key, {})
    if spec.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_type(value: Any) -> str:
    for name, kinds in _JSON_TYPES.items():
        if isinstance(value, kinds) and not (isinstance(value, bool) and name in ("integer", "number")):
            return name
    return type(value).__name__
