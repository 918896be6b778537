"""The ``code`` reward: run the completion's program, then the row's tests, in a sandbox.

The program is the completion's first fenced Python block (```python ...```, ```py``` or a bare
```...```; an unclosed fence runs to the end of the text), or the whole text when there is none.
The ``tests`` column (Python source: asserts, or HumanEval's ``check(candidate)``) runs against the
program's names in the sandbox (:func:`aha.sandbox.run` with ``tests``). Score: 1.0 when the program ran
and the tests ran to their end, else 0.0. With ``partial=True``: the fraction of the tests' top-level
``assert`` statements that passed (each one is run on its own, so one failing assert does not hide
the next).

The verdict cannot be forged by the program: the tests run in a process of their own that the program
cannot inspect, against plain data copied out of the program's process (its own objects are reached only
through calls, attributes and items, never through their ``__eq__`` or truth value); the verdict comes back
on a pipe only that process holds. Printing a marker, exiting 0 early, patching ``assert`` or builtins,
reading or editing the tests, or returning an always-equal object all score 0 (tests/test_code_verdict.py).
Tests that pass a function of their own to the program, or expect it to change their arguments in place,
cannot be checked this way (they fail).

A program that times out, runs out of memory, floods its output or cannot start scores 0.0 and is
counted; the call never raises for a program's sake. Its ``last_metrics`` (logged by the trainer as
``reward/code/<key>``) describe the last call, e.g. for 8 completions of which one loops forever::

    {'programs': 8.0, 'passed': 5.0, 'pass_rate': 0.625, 'failed': 2.0, 'timeouts': 1.0, 'memory': 0.0,
     'output_limit': 0.0, 'errors': 0.0, 'no_code_block': 0.0, 'seconds': 2.4, 'programs_per_s': 3.3}

>>> code(["Write add."], ["```python\\ndef add(a, b):\\n    return a + b\\n```"],
...      tests=["assert add(1, 2) == 3"])                                        # doctest: +SKIP
[1.0]

Limits are keyword arguments, so a config binds them: ``rewards: [{name: code, args: {timeout_s: 5}}]``.
"""

from __future__ import annotations

import ast
import logging
import re
import time
from typing import Any, cast

from aha.rewards.builtin import completion_text
from aha.sandbox import Limits, default_workers, resolve_isolation, run_many

__all__ = ["CodeReward", "code", "extract_program", "with_counted_asserts"]

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py"}


def extract_program(text: str) -> tuple[str, bool]:
    """The first fenced Python block of ``text`` and whether there was one (else the whole text).

    >>> extract_program("Here:\\n```python\\nprint(1)\\n```\\nand ```js\\nx\\n```")
    ('print(1)\\n', True)
    >>> extract_program("```js\\nalert(1)\\n```\\n```\\nprint(2)\\n```")
    ('print(2)\\n', True)
    >>> extract_program("print(3)")
    ('print(3)', False)
    """
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in _PYTHON_TAGS:
            return match.group(2), True
    return text, False


def with_counted_asserts(tests: str, counter: str) -> tuple[str, int]:
    """``tests`` with each top-level ``assert`` wrapped so a failure is counted, not fatal.

    Returns the new source and the number of asserts; ``counter`` is the variable that counts passes.

    >>> src, n = with_counted_asserts("x = 2\\nassert x == 2\\nassert x == 3", "_ok")
    >>> n, src.splitlines()[:5]
    (2, ['_ok = 0', 'x = 2', 'try:', '    assert x == 2', '    _ok += 1'])
    """
    tree = ast.parse(tests)
    body: list[ast.stmt] = [ast.parse(f"{counter} = 0").body[0]]
    count = 0
    for node in tree.body:
        if isinstance(node, ast.Assert):
            count += 1
            wrapped = cast(
                ast.Try, ast.parse(f"try:\n    pass\n    {counter} += 1\nexcept Exception:\n    pass").body[0]
            )
            wrapped.body[0] = node
            body.append(wrapped)
        else:
            body.append(node)
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))), count


