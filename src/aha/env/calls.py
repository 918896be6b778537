"""Tool calls in the text a model writes, and the tools in the text it reads.

Where a chat template defines no tool syntax (SmolLM2's does not), the format is Hermes', which Qwen2.5's template
renders: the tools are listed as JSON schemas in the system prompt (:func:`tools_system_prompt`), the model writes
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one block per call), and results come back in a user
turn as ``<tool_response>...</tool_response>`` blocks (:func:`as_hermes_messages`).

Where the template renders tools itself (:func:`template_supports_tools`), the prompt is its own
(``apply_chat_template(..., tools=schemas)``, :func:`render_prompt`), and a model turn is parsed by the tokenizer's
response parser when it has one (``tokenizer.parse_response``, transformers ≥ 5), else as Hermes.

>>> calls = parse_tool_calls('Let me add. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
>>> [(c.name, c.arguments, c.error) for c in calls]
[('add', {'a': 1, 'b': 2}, None)]
>>> parse_tool_calls("<tool_call>{'name': 'add'}</tool_call>")[0].error
'malformed'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from aha.env.base import EnvError
from aha.errors import first_line

_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_HERMES_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_HERMES_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


@dataclass
class ToolCall:
    """One call found in a model turn: ``name`` and ``arguments``, or ``error='malformed'`` with ``detail`` (why)."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    detail: str = ""


def parse_tool_calls(text: str, tokenizer: Any = None) -> list[ToolCall]:
    """The tool calls in a model turn, in order (an empty list: the model called nothing).

    With a ``tokenizer`` that has a response parser (``response_template``/``response_schema``, transformers ≥ 5)
    its ``parse_response`` reads the turn (a call it cannot read is ``malformed``, unless the Hermes reading below
    finds calls); otherwise the Hermes format: each ``<tool_call>…</tool_call>`` block (an unclosed last block runs
    to the end of the text, as when generation stops at ``</tool_call>``) holds ``{"name": str, "arguments":
    object}`` (``"parameters"`` is taken for ``"arguments"``; arguments given as a JSON string are decoded). A block
    that is not such an object is a ``malformed`` call, reported rather than skipped, so the model is told.
    """
    hermes = [_hermes_call(m.group(1)) for m in _CALL.finditer(text)]
    if tokenizer is None or not (
        getattr(tokenizer, "response_template", None) or getattr(tokenizer, "response_schema", None)
    ):
        return hermes
    try:
        try:
            message = tokenizer.parse_response(text, prefix="")
        except TypeError:  # (transformers before parse_response took a prefix)
            message = tokenizer.parse_response(text)
    except Exception as exc:  # the template's parser cannot read this turn: a call it could not read
        return hermes or [ToolCall(None, error="malformed", detail=first_line(exc).rstrip("."))]
    if not isinstance(message, dict):
        return hermes
    return [_from_object(call) for call in message.get("tool_calls") or []]


def _hermes_call(block: str) -> ToolCall:
    body = block.strip()
    if not body:
        return ToolCall(None, error="malformed", detail="the <tool_call> block is empty")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCall(None, error="malformed", detail=f"not valid JSON ({exc.msg} at character {exc.pos})")
    except ValueError:  # (a number too long to convert)
        return ToolCall(None, error="malformed", detail="not valid JSON")
    return _from_object(obj)


