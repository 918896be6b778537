"""Tool calls: schemas from docstrings, the Hermes format, chat templates with and without tool support (checked
against TRL's own check), and every way a call fails answered as the tool's text, counted, never raised."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

from aha.env import (
    as_hermes_messages,
    build_environment,
    env_suffix_text,
    episode_metrics,
    parse_tool_calls,
    render_prompt,
    template_supports_tools,
    tool_from_function,
    with_tools_prompt,
)

RELEASE = threading.Event()  # lets the hung tool of the timeout test finish once the test is over


def lookup(city: str, days: int = 1, units: str = "metric") -> dict:
    """Look up the weather.

    Args:
        city: The city's name.
        days: How many days ahead.
        units: metric or imperial.
    """
    return {"city": city, "days": days, "temp": 21}


def divide(a: float, b: float) -> float:
    """Divide two numbers.

    Args:
        a: The dividend.
        b: The divisor.
    """
    return a / b


def hang(seconds: float) -> str:
    """Wait.

    Args:
        seconds: How long.
    """
    RELEASE.wait(seconds)
    return "done"


async def fetch(url: str) -> str:
    """Fetch a page.

    Args:
        url: The address.
    """
    await asyncio.sleep(0)
    return f"<html>{url}</html>"


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_schemas_come_from_docstrings_as_transformers_builds_them():
    schema = tool_from_function(lookup).schema
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "lookup" and function["description"] == "Look up the weather."
    assert function["parameters"]["properties"]["days"] == {"type": "integer", "description": "How many days ahead."}
    assert function["parameters"]["required"] == ["city"]


def test_hermes_parsing():
    text = (
        "First the weather. <tool_call>\n"
        + json.dumps({"name": "lookup", "arguments": {"city": "Oslo"}})
        + "\n</tool_call>\n<tool_call>"
        + json.dumps({"name": "divide", "parameters": {"a": 1, "b": 2}})
        + "</tool_call><tool_call>"
        + json.dumps({"name": "lookup", "arguments": json.dumps({"city": "Rome"})})  # unclosed: stopped at </tool_call>
    )
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("lookup", {"city": "Oslo"}, None),
        ("divide", {"a": 1, "b": 2}, None),
        ("lookup", {"city": "Rome"}, None),
    ]
    assert parse_tool_calls("The answer is 4.") == []
    assert parse_tool_calls('<tool_call>{"name": "lookup"}</tool_call>')[0].arguments == {}
    bad = {
        '<tool_call>{"name": "lookup", "arguments": {"city": "Oslo"</tool_call>': "not valid JSON",
        "<tool_call></tool_call>": "empty",
        '<tool_call>["lookup"]</tool_call>': "expected a JSON object, got list",
        '<tool_call>{"arguments": {}}</tool_call>': 'no "name"',
        '<tool_call>{"name": "lookup", "arguments": [1]}</tool_call>': "must be an object, got list",
    }
    for text, why in bad.items():
        [parsed] = parse_tool_calls(text)
        assert parsed.error == "malformed" and why in parsed.detail, (text, parsed)


def test_every_failed_call_is_answered_counted_and_the_episode_goes_on():
    env = build_environment(tools=[lookup, divide, hang], tool_timeout_s=0.3)
    [episode] = env.episodes(1)
    episode.start({"prompt": "weather?"})
    cases = {
        '<tool_call>{"name": "lookup", "arguments": {"city": </tool_call>': ("malformed", "Error: malformed tool call"),
        call("forecast", city="Oslo"): (
            "unknown_tool",
            "Error: unknown tool 'forecast'. The tools are: divide, hang, lookup.",
        ),
        call("lookup"): ("bad_arguments", "Error: bad arguments for lookup: missing a required argument: 'city'."),
        call("lookup", city="Oslo", country="NO"): ("bad_arguments", "unexpected keyword argument 'country'"),
        call("lookup", city="Oslo", days="two"): ("bad_arguments", "'days' must be integer, got string \"two\""),
        call("divide", a=True, b=2): ("bad_arguments", "'a' must be number, got boolean"),
        call("divide", a=1, b=0): ("raised", "Error: ZeroDivisionError: division by zero"),
        call("hang", seconds=30): ("timeout", "Error: hang took longer than 0.3 s and was stopped."),
    }
    try:
        for text, (kind, message) in cases.items():
            start = time.monotonic()
            turn = episode.respond(text)
            assert time.monotonic() - start < 2.0
            assert not turn.done and turn.errors == [kind] and turn.tool_calls == 1, text
            assert message in turn.messages[0]["content"] and turn.messages[0]["role"] == "tool", turn.messages
    finally:
        RELEASE.set()
    ok = episode.respond(call("lookup", city="Oslo", days=2.0))  # (2.0 is taken as the integer 2)
    assert ok.errors == [] and json.loads(ok.messages[0]["content"]) == {"city": "Oslo", "days": 2, "temp": 21}
    assert episode.respond("It is 21 degrees.").done
    metrics = episode_metrics([episode])
    assert metrics["env/tool_calls"] == 9 and metrics["env/tool_errors"] == 8 and metrics["env/turns"] == 10
    assert metrics["env/tool_errors/bad_arguments"] == 4 and metrics["env/tool_errors/timeout"] == 1
    assert metrics["env/tool_calls/lookup"] == 4 and "env/tool_calls/forecast" not in metrics


def test_async_tools_and_long_results():
    def shout(text: str) -> str:
        """Repeat loudly.

        Args:
            text: What to say.
        """
        return text.upper() * 1000

    [episode] = build_environment(tools=[fetch, shout], max_result_chars=50).episodes(1)
    episode.start({})
    turn = episode.respond(call("fetch", url="a.org") + call("shout", text="hi"))
    assert turn.messages[0]["content"] == "<html>a.org</html>"
    assert turn.messages[1]["content"] == "HI" * 25 + "… [1950 more characters]"


def test_a_tool_that_exits_does_not_end_the_run():
    def leave(code: int) -> str:
        """Exit.

        Args:
            code: The exit code.
        """
        raise SystemExit(code)

    [episode] = build_environment(tools=[leave]).episodes(1)
    episode.start({})
    assert episode.respond(call("leave", code=3)).errors == ["raised"]


# ─────────────────────────────── chat templates ───────────────────────────────


def tokenizer(template: str):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_end|>": 1}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        unk_token="<unk>",
        eos_token="<|im_end|>",
    )
    tok.chat_template = template
    return tok


def trl_template(name: str) -> str:
    """A chat template TRL ships (found without importing trl, which is slow to import)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        pytest.skip("trl is not installed")
    return (Path(spec.origin).parent / "chat_templates" / f"{name}.jinja").read_text()


