"""Generated arithmetic: ``'123+456='`` → ``'579'`` (or ``'975'``, least-significant digit first).

Writing the answer least-significant digit first lets a left-to-right model compute the carry as it
goes, which makes multi-digit addition learnable by a tiny model in minutes. ``task.terms`` > 2 gives
longer expressions (``'3+41+7='`` → ``'51'``; ``*`` binds before ``+`` and ``-``); two terms keep the
original generator, so its rows stay byte-identical for every seed.
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


def evaluate(operands: list[int], ops: list[str]) -> int:
    """The value of ``operands[0] ops[0] operands[1] …`` with the usual precedence (``*`` first)."""
    total, sign, product = 0, 1, operands[0]
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            product *= x
        else:
            total, sign, product = total + sign * product, (1 if op == "+" else -1), x
    return total + sign * product


def make_expression(
    rng: random.Random, digits: int, ops: list[str], reverse: bool, pad: bool, terms: tuple[int, int]
) -> dict:
    """A problem of ``terms[0]``–``terms[1]`` operands (how many drawn per problem), each with its own operation."""
    n = rng.randint(*terms)
    hi = 10**digits - 1
    operands = [rng.randint(0, hi) for _ in range(n)]
    chosen = [rng.choice(ops) for _ in range(n - 1)]
    result = evaluate(operands, chosen)
    answer = str(result)
    if reverse:
        answer = answer[::-1] if result >= 0 else "-" + str(-result)[::-1]
    written = [f"{x:0{digits}d}" if pad else str(x) for x in operands]
    prompt = written[0] + "".join(op + x for op, x in zip(chosen, written[1:])) + "="
    return {"prompt": prompt, "answer": answer, "operands": operands, "ops": chosen}


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
    ops: list[str] = list(cfg.operations)
    terms = (cfg.terms, cfg.terms) if isinstance(cfg.terms, int) else (cfg.terms[0], cfg.terms[1])
    if terms == (2, 2):  # the original two-operand generator: the same rows as before task.terms existed
        make = lambda r: make_problem(r, cfg.digits, ops, cfg.reverse_answer, cfg.pad_operands)  # noqa: E731
    else:
        make = lambda r: make_expression(r, cfg.digits, ops, cfg.reverse_answer, cfg.pad_operands, terms)  # noqa: E731
    train, held_out = split_unique(rng, make, cfg.num_train, cfg.num_eval)
    alphabet = "0123456789" + "".join(cfg.operations) + "=" + ("-" if "-" in cfg.operations else "")
    return Task("arithmetic", train, held_out, alphabet=alphabet)
