"""``aha label serve``: importing tasks idempotently, the admin token shown once, a bad tasks file as one line, and
``--model`` sampling K completions per prompt first."""

from __future__ import annotations

import json
import re

import pytest
from label_env import task_rows
from typer.testing import CliRunner

from aha.cli import app as aha_cli
from aha.label.store import Store


def test_cli_serve_imports_idempotently_and_shows_the_admin_token_once(tmp_path, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    tasks = tmp_path / "samples.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in task_rows(3)))
    db = tmp_path / "r.sqlite"
    args = ["label", "serve", "--db", str(db), "--tasks", str(tasks), "--port", "8123", "--per-task", "2"]
    first = CliRunner().invoke(aha_cli, args)
    assert first.exit_code == 0, first.output
    assert "tasks: 3 added, 0 already in" in first.output and "admin token (shown once" in first.output
    token = re.search(r"store it\): (\S+)", first.output).group(1)
    second = CliRunner().invoke(aha_cli, args[:-2])
    assert second.exit_code == 0 and "tasks: 0 added, 3 already in" in second.output
    assert "admin token" not in second.output and "each task goes to 2 labeler(s)" in second.output
    assert served[0] == {"host": "127.0.0.1", "port": 8123, "log_level": "warning", "proxy_headers": False}
    assert "plain HTTP" not in first.output  # only said where other machines can connect
    assert Store(db).user_for_token(token)["is_admin"] == 1
    add = CliRunner().invoke(aha_cli, ["label", "add-labeler", "dana", "--db", str(db)])
    assert add.exit_code == 0 and Store(db).user_for_token(add.output.strip())["name"] == "dana"


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, "file not found"),
        ('{"prompt": "p", "completions": ["a", "b"]}\n{"prompt": "p"', r"line 2: not valid JSON"),
        ('{"prompt": "p", "completions": ["only one"]}', r"line 1: 'completions' must be a list of 2 to 26"),
        ('{"completions": ["a", "b"]}', r"line 1: missing field 'prompt'"),
        ('{"prompt": "p", "completions": ["a", 3]}', r"line 1: completion 1 must be a text"),
        ("", "no tasks in it"),
    ],
)
def test_cli_bad_tasks_file_is_one_line_exit_2(tmp_path, content, pattern):
    tasks = tmp_path / "samples.jsonl"
    if content is not None:
        tasks.write_text(content)
    result = CliRunner().invoke(aha_cli, ["label", "serve", "--db", str(tmp_path / "r.sqlite"), "--tasks", str(tasks)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), result.output


def test_cli_serve_model_samples_k_completions_first(tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(3)))
    db = tmp_path / "r.sqlite"
    result = CliRunner().invoke(
        aha_cli,
        [
            "label",
            "serve",
            "--db",
            str(db),
            "--model",
            "tiny:layers=1,hidden=16,heads=2,ff=32",
            "--prompts",
            str(prompts),
            "--k",
            "3",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sampled 3 completions for each of 3 prompts" in result.output
    env_store = Store(db)
    rows = [json.loads(line) for line in (tmp_path / "r-samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["completions"]) == 3 and r["answer"] for r in rows)
    assert env_store.task_count() == 3
    missing = CliRunner().invoke(aha_cli, ["label", "serve", "--db", str(db), "--model", "tiny"])
    assert missing.exit_code == 2 and "--model and --prompts go together" in missing.output
