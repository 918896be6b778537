"""Fuzzing (hypothesis): whatever a user writes in a config, a ``--set``, a data file or a preference file, aha either
accepts it or says what is wrong in one line (an :class:`aha.errors.AhaError`), never a traceback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aha.cli import app
from aha.config import RunConfig, TaskConfig, describe, load_config
from aha.data.load import load_rows
from aha.data.preferences import read_preferences
from aha.data.templates import check_prompts, render_prompt
from aha.errors import AhaError
from aha.models import DEFAULT_ALPHABET, char_tokenizer
from aha.rm import render_text
from aha.sft import demonstrations, encode_pairs
from aha.tasks.jsonl import jsonl_task

# AHA_FUZZ_EXAMPLES=2000 for a longer hunt; 150 keeps the file at ~15 s
FUZZ = settings(
    max_examples=int(os.environ.get("AHA_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FIELDS = [name for name, _, _ in describe()]
SECTIONS = sorted({name.split(".")[0] for name in FIELDS})

# ----------------------------------------------------------------------------- building blocks

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", ""]), "content": st.text(max_size=12) | json_values}
    ),
    max_size=3,
)
texts = st.text(max_size=16) | messages | json_values
# text that YAML reads as something other than what it looks like: dates that do not exist, tags, anchors, floats …
yaml_words = st.sampled_from(
    [
        "2020-13-45",
        "2021-02-30",
        "2001-12-14t21:59:43.10-05:00",
        "!!python/object:os.system",
        "!!binary abc",
        "*alias",
        "&a [1]",
        "[1, 2",
        "{a: 1}",
        "{a: {b: [c]}}",
        "~",
        "null",
        ".inf",
        "-.nan",
        "1e999",
        "0x1F",
        "0o17",
        "1_000",
        "yes",
        "no",
        "on",
        "'quoted'",
        "|",
        "- a\n- b",
        ": x",
        "[[[[[[[[",
        "'",
        '"',
        "\\",
        "\t",
        "\x00",
        "\ufeff",
        "%YAML 1.2",
    ]
)
yaml_values = yaml_words | st.text(max_size=20) | st.builds(lambda v: json.dumps(v), json_values)
keys = (
    st.sampled_from(FIELDS)
    | st.sampled_from(SECTIONS)
    | st.text(max_size=12)
    | st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(SECTIONS), st.text(max_size=8))
)


def one_line(error: AhaError) -> str:
    text = str(error)
    assert text.strip() and "\n" not in text.strip(), repr(text)
    return text


def accepted_or_one_line(fn, *args, **kwargs):
    """``fn``'s result, or None where it raised an AhaError with a one-line message (any other exception fails)."""
    try:
        return fn(*args, **kwargs)
    except AhaError as e:
        one_line(e)
        return None


def tmp_file(folder: str, name: str, content: str | bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


# ----------------------------------------------------------------------------- (a) configs


@FUZZ
@given(
    st.lists(
        st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, yaml_values), st.text(max_size=20)), min_size=1, max_size=3
    )
)
def test_set_overrides_give_a_config_or_one_line(sets):
    cfg = accepted_or_one_line(load_config, None, sets)
    assert cfg is None or isinstance(cfg, RunConfig)


config_dicts = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=8),
    json_values
    | st.dictionaries(
        st.sampled_from([f.split(".")[-1] for f in FIELDS]) | st.text(max_size=8), json_values | yaml_words, max_size=4
    ),
    max_size=4,
)


@FUZZ
@given(config_dicts, st.sampled_from(["dump", "raw"]), st.text(max_size=40) | yaml_words)
def test_yaml_files_give_a_config_or_one_line(data, how, raw):
    text = yaml.safe_dump(data) if how == "dump" else raw
    with tempfile.TemporaryDirectory() as folder:
        cfg = accepted_or_one_line(load_config, tmp_file(folder, "run.yaml", text))
    assert cfg is None or isinstance(cfg, RunConfig)


# ----------------------------------------------------------------------------- (b) task and SFT data

HOSTILE_LINES = [
    '{"prompt": 1' + "0" * 5000 + "}",
    "[" * 20000,
    '{"prompt": "a"' * 3,
    "NaN",
    "\x00",
    "\ufeff{}",
    '{"prompt": "\\ud800"}',
    '{"prompt": []}',
    '{"prompt": {}}',
    "[]",
    "{}",
    '"text"',
]
rows = (
    st.dictionaries(st.sampled_from(["prompt", "answer", "solution", "completion", "messages", "x"]), texts, max_size=5)
    | json_values
)
lines = st.lists(
    st.builds(json.dumps, rows) | st.text(max_size=30) | st.sampled_from(HOSTILE_LINES), min_size=0, max_size=6
)
PLAIN = char_tokenizer(DEFAULT_ALPHABET)
CHAT = char_tokenizer(DEFAULT_ALPHABET)
CHAT.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def tokenized(prompts: list, template: str) -> None:
    """What a run does with the prompts: checks them, then renders each (a one-line AhaError where it cannot)."""
    tok = CHAT if template == "chat" else PLAIN
    check_prompts([{"prompt": p} for p in prompts], tok, char_level=True)
    for p in prompts:
        render_prompt(p, tok, template)


