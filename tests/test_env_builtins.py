"""The built-ins: the calculator's exact arithmetic (and its refusal of anything else), the python tool inside aha's
sandbox, and guess-the-number, whose feedback depends on the last guess."""

from __future__ import annotations

import json
import time
from fractions import Fraction

import pytest

from aha import sandbox
from aha.env import GuessNumber, build_environment, calculator, episode_metrics, python_tool
from aha.env.builtin import evaluate

# ─────────────────────────────── calculator ───────────────────────────────


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("0.1 + 0.2", "0.3"),
        ("(12.5 - 3) * 4 / 8", "4.75"),
        ("-3 * (2 - 5)", "9"),
        ("123456789 * 987654321", "121932631112635269"),
        ("2 ** 200", str(2**200)),
        ("3^4", "81"),
        ("2 ** -2", "0.25"),
        ("10 / 3", "10/3 ≈ 3.33333333333"),
        ("1e3 + 1_000", "2000"),
        ("7 × 6 ÷ 3", "14"),
        ("1 / 3 * 3", "1"),
    ],
)
def test_calculator_is_exact(expression, value):
    assert calculator(expression) == value


def test_calculator_values_are_fractions_not_floats():
    assert evaluate("0.1 * 3") == Fraction(3, 10) and evaluate("1/7 + 6/7") == 1


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("__import__('os').system('echo hi')", "found a call"),
        ("open('/etc/passwd').read()", "found a call"),
        ("x + 1", "found a name"),
        ("(1).__class__", "found an attribute"),
        ("'a' * 3", "found a str constant"),
        ("[1, 2][0]", "found a subscript"),
        ("1, 000", "found a tuple"),
        ("7 % 2", "an operator other than"),
        ("1 < 2", "found a comparison"),
        ("2 ** 0.5", "only whole-number exponents"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 5000", "too large"),
        ("1e999999999", "too large"),
        ("(1 + ", "not an arithmetic expression"),
        ("", "empty"),
        ("1+" * 300 + "1", "longer than 500"),
    ],
)
def test_calculator_refuses_everything_but_arithmetic(expression, why):
    start = time.monotonic()
    with pytest.raises(ValueError, match=None) as info:
        evaluate(expression)
    assert why in str(info.value) and time.monotonic() - start < 1.0


def test_calculator_as_a_tool_answers_errors_in_the_conversation():
    [episode] = build_environment(tools=["calculator"]).episodes(1)
    episode.start({})
    turn = episode.respond(
        '<tool_call>{"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}</tool_call>'
    )
    assert turn.errors == ["raised"] and turn.messages[0]["content"].startswith("Error: ValueError: only numbers")


# ─────────────────────────────── python (sandboxed) ───────────────────────────────

NO_SANDBOX = all(sandbox.isolation_available(iso) is not None for iso in ("bwrap", "unshare"))


@pytest.mark.skipif(NO_SANDBOX, reason="no sandbox works on this machine (bwrap and unshare both refused)")
def test_python_tool_runs_in_the_sandbox():
    python = python_tool(sandbox.Limits(timeout_s=3, cpu_s=1))
    assert python("print(sum(range(10)))") == "45\n"
    assert python("pass") == "(no output)"
    failed = python("import sys; print('so far'); sys.exit('bad input')")
    assert failed.startswith("so far\n") and "[stderr]\nbad input" in failed and "[failed: exit code 1]" in failed
    contained = python(
        "import os, socket\n"
        "print(os.path.exists('/work'), os.path.exists('/etc/passwd'), os.path.exists('/root'))\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1); print('net')\n"
        "except OSError:\n    print('no net')\n"
    )
    assert contained.splitlines()[:2] == ["False False False", "no net"]
    assert "[timeout" in python("while True: pass")
    long = python_tool(max_chars=100)("print('x' * 5000)")
    assert long.startswith("x" * 100) and "more characters]" in long


@pytest.mark.skipif(NO_SANDBOX, reason="no sandbox works on this machine (bwrap and unshare both refused)")
def test_python_tool_in_an_episode():
    [episode] = build_environment(tools=["python"]).episodes(1)
    episode.start({})
    code = json.dumps({"name": "python", "arguments": {"code": "print(2 ** 10)"}})
    assert episode.respond(f"<tool_call>{code}</tool_call>").messages[0]["content"] == "1024\n"


def test_python_tool_is_refused_in_one_line_where_no_sandbox_works(monkeypatch):
    monkeypatch.setattr(sandbox, "_PROBED", {"bwrap": "bubblewrap is not installed", "unshare": "no userns"})
    with pytest.raises(sandbox.SandboxError, match="no code sandbox works on this machine"):
        build_environment(tools=["python"])


# ─────────────────────────────── guess the number ───────────────────────────────


def play(game: GuessNumber, strategy: str, cap: int = 50) -> int:
    """Turns a strategy takes: 'bisect' halves the interval the feedback leaves; 'scan' counts up from low."""
    low, high = game.low, game.high
    for turn in range(1, cap + 1):
        guess = (low + high) // 2 if strategy == "bisect" else low
        step = game.step(f"My guess: {guess}")
        if step.done:
            assert step.reward == 1.0 and step.observation == "Correct!"
            return turn
        assert step.reward == 0.0
        if step.observation == "Higher.":
            low = guess + 1
        else:
            assert step.observation == "Lower."
            high = guess - 1
    return cap + 1


def test_guess_the_number_feedback_follows_the_guesses():
    game = GuessNumber()
    bisect = []
    for target in range(1, 101):
        game.reset(target=target)
        bisect.append(play(game, "bisect"))
    assert max(bisect) == 7  # ⌈log2 100⌉: the state is what the feedback left
    scan = []
    for target in range(1, 101):
        game.reset(target=target)
        scan.append(play(game, "scan", cap=100))
    assert sum(scan) / 100 == 50.5 > sum(bisect) / 100


def test_guess_the_number_rows_seeds_and_bad_answers():
    game = GuessNumber()
    assert game.reset(seed=3, low=5, high=9).startswith("I am thinking of a whole number from 5 to 9.")
    first = game.target
    assert all((game.reset(seed=3, low=5, high=9), game.target)[1] == first for _ in range(3))  # (seeded)
    assert len({(game.reset(seed=s), game.target)[1] for s in range(30)}) > 10
    game.reset(low=1, high=10, target=4)
    assert game.step("no idea").observation == "Answer with one whole number from 1 to 10."
    assert game.step("11").observation == "11 is outside 1 to 10. Guess again."
    assert game.step("9" * 5000).observation.endswith("is outside 1 to 10. Guess again.")
    assert game.step("I said 9 but I mean 4").done and game.invalid == 3 and game.guesses == 1
    assert game.step("4").observation == "The game is over."


def test_guess_the_number_as_an_environment():
    env = build_environment("guess_number")
    episodes = env.episodes(2)
    episodes[0].start({"low": 1, "high": 4, "target": 3})
    episodes[1].start({"low": 1, "high": 4}, seed=0)
    assert [t.messages[0]["content"] for t in map(episodes[0].respond, ["2", "4", "3"])] == [
        "Higher.",
        "Lower.",
        "Correct!",
    ]
    assert episodes[0].done and episodes[0].reward == 1.0 and not episodes[1].done
    assert env.reward_function()(environments=[e.env for e in episodes]) == [1.0, 0.0]
    assert episode_metrics(episodes)["env/reward"] == 0.5
    with pytest.raises(Exception, match=r"reset raised on row 4 .*ValueError: the range is empty: low 9 > high 2"):
        episodes[1].start({"low": 9, "high": 2}, row_index=4)
