"""The rules of two verifiable rewards, on completions written by hand: Countdown's equation check (right, wrong,
malformed, numbers reused or missing) and accuracy's ``strict`` mode, the R1 recipe's main reward (only the inside
of ``<answer>`` counts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aha.config import TaskConfig, load_config
from aha.rewards.builtin import accuracy
from aha.tasks.countdown import countdown_reward, countdown_task

REPO = Path(__file__).resolve().parent.parent
NUMS, TARGET = [2, 3, 25], "44"  # (25 - 3) * 2 = 44


def countdown(*completions: str, numbers=NUMS, target=TARGET) -> list:
    n = len(completions)
    return countdown_reward(["p"] * n, list(completions), numbers=[numbers] * n, answer=[target] * n)


def test_countdown_scores_a_right_equation_one():
    assert countdown(
        "<answer>(25-3)*2</answer>",
        "<think>22 then double</think> <answer> 2 * (25 - 3) </answer>",
        "<answer>(25-3)*2 = 44</answer>",  # the left side is the equation
        "(25-3)*2",
    ) == [1.0, 1.0, 1.0, 1.0]  # without tags the whole text is the equation
    # the last <answer> block is the one judged
    assert countdown(
        "<answer>25+3+2</answer> no: <answer>(25-3)*2</answer>", "<answer>(25-3)*2</answer> no: <answer>25+3+2</answer>"
    ) == [1.0, 0.0]
    # exact division counts, within float tolerance
    assert countdown("<answer>6/3*1</answer>", numbers=[1, 3, 6], target="2") == [1.0]
    # a conversational completion is judged by its text
    assert countdown_reward(
        ["p"], [[{"role": "assistant", "content": "<answer>(25-3)*2</answer>"}]], numbers=[NUMS], answer=[TARGET]
    ) == [1.0]


def test_countdown_scores_a_wrong_value_zero():
    assert countdown("<answer>(25+3)*2</answer>", "<answer>25*3-2</answer>") == [0.0, 0.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>25*2-3-3</answer>",  # = 44, but 3 used twice and 2 once
        "<answer>(25-3)*2+2-2</answer>",  # = 44, but 2 used three times
        "<answer>25+25-3-3</answer>",  # = 44 with 25 and 3 twice each, 2 never
    ],
)
def test_countdown_refuses_a_number_reused(completion):
    assert countdown(completion) == [0.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>44</answer>",  # the target itself
        "<answer>22*2</answer>",  # 22 is not a given number
        "<answer>(25-3)*2*1</answer>",  # an extra number
    ],
)
def test_countdown_refuses_numbers_missing_or_not_given(completion):
    assert countdown(completion) == [0.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>(25-3)*</answer>",  # not an expression
        "<answer>(25-3)**2</answer>",  # ** is not one of + - * /
        "<answer>__import__('os').getpid() or (25-3)*2</answer>",  # names are never evaluated
        "",
        "<answer></answer>",
    ],
)
def test_countdown_scores_malformed_equations_zero(completion):
    assert countdown(completion) == [0.0]


def test_countdown_division_by_zero_scores_zero_and_a_row_without_numbers_gets_no_opinion():
    assert countdown("<answer>5/(3-3)</answer>", numbers=[3, 3, 5], target="1") == [0.0]
    assert countdown_reward(
        ["p", "p"], ["<answer>(25-3)*2</answer>"] * 2, numbers=[None, NUMS], answer=[TARGET, None]
    ) == [None, None]


def test_every_generated_countdown_problem_is_solved_by_its_own_solution_and_only_by_it():
    task = countdown_task(TaskConfig(name="countdown", num_train=50, num_eval=10))
    rows = task.train + task.eval
    assert task.verifier == "countdown" and task.rewards["countdown"] is countdown_reward
    solved = countdown_reward(
        [r["prompt"] for r in rows],
        [f"<answer>{r['solution']}</answer>" for r in rows],
        numbers=[r["numbers"] for r in rows],
        answer=[r["answer"] for r in rows],
    )
    assert solved == [1.0] * len(rows)
    # the same equation against another row's target and numbers is (almost always) wrong; never right for all
    shifted = countdown_reward(
        ["p"] * len(rows),
        [f"<answer>{r['solution']}</answer>" for r in rows],
        numbers=[r["numbers"] for r in rows[1:] + rows[:1]],
        answer=[r["answer"] for r in rows[1:] + rows[:1]],
    )
    assert sum(shifted) < len(rows) / 2


# ----------------------------------------------------------------------------- accuracy(strict=True)


def test_strict_accuracy_refuses_an_untagged_answer_that_non_strict_accepts():
    completions = ["4", "the answer is 4", "<think>2+2</think> 4", "<answer>4"]  # no (closed) answer tags
    gold = ["4"] * len(completions)
    assert accuracy(["2+2="] * 4, completions, answer=gold)[0] == 1.0  # non-strict: the whole text is the answer
    assert accuracy(["2+2="] * 4, completions, answer=gold, strict=True) == [0.0] * 4


def test_strict_and_non_strict_agree_once_the_answer_is_tagged():
    completions = [
        "<think>2+2</think><answer>4</answer>",
        "<answer>4</answer>",
        "<answer> 04 </answer>",
        "<think>2+2</think><answer>5</answer>",
        "4 <answer>5</answer>",
        "<answer>5</answer> <answer>4</answer>",
    ]
    gold = ["4"] * len(completions)
    expected = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]  # the last tag pair decides; the text outside it never does
    assert accuracy(["2+2="] * 6, completions, answer=gold) == expected
    assert accuracy(["2+2="] * 6, completions, answer=gold, strict=True) == expected
    assert accuracy(["p", "p"], ["<answer>4</answer>", "4"], answer=[None, ""], strict=True) == [None, None]


def test_the_r1_recipe_trains_and_evaluates_with_strict_accuracy():
    """recipes/r1-zero-smollm2.yaml's accuracy reward, resolved as a run resolves it, refuses an untagged answer,
    and so does its eval (task.eval_reward names that reward, with its args)."""
    from aha.evaluation import eval_verifier
    from aha.rewards.specs import resolve_reward
    from aha.tasks import build_task

    cfg = load_config(REPO / "recipes" / "r1-zero-smollm2.yaml", ["task.num_train=8", "task.num_eval=4"])
    spec = next(r for r in cfg.rewards if r.name == "accuracy")
    reward = resolve_reward(spec.name, spec.args)
    both = ["12", "<think>5+7</think> <answer>12</answer>"]
    assert reward(["5+7="] * 2, both, answer=["12", "12"]) == [0.0, 1.0]
    judge = eval_verifier(cfg.task, cfg.rewards, build_task(cfg.task))
    assert judge(prompts=["5+7="] * 2, completions=both, answer=["12", "12"]) == [0.0, 1.0]
