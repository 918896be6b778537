"""The world of ``aha demo think``: sums of 3 to 6 digits, a teacher who thinks only sometimes, and the judge.

A prompt is a sum of ``n`` digits (1 to 9), each labelled by a letter, ``"a3 b5 c7 d2="``; its difficulty is ``n``.
There are two ways to answer:

- **directly**: ``"17"``: all the digits added in one go, in one or two tokens: hard for a tiny model;
- **with worked steps**: a running total, one step a term, ``"a+3=03 b+5=08 c+7=15 d+2=17"``: each step names the
  next term by its label, copies it, and adds it to the total just written. The labels make "which term is next" a
  lookup for a tiny model, where it would otherwise have to count; the totals are always two digits, so every step
  has the same shape and the last total and the next term are always at the same distance. The answer is the last
  number.

The teacher (a simulated person, :func:`teacher_trace`) answers every sum with a guess first: the first digit and
about :data:`GUESS_EACH` for each of the others (:func:`direct_answer`), so its guesses are rarely right and their
centre is not the sum (a model that sharpens them does not find the sum). Only :data:`P_WORKED` of the time does it
then doubt the guess ("wait") and work the sum out (``"19 wait a+3=03 b+5=08 c+7=15 d+2=17"``); otherwise the guess is
its answer. Its running total slips now and then (:data:`P_SLIP` a step); after
:data:`P_REFLECT` of its slips it writes "wait", re-does the step and goes on from the right total
(``"... c+7=14 wait c+7=15 d+2=17"``), after the others it goes on from the wrong one. So the behaviour RL can find —
doubting a first answer, writing the steps, re-checking a step — is in the teacher's traces, in a minority of them;
nothing rewards it but the answer being right. (``p_doubt=0`` is the world without doubted guesses, whose teacher
works a sum out without guessing first: ``python -m aha.demos.think --no-doubt``.)

Correctness is one rule for the reward and every table: the final answer is the last number of the model's own text
(:func:`aha.track.reasoning.lenient_answer`, the reasoning metrics' own reading), and it must equal the sum.
"""

from __future__ import annotations

import random
import re
from typing import Any

from aha.track.reasoning import lenient_answer, reflection_pattern

TERMS = (3, 4, 5, 6)  # how many digits a sum has: its difficulty
P_WORKED = 0.3  # how often the teacher works a sum out (otherwise its answer is a guess)
P_DOUBT = 1.0  # how often a worked trace starts with the guess, doubted ("wait"); 0: the world without doubts
GUESS_EACH = 5  # the teacher's direct answer guesses the terms after the first as about this much each ...
GUESS_SPREAD = 2  # ... give or take this much
P_SLIP = 0.08  # how often a step of the teacher's running total slips (off by 1 or 2)
P_REFLECT = 0.5  # how often the teacher, after a slip, writes "wait", re-checks the step and corrects it
REFLECTION = "wait"  # the teacher's reflection phrase (one of aha.track.reasoning's default phrases)
LABELS = "abcdef"  # the terms' labels, in order


def prompt_of(terms: list[int]) -> str:
    """The prompt of a sum.

    >>> prompt_of([3, 5, 7, 2])
    'a3 b5 c7 d2='
    """
    return " ".join(f"{LABELS[i]}{t}" for i, t in enumerate(terms)) + "="


def terms_of(prompt: str) -> list[int]:
    """The digits of a prompt.

    >>> terms_of('a3 b5 c7 d2=')
    [3, 5, 7, 2]
    """
    return [int(t[1:]) for t in prompt.rstrip("=").split()]


