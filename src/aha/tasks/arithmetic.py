"""Generated arithmetic: ``'123+456='`` → ``'579'`` (or ``'975'``, least-significant digit first).

Writing the answer least-significant digit first lets a left-to-right model compute the carry as it
goes, which makes multi-digit addition learnable by a tiny model in minutes.
"""

from __future__ import annotations

import random

from aha.config import TaskConfig
from aha.tasks.base import Task

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_problem(rng: random.Random, digits: int, ops: list[str], reverse: bool, pad: bool = False) -> dict:
    hi = 10**digits - 1
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    op = rng.choice(ops)
    result = OPS[op](a, b)
    answer = str(result)
    if reverse:
        answer = answer[::-1] if result >= 0 else "-" + str(-result)[::-1]
    if pad:  # fixed-width operands: digit i of each operand always sits at the same position
        return {"prompt": f"{a:0{digits}d}{op}{b:0{digits}d}=", "answer": answer, "a": a, "b": b, "op": op}
    return {"prompt": f"{a}{op}{b}=", "answer": answer, "a": a, "b": b, "op": op}


def split_unique(rng: random.Random, make, num_train: int, num_eval: int, max_tries: int = 50) -> tuple[list, list]:
    """Draw a held-out set first, then training rows whose prompts never appear in it."""
    eval_rows: dict[str, dict] = {}
    for _ in range(num_eval * max_tries):
        if len(eval_rows) >= num_eval:
            break
        row = make(rng)
        eval_rows.setdefault(row["prompt"], row)
    train: list[dict] = []
    for _ in range(num_train * max_tries):
        if len(train) >= num_train:
            break
        row = make(rng)
        if row["prompt"] not in eval_rows:
            train.append(row)
    return train, list(eval_rows.values())


def arithmetic_task(cfg: TaskConfig) -> Task:
    rng = random.Random(cfg.seed)
    make = lambda r: make_problem(r, cfg.digits, list(cfg.operations), cfg.reverse_answer, cfg.pad_operands)  # noqa: E731
    train, held_out = split_unique(rng, make, cfg.num_train, cfg.num_eval)
    alphabet = "0123456789" + "".join(cfg.operations) + "=" + ("-" if "-" in cfg.operations else "")
    return Task("arithmetic", train, held_out, alphabet=alphabet)
