"""Reasoning metrics of R1-Zero-style runs: format, strict and lenient accuracy, reflection, and "aha moments".

Each completion is judged on its own (:func:`judge`); a batch's metrics are means over those judgements
(:func:`reasoning_metrics`). Definitions, on the text a model wrote:

- **strict answer**: the inside of the last ``<answer>…</answer>``; none without the tags.
- **lenient answer**: the last number anywhere in the text. A completion is *lenient-correct* when its strict or its
  lenient answer is right (so lenient accuracy ≥ strict accuracy).
- **format**: the whole completion is ``<think>…</think> <answer>…</answer>`` (the ``think_format`` reward).
- **reflects**: one of the reflection phrases occurs (whole words, any case). The default list is Oat-Zero's
  ("There may not be an aha moment") self-reflection keywords plus ``wait``, ``alternatively``, ``however``,
  ``verify``.
- **aha moment**: the completion reflects, the answer it had written before its first reflection phrase differs from
  its final answer, and the final answer is right: a self-correction. The answer written before the reflection is
  the inside of an ``<answer>`` closed before it, else the last number before it that is not one of the prompt's
  numbers (the first numbers of a chain of thought are usually the operands, restated). The final answer is the
  strict answer, or the last number where there are no tags.

    >>> j = judge("<think>23+45 = 58. Wait, let me recheck: 3+5=8, 2+4=6, so 68.</think> <answer>68</answer>",
    ...           "68", prompt="23+45=")
    >>> j.format, j.strict_correct, j.reflects, j.aha.first_answer, j.aha.final_answer
    (True, True, True, '58', '68')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aha.config.sections import REFLECTION_PHRASES
from aha.rewards.builtin import answer_matches, extract_answer, has_think_format

# a minus sign belongs to a number unless it follows a word or a ')' (then it is subtraction: '23-45' is 23 and 45)
_NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def reflection_pattern(phrases: tuple[str, ...] | list[str] = REFLECTION_PHRASES) -> re.Pattern:
    """One case-insensitive regex matching any phrase as whole words (any run of spaces between its words).

    >>> p = reflection_pattern(["wait", "check again"])
    >>> [bool(p.search(t)) for t in ["Wait, no.", "await it", "let me CHECK   again", "checking again"]]
    [True, False, True, False]
    """
    words = [r"\s+".join(re.escape(w) for w in phrase.split()) for phrase in phrases if phrase.strip()]
    if not words:
        return re.compile(r"(?!x)x")  # matches nothing: reflection off
    return re.compile(r"(?<![\w-])(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")(?![\w-])", re.IGNORECASE)


def strict_answer(text: str) -> str | None:
    """The inside of the last ``<answer>…</answer>``, stripped; None without the tags.

    >>> strict_answer("<think>hm</think><answer> 68 </answer>"), strict_answer("so 68")
    ('68', None)
    """
    answer, tagged = extract_answer(text)
    return answer if tagged else None


def lenient_answer(text: str) -> str | None:
    """The last number in the text (thousands commas dropped); None when there is none.

    >>> lenient_answer("23 + 45 is 68."), lenient_answer("about 1,024 or -3.5 then"), lenient_answer("50-62")
    ('68', '-3.5', '62')
    """
    found = _NUMBER_RE.findall(text)
    return found[-1].replace(",", "") if found else None


def _numbers(text: str) -> list[tuple[int, str]]:
    return [(m.end(), m.group().replace(",", "")) for m in _NUMBER_RE.finditer(text)]


@dataclass(frozen=True)
class AhaMoment:
    phrase: str  # the first reflection phrase, as written
    position: int  # where it starts in the text
    first_answer: str  # the answer written before it
    final_answer: str  # the right answer written at the end


def find_aha(
    text: str, gold: str, pattern: re.Pattern | None = None, prompt: str = "", match: str = "auto"
) -> AhaMoment | None:
    """The completion's aha moment (a self-correction, see the module's definition), or None.

    >>> find_aha("12+30 is 32. Wait, 1+3 is 4, so 42. <answer>42</answer>", "42", prompt="12+30=").first_answer
    '32'
    >>> find_aha("12+30 is 42. Wait, yes. <answer>42</answer>", "42", prompt="12+30=") is None  # nothing corrected
    True
    >>> find_aha("Wait: 12+30 = 42. <answer>42</answer>", "42", prompt="12+30=") is None  # no answer before it
    True
    """
    hit = (pattern or reflection_pattern()).search(text)
    if hit is None:
        return None
    before = text[: hit.start()]
    blocks = _ANSWER_BLOCK_RE.findall(before)
    if blocks:
        first = blocks[0].strip()
    else:
        operands = {n for _, n in _numbers(str(prompt))}
        candidates = [n for _, n in _numbers(before) if n not in operands]
        first = candidates[-1] if candidates else None
    final = strict_answer(text)
    final = final if final is not None else lenient_answer(text)
    if first is None or final is None or not answer_matches(final, True, str(gold), match):
        return None
    if answer_matches(first, True, final, match):  # the same answer: a check, not a correction
        return None
    return AhaMoment(hit.group(), hit.start(), first, final)


@dataclass(frozen=True)
class Judgement:
    format: bool
    reflects: bool
    strict_correct: bool | None  # None: no reference answer to compare with
    lenient_correct: bool | None
    aha: AhaMoment | None


def judge(
    text: str, gold: str | None, pattern: re.Pattern | None = None, prompt: str = "", match: str = "auto"
) -> Judgement:
    """Format, reflection, strict/lenient correctness and the aha moment of one completion (``gold``: the reference
    answer; None leaves correctness and aha unjudged)."""
    pattern = pattern or reflection_pattern()
    reflects = pattern.search(text) is not None
    if gold is None or str(gold).strip() == "":
        return Judgement(has_think_format(text), reflects, None, None, None)
    gold = str(gold).strip()
    strict = strict_answer(text)
    strict_ok = strict is not None and answer_matches(strict, True, gold, match)
    lenient = lenient_answer(text)
    lenient_ok = strict_ok or (lenient is not None and answer_matches(lenient, False, gold, match))
    aha = find_aha(text, gold, pattern, prompt, match) if reflects else None
    return Judgement(has_think_format(text), reflects, strict_ok, lenient_ok, aha)


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def reasoning_metrics(judgements: list[Judgement], lengths: list[int], prefix: str = "reasoning/") -> dict:
    """Means over a batch: ``format``, ``reflection_rate``, ``accuracy_strict``, ``accuracy_lenient``,
    ``accuracy_reflecting`` / ``accuracy_not_reflecting`` (strict), ``length_correct`` / ``length_wrong`` (tokens,
    by strict correctness), ``aha_rate``. A mean over no completions is None (e.g. nothing reflected), and the
    correctness keys are left out where no completion has a reference answer.

    >>> js = [judge("<think>x</think><answer>4</answer>", "4"), judge("Wait, 5", "4")]
    >>> m = reasoning_metrics(js, [10, 3])
    >>> m["reasoning/format"], m["reasoning/reflection_rate"], m["reasoning/accuracy_strict"], m["reasoning/length_wrong"]
    (0.5, 0.5, 0.5, 3.0)
    """
    out = {"format": _mean([j.format for j in judgements]), "reflection_rate": _mean([j.reflects for j in judgements])}
    judged = [(j, n) for j, n in zip(judgements, lengths) if j.strict_correct is not None]
    if judged:
        out.update(
            {
                "accuracy_strict": _mean([j.strict_correct for j, _ in judged]),
                "accuracy_lenient": _mean([j.lenient_correct for j, _ in judged]),
                "accuracy_reflecting": _mean([j.strict_correct for j, _ in judged if j.reflects]),
                "accuracy_not_reflecting": _mean([j.strict_correct for j, _ in judged if not j.reflects]),
                "length_correct": _mean([n for j, n in judged if j.strict_correct]),
                "length_wrong": _mean([n for j, n in judged if not j.strict_correct]),
                "aha_rate": _mean([j.aha is not None for j, _ in judged]),
            }
        )
    return {prefix + k: (float(v) if v is not None else None) for k, v in out.items()}


class ReasoningMeter:
    """Judges a run's completions with its reflection phrases and answer matching; ``golds`` is False where the
    task's correctness is not an answer to compare (countdown, code): then only format, reflection and length
    without the correct/wrong split are measured."""

    def __init__(
        self, phrases: list[str] | tuple[str, ...] = REFLECTION_PHRASES, match: str = "auto", golds: bool = True
    ):
        self.pattern, self.match, self.golds = reflection_pattern(phrases), match, golds

    def judge(self, prompts: list, texts: list[str], golds: list) -> list[Judgement]:
        return [
            judge(text, gold if self.golds else None, self.pattern, str(prompt), self.match)
            for prompt, text, gold in zip(prompts, texts, golds)
        ]

    def of_eval(self, rows: list[dict], result: dict, prefix: str = "reasoning/") -> dict:
        """The metrics of :func:`aha.evaluate.evaluate`'s greedy completions of ``rows``."""
        judged = self.judge([r["prompt"] for r in rows], result["completions"], [r.get("answer") for r in rows])
        return reasoning_metrics(judged, result["lengths"], prefix)


def reasoning_meter(enabled: bool | str, task_cfg, task) -> ReasoningMeter | None:
    """The run's meter where ``enabled`` (``log.reasoning_metrics``) is on ('auto': for the R1 templates), else None.
    ``task_cfg``: the config's ``task`` section (template, reflection phrases, answer matching)."""
    on = task_cfg.template in ("r1", "r1_plain") if enabled == "auto" else enabled
    if not on:
        return None
    return ReasoningMeter(
        task_cfg.reflection_phrases, task_cfg.answer_match, golds=getattr(task, "verifier", "accuracy") == "accuracy"
    )
