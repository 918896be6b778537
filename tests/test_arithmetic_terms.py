"""``task.terms``: arithmetic with more than two operands (``3+41+7=``). Two terms, the default, keep the original
generator: its rows are pinned by hashes taken before ``terms`` existed. More terms: the answers are right (``*``
first), the held-out split never appears in training, and a count under 2 is one line of config error."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import yaml

from aha.config import ConfigError, TaskConfig, load_config
from aha.rewards.builtin import accuracy
from aha.tasks import arithmetic
from aha.tasks.arithmetic import arithmetic_task, evaluate

# sha256 of json.dumps([train, eval, alphabet], sort_keys=True), computed with the code before task.terms existed
PINNED = [
    ({"seed": 1234}, "e0f402b9e7d97e93ff21946a11fc6fb4147058f743c898d5c84b380b59bc5b49"),
    (
        {"seed": 0, "digits": 2, "num_train": 500, "num_eval": 64},
        "3b3b0c59f536173f2298165ef0d7020aa16bffda153a4c068264b99e13d47ca3",
    ),
    (
        {
            "seed": 7,
            "digits": 3,
            "operations": ["+", "-", "*"],
            "reverse_answer": True,
            "num_train": 300,
            "num_eval": 50,
        },
        "ae6b63be6787c84cf33bfb77b344d64ad1c924535de11dbb58db2f6b65ac88e2",
    ),
    (
        {"seed": 42, "digits": 1, "pad_operands": True, "num_train": 200, "num_eval": 30},
        "eca7950ea77ae6212e3c301595e974a6ac3a6b34c5fdd0ea0c89ad26ee128486",
    ),
    (
        {
            "seed": 5,
            "digits": 4,
            "operations": ["-"],
            "reverse_answer": True,
            "pad_operands": True,
            "num_train": 100,
            "num_eval": 20,
        },
        "23aae6574d47cd23fad78bab4eab1ebdeb0858e1e2d0a57c42c964cc4ac0cce9",
    ),
]


def digest(task) -> str:
    return hashlib.sha256(json.dumps([task.train, task.eval, task.alphabet], sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("fields,pinned", PINNED, ids=[str(i) for i in range(len(PINNED))])
def test_two_terms_are_the_rows_of_before(fields, pinned):
    default = arithmetic_task(TaskConfig(name="arithmetic", **fields))
    for terms in (2, [2, 2]):
        assert digest(arithmetic_task(TaskConfig(name="arithmetic", terms=terms, **fields))) == digest(default)
    assert digest(default) == pinned


def test_two_terms_take_the_original_generator(monkeypatch):
    calls = []
    monkeypatch.setattr(arithmetic, "make_expression", lambda *a: calls.append(a))
    arithmetic_task(TaskConfig(name="arithmetic", terms=2, num_train=5, num_eval=5))
    assert calls == []


def python_value(prompt: str) -> int:
    return int(eval(prompt.rstrip("=")))  # unpadded operands, + - * only: Python's own precedence is the reference


@pytest.mark.parametrize("terms", [3, 4, [3, 4], [2, 5]])
@pytest.mark.parametrize("ops", [["+"], ["+", "-", "*"]])
def test_more_terms_have_right_answers_and_a_disjoint_held_out_split(terms, ops):
    cfg = TaskConfig(name="arithmetic", digits=2, terms=terms, operations=ops, num_train=400, num_eval=60, seed=3)
    task = arithmetic_task(cfg)
    assert len(task.train) == 400 and len(task.eval) == 60
    lo, hi = (terms, terms) if isinstance(terms, int) else terms
    counts = set()
    for row in task.train + task.eval:
        assert row["answer"] == str(python_value(row["prompt"])) == str(evaluate(row["operands"], row["ops"]))
        assert lo <= len(row["operands"]) == len(row["ops"]) + 1 <= hi
        assert all(0 <= x <= 99 for x in row["operands"]) and set(row["ops"]) <= set(ops)
        counts.add(len(row["operands"]))
    assert counts == set(range(lo, hi + 1))  # a range draws every count
    assert not {r["prompt"] for r in task.train} & {r["prompt"] for r in task.eval}
    assert digest(task) == digest(arithmetic_task(cfg))  # the seed decides the rows


def test_more_terms_padded_and_reversed():
    task = arithmetic_task(
        TaskConfig(name="arithmetic", digits=3, terms=3, operations=["-"], reverse_answer=True, pad_operands=True)
    )
    for row in task.eval[:50]:
        a, b, c = row["operands"]
        assert row["prompt"] == f"{a:03d}-{b:03d}-{c:03d}="
        value = a - b - c
        assert row["answer"] == (str(value)[::-1] if value >= 0 else "-" + str(-value)[::-1])


def test_evaluate_binds_multiplication_first():
    assert evaluate([2, 3, 4], ["+", "*"]) == 14
    assert evaluate([2, 3, 4, 5], ["*", "-", "*"]) == -14
    assert evaluate([9, 1, 1, 1], ["-", "-", "+"]) == 8
    rng = random.Random(0)
    for _ in range(200):
        xs = [rng.randint(0, 20) for _ in range(rng.randint(2, 6))]
        ops = [rng.choice("+-*") for _ in xs[1:]]
        assert evaluate(xs, ops) == eval(str(xs[0]) + "".join(o + str(x) for o, x in zip(ops, xs[1:])))


def test_the_accuracy_reward_judges_a_sum_of_four():
    row = next(r for r in arithmetic_task(TaskConfig(name="arithmetic", terms=4, num_eval=5)).eval)
    right, wrong = f"<think>adding</think> <answer>{row['answer']}</answer>", "<answer>-1</answer>"
    prompt = row["prompt"]
    assert accuracy([prompt, prompt], [right, wrong], answer=[row["answer"]] * 2, strict=True) == [1.0, 0.0]


@pytest.mark.parametrize("terms", [1, 0, 9, [1, 3], [4, 3], [2, 9]])
def test_a_count_outside_two_to_eight_is_one_line(tmp_path, terms):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"task": {"name": "arithmetic", "terms": terms}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "task.terms" in str(err.value) and "\n" not in str(err.value)


def test_terms_from_yaml_and_set(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"task": {"name": "arithmetic", "terms": [3, 4]}}))
    assert load_config(path).task.terms == (3, 4)
    assert load_config(path, ["task.terms=3"]).task.terms == 3
