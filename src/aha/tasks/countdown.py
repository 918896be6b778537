"""Countdown (as in TinyZero): combine the given numbers with + - * / to reach the target, each number once.

Problems are generated solvable: a random expression over the numbers gives the target.
"""

from __future__ import annotations

import ast
import operator
import random
import re

from aha.config import TaskConfig
from aha.rewards.builtin import completion_text
from aha.tasks.arithmetic import split_unique
from aha.tasks.base import Task

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def safe_eval(expr: str) -> float | None:
    """Evaluate an arithmetic expression of numbers, + - * / and parentheses; None if it is anything else."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        return None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not allowed")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def extract_equation(text: str) -> str:
    m = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    eq = (m[-1] if m else text).strip()
    return eq.split("=")[0].strip()


def countdown_reward(prompts, completions, numbers=None, answer=None, **_) -> list[float | None]:
    """1.0 if the equation uses each given number exactly once and evaluates to the target.

    >>> countdown_reward(["p"], ["<answer>(25-3)*2</answer>"], numbers=[[2, 3, 25]], answer=["44"])
    [1.0]
    """
    out: list[float | None] = []
    for comp, nums, target in zip(completions, numbers or [], answer or []):
        if nums is None or target is None:
            out.append(None)
            continue
        eq = extract_equation(completion_text(comp))
        used = sorted(int(n) for n in re.findall(r"\d+", eq))
        value = safe_eval(eq) if used == sorted(nums) else None
        out.append(1.0 if value is not None and abs(value - float(target)) < 1e-6 else 0.0)
    return out


def make_problem(rng: random.Random, n: int) -> dict:
    while True:
        nums = [rng.randint(1, 50) if i else rng.randint(1, 99) for i in range(n)]
        order = rng.sample(nums, n)
        expr = str(order[0])
        for x in order[1:]:
            op = rng.choice("+-*/")
            expr = f"({expr}{op}{x})" if op in "+-" else f"{expr}{op}{x}"
        value = safe_eval(expr)
        if value is not None and value == int(value) and 0 < value < 1000:
            prompt = (
                f"Using the numbers {nums}, create an equation that equals {int(value)}. "
                "Use + - * / and each number exactly once."
            )
            return {"prompt": prompt, "answer": str(int(value)), "numbers": nums, "solution": expr}


def countdown_task(cfg: TaskConfig) -> Task:
    rng = random.Random(cfg.seed)
    train, held_out = split_unique(rng, lambda r: make_problem(r, cfg.num_numbers), cfg.num_train, cfg.num_eval)
    return Task(
        "countdown", train, held_out, alphabet=None, rewards={"countdown": countdown_reward}, verifier="countdown"
    )