def test_template_support_is_trls_check_plus_the_tools_listing():
    from aha.gguf import CHATML_TEMPLATE

    assert template_supports_tools(tokenizer(CHATML_TEMPLATE)) is False  # SmolLM2's template: no tool role, no tools
    assert template_supports_tools(tokenizer(trl_template("qwen2_5"))) is True
    lists_nothing = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {{ m.get('tool_calls') }}{% endfor %}"
    assert template_supports_tools(tokenizer(lists_nothing)) is False  # renders calls, but never lists the tools
    no_template = tokenizer(CHATML_TEMPLATE)
    no_template.chat_template = None
    assert template_supports_tools(no_template) is False


def test_hermes_prompt_and_suffix_on_a_template_without_tools():
    from aha.gguf import CHATML_TEMPLATE

    env = build_environment(tools=[lookup], tokenizer=tokenizer(CHATML_TEMPLATE))
    assert env.native_tools is False and "Hermes" in env.summary()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]
    prompt = render_prompt(tokenizer(CHATML_TEMPLATE), messages, env.schemas(), native=False)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert json.dumps(env.schemas()[0]) in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert with_tools_prompt(messages, [])[0]["content"] == "Be brief."
    tool_messages = [{"role": "tool", "name": "lookup", "content": "21"}, {"role": "tool", "content": "x"}]
    assert as_hermes_messages(tool_messages)[0]["content"].count("<tool_response>") == 2
    suffix = env_suffix_text(tokenizer(CHATML_TEMPLATE), tool_messages[:1], native=False)
    assert suffix == "\n<|im_start|>user\n<tool_response>\n21\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    observation = env_suffix_text(tokenizer(CHATML_TEMPLATE), [{"role": "user", "content": "Lower."}], native=False)
    assert observation == "\n<|im_start|>user\nLower.<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_with_tool_support_renders_its_own_prompt():
    qwen = tokenizer(trl_template("qwen2_5"))
    env = build_environment(tools=[lookup], tokenizer=qwen)
    assert env.native_tools is True and "own format" in env.summary()
    prompt = render_prompt(qwen, [{"role": "user", "content": "Weather?"}], env.schemas(), native=True)
    assert '"name": "lookup"' in prompt and "<tools>" in prompt
    [episode] = env.episodes(1)
    episode.start({})
    turn = episode.respond('<tool_call>\n{"name": "lookup", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert turn.errors == [] and json.loads(turn.messages[0]["content"])["city"] == "Oslo"
    suffix = env_suffix_text(qwen, turn.messages, native=True)
    assert suffix.startswith("\n<|im_start|>user\n<tool_response>\n{") and suffix.endswith("<|im_start|>assistant\n")


def test_a_tokenizers_own_response_parser_reads_the_calls():
    """A call syntax other than Hermes' (``[CALL]...[/CALL]``), read by transformers' ``parse_response``."""
    tok = tokenizer(trl_template("qwen2_5"))
    tok.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|im_start|>assistant\n",
        "fields": {
            "tool_calls": {
                "open": "[CALL]",
                "close_pattern": r"\[/CALL\]\s*",
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
        },
    }
    text = 'Checking. [CALL]{"name": "lookup", "arguments": {"city": "Oslo"}}[/CALL]'
    try:
        tok.parse_response(text, prefix="")
    except Exception as exc:  # (transformers before response templates)
        pytest.skip(f"this transformers has no response templates: {exc}")
    assert [(c.name, c.arguments) for c in parse_tool_calls(text, tok)] == [("lookup", {"city": "Oslo"})]
    assert parse_tool_calls(text) == []  # (not Hermes)
    [bad] = parse_tool_calls('[CALL]{"name": "lookup", "arguments": {"city": "Oslo"}[/CALL]', tok)
    assert bad.error == "malformed" and "JSON" in bad.detail
    assert parse_tool_calls("It is sunny.", tok) == []