def make_rows(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows ``{prompt, answer, terms}``, no prompt in both: the held-out prompts are drawn
    first (distinct, each difficulty equally often) and never drawn for training. Training prompts may repeat."""
    rng = random.Random(seed)
    held: dict[str, dict] = {}
    while len(held) < n_eval:
        n = TERMS[len(held) % len(TERMS)]
        terms = [rng.randint(1, 9) for _ in range(n)]
        held.setdefault(prompt_of(terms), row_of(terms))
    train: list[dict] = []
    while len(train) < n_train:
        terms = [rng.randint(1, 9) for _ in range(rng.choice(TERMS))]
        if prompt_of(terms) not in held:
            train.append(row_of(terms))
    return train, list(held.values())


def row_of(terms: list[int]) -> dict:
    return {"prompt": prompt_of(terms), "answer": str(sum(terms)), "terms": len(terms)}


def slip(value: int, rng: random.Random) -> int:
    """A wrong total near ``value`` (off by 1 or 2, never below 1)."""
    wrong = value + rng.choice((-2, -1, 1, 2))
    return wrong if wrong >= 1 else value + 1


def direct_answer(terms: list[int], rng: random.Random) -> int:
    """The teacher's one-shot answer: a guess, not a sum — the first term and about :data:`GUESS_EACH` for each of
    the others, give or take :data:`GUESS_SPREAD` (a hurried person's estimate). It is right only when the other terms
    happen to add up to about that, so it is rarely right on any sum and its centre is not the sum."""
    return terms[0] + GUESS_EACH * (len(terms) - 1) + rng.randint(-GUESS_SPREAD, GUESS_SPREAD)


def worked_steps(terms: list[int], rng: random.Random, p_slip: float = P_SLIP, p_reflect: float = P_REFLECT) -> str:
    """The teacher's running total, one step a term: ``label+term=total``, the total always written in two digits (so
    every step has the same shape: a tiny model finds the last total and the next term at the same distance each
    time). A step slips with probability ``p_slip``, and a slip is caught (``wait``, the step again, right) with
    probability ``p_reflect``.

    >>> worked_steps([3, 5, 7, 2], random.Random(0), p_slip=0.0)
    'a+3=03 b+5=08 c+7=15 d+2=17'
    >>> worked_steps([3, 5, 7], random.Random(1), p_slip=1.0, p_reflect=1.0)  # every step slips, every slip caught
    'a+3=01 wait a+3=03 b+5=10 wait b+5=08 c+7=14 wait c+7=15'
    """
    total, steps = 0, []
    for label, term in zip(LABELS, terms):
        right = total + term
        if rng.random() < p_slip:
            wrong = slip(right, rng)
            steps.append(f"{label}+{term}={wrong:02d}")
            if rng.random() < p_reflect:
                steps.append(f"{REFLECTION} {label}+{term}={right:02d}")
                total = right
            else:
                total = wrong
        else:
            steps.append(f"{label}+{term}={right:02d}")
            total = right
    return " ".join(steps)


def teacher_trace(
    terms: list[int],
    rng: random.Random,
    p_worked: float = P_WORKED,
    p_doubt: float = P_DOUBT,
    p_slip: float = P_SLIP,
) -> str:
    """The teacher's completion for the sum of ``terms``: a guess, or with probability ``p_worked`` worked steps
    (each slipping with probability ``p_slip``: :func:`worked_steps`) — which, ``p_doubt`` of the time (the default:
    always), come after a guess it doubted: ``"16 wait a+3=03 ... d+2=17"``. (``p_doubt=0``: the same traces without
    the doubted guesses.)

    >>> [teacher_trace([3, 5, 7, 2], random.Random(seed)) for seed in (0, 1, 4)]
    ['19', '16 wait a+3=03 b+5=08 c+7=15 d+2=17', '16 wait a+3=03 b+5=08 c+7=15 d+2=18']
    >>> teacher_trace([3, 5, 7, 2], random.Random(1), p_doubt=0.0)
    'a+3=03 b+5=08 c+7=15 d+2=17'
    """
    if rng.random() >= p_worked:
        return str(direct_answer(terms, rng))
    guess = direct_answer(terms, rng)
    steps = worked_steps(terms, rng, p_slip=p_slip)
    return f"{guess} {REFLECTION} {steps}" if rng.random() < p_doubt else steps


def final_answer(completion: str, prompt: str = "") -> str | None:
    """The answer a completion gives: its last number outside a copy of the prompt (None: it gives none)."""
    return lenient_answer(completion, prompt)


def is_right(completion: str, prompt: str, answer: str) -> bool:
    """Whether the completion's final answer is the sum.

    >>> is_right('a+3=03 b+5=08 c+7=14 wait c+7=15', 'a3 b5 c7=', '15'), is_right('14', 'a3 b5 c7=', '15')
    (True, False)
    >>> is_right('a+3=03 b+1=04', 'a3 b1=', '4')  # a two-digit total is its number
    True
    """
    given = final_answer(completion, prompt)
    return given is not None and given.isdigit() and int(given) == int(str(answer).strip())


def has_steps(completion: str) -> bool:
    """Whether a completion shows worked steps: a step ``label+term=total`` (``b+5=08``)."""
    return _STEP.search(completion) is not None


_STEP = re.compile(rf"[{LABELS}]\+\d=")


def correct(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float]:
    """The RL reward, and the only one: 1.0 when the final answer (the last number) is the sum, else 0.0. Nothing
    in it looks at length, steps or reflection."""
    return [float(is_right(str(c), str(p), str(a))) for p, c, a in zip(prompts, completions, answer)]


_WAIT = reflection_pattern([REFLECTION]).pattern  # "wait" as the reasoning metrics read it: "17wait" too, not "await"
_RECHECK = re.compile(rf"=(\d+)\s*{_WAIT}\s*[{LABELS}]\+\d=(\d+)")
_DOUBT = re.compile(rf"^\s*(\d+)\s*{_WAIT}")


def doubted(completion: str) -> str | None:
    """The guess a completion starts with and then doubts (``"19 wait a+3=03 ..."`` → ``"19"``), else None.

    >>> doubted("19 wait a+3=03"), doubted("19wait a+3=03"), doubted("19 awaits"), doubted("a+3=03")
    ('19', '19', None, None)
    """
    m = _DOUBT.match(completion)
    return m.group(1) if m else None


def rechecks(completion: str) -> bool:
    """Whether a completion re-does one of its steps: "wait" after a step's total (``"c+7=14 wait c+7=15"``).

    >>> rechecks("c+7=14 wait c+7=15"), rechecks("c+7=14wait c+7=15"), rechecks("c+7=15 d+2=17")
    (True, True, False)
    """
    return _RECHECK.search(completion) is not None


def corrects(completion: str) -> bool:
    """Whether a reflection changed what the completion said: a doubted guess that differs from the final answer
    (``"19 wait ... d+2=17"``), or a re-done step whose total differs from the one before "wait" (``"c+7=14 wait
    c+7=15"``). (The reasoning metrics' aha moment reads the last number before the phrase as the answer written
    before it; in a running total that is the step's total, so a re-check that changed nothing, ``"b+5=08 wait
    b+5=08"``, counts there as an aha when the final answer is right. This does not.)

    >>> corrects("a+3=03 b+5=08 c+7=14 wait c+7=15 d+2=17"), corrects("a+3=03 b+5=08 wait b+5=08 c+7=15")
    (True, False)
    >>> corrects("19 wait a+3=03 b+5=08 c+7=15 d+2=17"), corrects("17 wait a+3=03 b+5=08 c+7=15 d+2=17")
    (True, False)
    """
    guess = doubted(completion)
    final = final_answer(completion)
    if guess is not None and final is not None and final.isdigit() and int(guess) != int(final):
        return True
    return any(before != after for before, after in _RECHECK.findall(completion))