class CodeReward:
    """1.0 when the completion's Python program passes the row's tests, run in a sandbox (exposes last_metrics)."""

    __name__ = "code"
    # how the statistics of shards (Ray rollout workers, in parallel) make the whole batch's (pass_rate: a mean)
    metric_merge = {
        **dict.fromkeys(
            (
                "programs",
                "passed",
                "failed",
                "timeouts",
                "memory",
                "output_limit",
                "errors",
                "no_code_block",
                "programs_per_s",
            ),
            "sum",
        ),
        "seconds": "max",
    }

    def __init__(self) -> None:
        self.last_metrics: dict[str, float] = {}

    def __call__(
        self,
        prompts: list,
        completions: list,
        tests: list | None = None,
        partial: bool = False,
        timeout_s: float = 10.0,
        cpu_s: float = 5.0,
        memory_mb: int = 512,
        max_processes: int = 32,
        max_file_mb: int = 16,
        disk_mb: int = 64,
        max_output_bytes: int = 1 << 16,
        workers: int | None = None,
        isolation: str = "auto",
        **kwargs: Any,
    ) -> list[float]:
        """1.0 per completion whose program passes its row's ``tests`` in the sandbox, else 0.0.

        ``timeout_s`` (wall clock), ``cpu_s``, ``memory_mb``, ``max_processes``, ``max_file_mb``,
        ``disk_mb`` and ``max_output_bytes`` bound each program (see :class:`aha.sandbox.Limits`);
        ``workers`` programs run at once (default: the cores this process may use); ``isolation`` is
        'auto', 'bwrap', 'unshare' or 'none'.
        """
        limits = Limits(
            timeout_s=timeout_s,
            cpu_s=cpu_s,
            memory_mb=memory_mb,
            max_processes=max_processes,
            max_file_mb=max_file_mb,
            disk_mb=disk_mb,
            max_output_bytes=max_output_bytes,
        )
        if tests is not None and len(tests) != len(completions):
            raise ValueError(f"code got {len(tests)} tests for {len(completions)} completions")
        isolation = resolve_isolation(isolation)  # no sandbox here: one line naming what to install (SandboxError)
        start = time.monotonic()
        checks: list[str | None]
        programs, checks, totals, no_block = [], [], [], 0
        for i, completion in enumerate(completions):
            program, fenced = extract_program(completion_text(completion))
            no_block += not fenced
            check, total = self._tests(tests[i] if tests is not None else None, partial)
            programs.append(program)
            checks.append(check)
            totals.append(total)
        results = run_many(programs, limits, isolation, workers or default_workers(), tests=checks)

        scores, counts = [], {"failed": 0, "timeouts": 0, "memory": 0, "output_limit": 0, "errors": 0}
        for result, total in zip(results, totals):
            verdict = result.checks or {}
            if verdict.get("finished") is not True:  # the program did not run, or the tests did not reach their end
                score = 0.0
            elif partial and total:
                passed = verdict.get("passed")
                score = min(passed, total) / total if type(passed) is int and passed >= 0 else 0.0
            else:
                score = 1.0
            scores.append(score)
            if score < 1.0:
                key = {"ok": "failed", "timeout": "timeouts", "error": "errors"}.get(result.status, result.status)
                counts[key if key in counts else "failed"] += 1
        seconds = time.monotonic() - start
        errors = [r.detail for r in results if r.status == "error"]
        if errors:
            log.warning(
                "code reward: %d of %d programs could not run in the sandbox (%s); they score 0",
                len(errors),
                len(results),
                errors[0],
            )
        n = len(results)
        self.last_metrics = {
            "programs": float(n),
            "passed": float(sum(s == 1.0 for s in scores)),
            "pass_rate": sum(scores) / n if n else 0.0,
            **{key: float(value) for key, value in counts.items()},
            "no_code_block": float(no_block),
            "seconds": seconds,
            "programs_per_s": n / seconds if seconds > 0 else 0.0,
        }
        return scores

    @staticmethod
    def _tests(tests: str | None, partial: bool) -> tuple[str, int]:
        """The tests to run (with each top-level assert counted under ``partial``) and the number of asserts."""
        total = 0
        if tests and partial:
            try:
                tests, total = with_counted_asserts(tests, "_aha_passed")
            except SyntaxError as exc:  # the dataset's fault: every program will fail
                log.warning("code reward: a tests cell does not parse (%s); it scores 0", exc)
                total = 0
        return tests or "", total


code = CodeReward()