def _from_object(obj: Any) -> ToolCall:
    """A call from its decoded JSON: ``{"name": ..., "arguments": {...}}`` (or OpenAI's ``{"function": {...}}``)."""
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict):
        return ToolCall(None, error="malformed", detail=f"expected a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(None, error="malformed", detail='the call has no "name"')
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # (some models write the arguments as a JSON string)
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return ToolCall(name, error="malformed", detail='"arguments" is a string that is not a JSON object')
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(
            name, error="malformed", detail=f'"arguments" must be an object, got {type(arguments).__name__}'
        )
    return ToolCall(name, arguments)


def tools_system_prompt(schemas: list[dict]) -> str:
    """The system-prompt block that lists ``schemas`` (one JSON object a line) and the call format, as Qwen2.5's
    and the Hermes templates render it.

    >>> print(tools_system_prompt([{"type": "function", "function": {"name": "add"}}]).splitlines()[6])
    {"type": "function", "function": {"name": "add"}}
    """
    lines = "".join("\n" + json.dumps(schema, ensure_ascii=False) for schema in schemas)
    return _HERMES_HEAD + lines + _HERMES_TAIL


def with_tools_prompt(messages: list[dict], schemas: list[dict]) -> list[dict]:
    """``messages`` with :func:`tools_system_prompt` added to the system message (a new one first if there is none);
    unchanged when there are no tools. The input is not modified.

    >>> out = with_tools_prompt([{"role": "user", "content": "2+2?"}], [{"type": "function", "function": {}}])
    >>> [m["role"] for m in out], out[0]["content"].startswith("# Tools")
    (['system', 'user'], True)
    """
    if not schemas:
        return list(messages)
    block = tools_system_prompt(schemas)
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{block}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def as_hermes_messages(messages: list[dict]) -> list[dict]:
    """``messages`` for a template with no tool role: each run of ``tool`` messages becomes one user message of
    ``<tool_response>`` blocks (what Qwen2.5's template renders); other messages are kept.

    >>> as_hermes_messages([{"role": "tool", "name": "add", "content": "3"}, {"role": "tool", "content": "4"}])
    [{'role': 'user', 'content': '<tool_response>\\n3\\n</tool_response>\\n<tool_response>\\n4\\n</tool_response>'}]
    """
    out: list[dict] = []
    for message in messages:
        if message.get("role") != "tool":
            out.append(message)
            continue
        block = f"<tool_response>\n{message.get('content', '')}\n</tool_response>"
        if out and out[-1].get("role") == "user" and out[-1].get("_tool_responses"):
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
        else:
            out.append({"role": "user", "content": block, "_tool_responses": True})
    return [{k: v for k, v in m.items() if k != "_tool_responses"} for m in out]


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tools itself: the schemas passed as ``tools=`` appear in the
    prompt, and a whole exchange (user → assistant with ``tool_calls`` → tool) keeps the call's name, its
    arguments and the tool's answer (TRL's ``supports_tool_calling`` check, plus the schemas). False without a
    template, or where the template drops any of them (e.g. SmolLM2's ChatML, the basic Llama 3 template)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    name, key, value, content = "tool_name_a8f3e2", "arg_key_b9d4f5", "arg_val_d6e7a9", "tool_content_c4f9a8"
    schema = {"type": "function", "function": {"name": name, "description": "probe", "parameters": {}}}
    function: dict[str, Any] = {"name": name, "arguments": {key: value}}
    call = {"type": "function", "function": function}
    exchange = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": name, "content": content},
    ]
    try:
        listed = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=[schema], tokenize=False, add_generation_prompt=True
        )
        try:
            rendered = tokenizer.apply_chat_template(exchange, tokenize=False)
        except TypeError:  # templates that want the arguments as a JSON string
            function["arguments"] = json.dumps({key: value})
            rendered = tokenizer.apply_chat_template(exchange, tokenize=False)
    except Exception:  # a template that rejects the roles (jinja's TemplateError and its kin)
        return False
    return name in listed and all(s in rendered for s in (name, key, value, content))


def render_prompt(tokenizer: Any, messages: list[dict], schemas: list[dict], native: bool) -> str:
    """The prompt text for ``messages`` with the tools ``schemas``, ready for generation: through the template's own
    tool support when ``native``, else with the Hermes system block and tool results as user turns."""
    if native:
        return tokenizer.apply_chat_template(
            messages, tools=schemas or None, tokenize=False, add_generation_prompt=True
        )
    return tokenizer.apply_chat_template(
        as_hermes_messages(with_tools_prompt(messages, schemas)), tokenize=False, add_generation_prompt=True
    )


def env_suffix_text(tokenizer: Any, messages: list[dict], native: bool) -> str:
    """The text to append after a finished model turn so that ``messages`` (a :class:`~aha.env.Turn`'s) follow it
    and the next assistant turn opens: the template's rendering of them, found as TRL does, by rendering a dummy
    exchange with and without them and keeping the difference after the template's end-of-turn (its
    ``eos_token``). The model's turn is taken to end with that token; add it first if generation stopped otherwise.
    Tool messages are Hermes user turns unless ``native``."""
    if not messages:
        return ""
    tools = [m for m in messages if m.get("role") == "tool"]
    assistant: dict[str, Any] = {"role": "assistant", "content": "x"}
    if native and tools:
        name = tools[0].get("name") or "tool"
        assistant = {"role": "assistant", "content": "", "tool_calls": [_dummy_call(name)]}
    else:
        messages = as_hermes_messages(messages)
    dummy = [{"role": "user", "content": "x"}, assistant]
    prefix = tokenizer.apply_chat_template(dummy, tokenize=False)
    full = tokenizer.apply_chat_template(dummy + messages, tokenize=False, add_generation_prompt=True)
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos in prefix:
        prefix = prefix[: prefix.rindex(eos) + len(eos)]
    if not full.startswith(prefix):
        raise EnvError(
            "the chat template renders a finished turn differently once more turns follow it, so turns cannot be "
            "appended: set model.chat_template to one that keeps earlier turns as they were"
        )
    return full[len(prefix) :]


def _dummy_call(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": {}}}