@FUZZ
@given(lines, st.sampled_from([".jsonl", ".json"]), st.sampled_from(["plain", "chat"]))
def test_task_data_gives_rows_or_one_line(data_lines, suffix, template):
    content = "\n".join(data_lines) if suffix == ".jsonl" else "[" + ",".join(data_lines) + "]"
    with tempfile.TemporaryDirectory() as folder:
        path = tmp_file(folder, "data" + suffix, content)
        loaded = accepted_or_one_line(load_rows, path, ("prompt",))
        assert loaded is None or all(isinstance(r, dict) and r.get("prompt") not in (None, "") for r in loaded)
        task = accepted_or_one_line(jsonl_task, TaskConfig(name="dataset", path=path, num_eval=2))
        if task is not None:
            assert all(isinstance(r["prompt"], (str, list)) for r in task.train + task.eval)
            accepted_or_one_line(tokenized, [r["prompt"] for r in task.train + task.eval], template)
        demos = accepted_or_one_line(demonstrations, path)
        if demos is not None:
            accepted_or_one_line(encode_pairs, demos, CHAT if template == "chat" else PLAIN, template)


sft_rows = st.fixed_dictionaries({"prompt": texts, "completion": texts}) | st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "", 3]), "content": texts})
            | json_values,
            max_size=3,
        )
    }
)


@FUZZ
@given(st.lists(sft_rows, max_size=4), st.sampled_from(["plain", "chat"]))
def test_sft_rows_give_token_pairs_or_one_line(data, template):
    demos = accepted_or_one_line(demonstrations, data)
    if demos is not None:
        pairs = accepted_or_one_line(encode_pairs, demos, CHAT if template == "chat" else PLAIN, template)
        assert pairs is None or all(p and c for p, c in pairs)


@FUZZ
@given(st.lists(rows, max_size=5))
def test_in_memory_rows_give_rows_or_one_line(data):
    loaded = accepted_or_one_line(load_rows, data, ("prompt",))
    assert loaded is None or len(loaded) == len(data)


# ----------------------------------------------------------------------------- (c) preference data

tiers = st.lists(st.integers(-1, 5) | st.lists(st.integers(-1, 5), max_size=3) | scalars, max_size=6)
ranking_rows = st.fixed_dictionaries(
    {"prompt": texts, "completions": st.lists(texts, max_size=5) | json_values, "ranking": tiers | json_values}
)
pair_rows = st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts})
pref_rows = st.builds(
    lambda row, drop: {k: v for k, v in row.items() if k != drop},
    ranking_rows | pair_rows,
    st.sampled_from([None, "prompt", "ranking", "completions", "chosen"]),
)


@FUZZ
@given(st.lists(pref_rows | json_values, max_size=5), st.sampled_from(["memory", "jsonl"]))
def test_preference_rows_give_rankings_or_one_line(data, where):
    with tempfile.TemporaryDirectory() as folder:
        source = (
            data if where == "memory" else tmp_file(folder, "prefs.jsonl", "".join(json.dumps(r) + "\n" for r in data))
        )
        prefs = accepted_or_one_line(read_preferences, source)
    for pref in prefs or []:  # what the reward-model stage does with it: one text per completion
        for c in pref.completions:
            assert isinstance(render_text(pref.prompt, c, None, "plain"), str)
            accepted_or_one_line(render_text, pref.prompt, c, CHAT, "chat")
        ranked = sorted(i for tier in pref.ranking for i in tier)
        assert ranked == list(range(len(pref.completions))) and len(pref.ranking) >= 2  # each index once, a preference
        assert all(a != b for a, b in pref.pairs())


# ----------------------------------------------------------------------------- the CLI on hostile input


@pytest.mark.parametrize(
    "args, content",
    [
        (["config", "show", "--set", "train.steps=2020-13-45"], None),
        (["config", "show", "--set", "rewards=5"], None),
        (["train", "{cfg}", "--out", "{out}"], "task: {name: dataset, path: data.jsonl}\n"),
        (["train", "{cfg}", "--out", "{out}"], "rewards: 5\nlog: 2020-02-30\n"),
    ],
)
def test_the_cli_on_hostile_input_prints_one_line_and_fails(tmp_path, args, content):
    (tmp_path / "data.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": 1' + "0" * 5000 + "}\n")
    (tmp_path / "run.yaml").write_text(content or "")
    args = [a.format(cfg=tmp_path / "run.yaml", out=tmp_path / "run") for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
