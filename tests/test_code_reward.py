"""The ``code`` reward (extraction, scoring, metrics, failure handling) and the ``code`` task."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from aha import sandbox
from aha.config import TaskConfig, load_config
from aha.rewards import BUILTIN_REWARDS, compute_rewards, resolve_reward
from aha.rewards.code import code, extract_program, with_counted_asserts
from aha.tasks import build_task
from aha.tasks.code import code_rows

pytestmark = pytest.mark.skipif(
    bool(sandbox.isolation_available("bwrap") and sandbox.isolation_available("unshare")),
    reason="no namespaces here: " + str(sandbox.isolation_available("bwrap")),
)
FAST = dict(timeout_s=3.0, cpu_s=1.0, memory_mb=256, workers=2)
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(-1, 5) == 4\n"


def fenced(body: str, tag: str = "python") -> str:
    return f"Here you go:\n```{tag}\n{body}```\nDone."


def test_extracts_the_first_python_block():
    assert extract_program(fenced("print(1)\n")) == ("print(1)\n", True)
    assert extract_program("```js\nalert(1)\n```\n```py\nprint(2)\n```") == ("print(2)\n", True)
    assert extract_program("```\nprint(3)\n```") == ("print(3)\n", True)
    assert extract_program("```python\nprint(4)\n")[0] == "print(4)\n"  # cut off by max_new_tokens
    assert extract_program("x = 5") == ("x = 5", False)


def test_right_wrong_and_broken_programs():
    completions = [
        fenced("def add(a, b):\n    return a + b\n"),
        fenced("def add(a, b):\n    return a - b\n"),
        "def add(a, b): return a + b",  # no fence: the whole text is the program
        [{"role": "assistant", "content": fenced("def add(a, b):\n    return a + b\n")}],
        fenced("def add(a, b:\n"),
        fenced("import os\ndef add(a, b):\n    return 0\nos._exit(0)\n"),  # exits 0 before the tests
    ]
    scores = code(["p"] * 6, completions, tests=[ADD_TESTS] * 6, **FAST)
    assert scores == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    m = code.last_metrics
    assert (m["programs"], m["passed"], m["failed"], m["no_code_block"]) == (6.0, 3.0, 3.0, 1.0)
    assert m["pass_rate"] == 0.5 and m["programs_per_s"] > 0


def test_timeouts_memory_and_output_are_counted_not_raised():
    completions = [
        fenced("while True:\n    pass\n"),
        fenced("x = bytearray(1 << 40)\n"),
        fenced("while True:\n    print('y' * 1000)\n"),
        fenced("def add(a, b):\n    return a + b\n"),
    ]
    scores = code(["p"] * 4, completions, tests=[ADD_TESTS] * 4, **FAST)
    assert scores == [0.0, 0.0, 0.0, 1.0]
    m = code.last_metrics
    assert (m["timeouts"], m["memory"], m["output_limit"], m["passed"]) == (1.0, 1.0, 1.0, 1.0)


def test_partial_scores_the_fraction_of_asserts():
    half_right = fenced("def add(a, b):\n    return 4\n")  # right on the 2nd and 3rd assert
    scores = code(
        ["p"] * 2,
        [half_right, fenced("def add(a, b):\n    return a + b\n")],
        tests=[ADD_TESTS] * 2,
        partial=True,
        **FAST,
    )
    assert scores == [pytest.approx(2 / 3), 1.0]
    source, n = with_counted_asserts("assert (1 +\n        1) == 2\nassert False, 'no'\n", "_ok")
    assert n == 2 and "except Exception" in source


def test_no_sandbox_is_one_line_naming_the_fix_and_a_failed_start_scores_zero(monkeypatch):
    monkeypatch.setattr(sandbox, "_PROBED", {"bwrap": "bubblewrap is not installed", "unshare": "no userns"})
    with pytest.raises(sandbox.SandboxError, match="bubblewrap is not installed"):
        code(["p"], [fenced("def add(a, b):\n    return a + b\n")], tests=[ADD_TESTS], isolation="bwrap")
    with pytest.raises(sandbox.SandboxError, match=r"apt-get install bubblewrap"):
        code(["p"], [fenced("def add(a, b):\n    return a + b\n")], tests=[ADD_TESTS])
    monkeypatch.undo()

    def broken_python():
        raise sandbox.SandboxError("no python3 that the sandbox user can run")

    monkeypatch.setattr(sandbox, "sandbox_python", broken_python)
    scores = code(["p"], [fenced("def add(a, b):\n    return a + b\n")], tests=[ADD_TESTS], **FAST)
    assert scores == [0.0] and code.last_metrics["errors"] == 1.0


def test_config_binds_limits_and_the_trainer_sees_metrics():
    assert resolve_reward("code") is BUILTIN_REWARDS["code"] is code
    bound = functools.partial(resolve_reward("code"), timeout_s=1.0, cpu_s=1.0)
    totals, per_fn, skipped = compute_rewards(
        [("code", bound, 1.0)],
        ["p", "q"],
        [fenced("while True:\n    pass\n"), fenced("print('hi')\n")],
        {"tests": [None, None]},
    )
    assert totals == [0.0, 1.0] and skipped == 0
    assert bound.func.last_metrics["timeouts"] == 1.0


def test_every_reference_solution_passes_and_a_wrong_one_fails():
    rows = code_rows()
    assert len(rows) >= 50
    right = code([r["prompt"] for r in rows], [r["answer"] for r in rows], tests=[r["tests"] for r in rows], **FAST)
    failing = [r["id"] for r, s in zip(rows, right) if s != 1.0]
    assert not failing, f"reference solutions failing their tests: {failing}"
    wrong = [fenced(f"def {r['entry_point']}(*args, **kwargs):\n    return None\n") for r in rows]
    scores = code([r["prompt"] for r in rows], wrong, tests=[r["tests"] for r in rows], **FAST)
    assert scores == [0.0] * len(rows)


def test_code_task_and_recipe():
    task = build_task(TaskConfig(name="code", num_eval=10))
    assert (task.verifier, len(task.eval), len(task.train) + len(task.eval)) == ("code", 10, len(code_rows()))
    assert task.rewards["code"] is code and "```python" in task.train[0]["prompt"]
    cfg = load_config(Path(__file__).parents[1] / "recipes" / "code-smollm2.yaml")
    assert cfg.task.name == "code" and [r.name for r in cfg.rewards] == ["code"]
