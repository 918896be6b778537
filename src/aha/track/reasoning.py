"""Reasoning metrics of R1-Zero-style runs: format, strict and lenient accuracy, reflection, and "aha moments".

Each completion is judged on its own (:func:`judge`); a batch's metrics are means over those judgements
(:func:`reasoning_metrics`). Reflection, the aha moment and the lenient answer are judged on what the model itself
wrote; format and the strict answer on what the rewards read. Definitions:

- **the model's own text**: a completion after ``task.response_prefix`` (the run wrote that, not the model), or a
  multi-turn transcript's ``assistant`` messages in order (a list of chat messages; the other messages — the
  environment's, a tool's, the user's — are not the model's). Within it, a **copy** is a run of at least
  :data:`COPY_WORDS` words that the prompt also has in that order, and that is longer than the phrase or number it
  holds: the model repeating the question, or the template's example text. "The prompt" is the row's prompt (all its
  messages), the R1 templates' instruction (:data:`aha.data.templates.R1_SYSTEM`) and a transcript's other messages;
  words are compared as runs of letters and digits, in any case, whatever the punctuation and spaces between them. A
  prompt shorter than :data:`COPY_WORDS` words is copied by a run as long as the whole prompt.
- **strict answer**: the inside of the last ``<answer>…</answer>`` (of a transcript's last assistant message): what
  the ``accuracy`` reward with ``strict`` reads; none without the tags.
- **lenient answer**: the last number of the model's own text outside a copy (so "68. What is 23+45?" answers 68, and
  a restated "23+45" answers nothing). A completion is *lenient-correct* when its strict or its lenient answer is right
  (so lenient accuracy ≥ strict accuracy).
- **format**: the whole completion (a transcript's last assistant message) is ``<think>…</think> <answer>…</answer>``
  (the ``think_format`` reward; ``task.response_prefix`` included, as the reward sees it).
- **reflects**: a reflection phrase occurs in the model's own text, outside a copy, before the end of its final answer.
  A phrase counts only as the whole word or phrase, in any case and with any spaces between its words: "await",
  "waitress", "pre-evaluate", "rechecking" and "checking again" hold none (only the forms listed count; list
  "rechecking" or "double-check" in ``task.reflection_phrases`` to count them). The end of the final answer is the
  ``</answer>`` of the strict answer: a phrase after it cannot have changed the answer (R1's format puts nothing
  there), so it does not count; without tags there is no marked end and the whole text counts. The default list is
  Oat-Zero's ("There may not be an aha moment") self-reflection keywords plus ``wait``, ``alternatively``,
  ``however``, ``verify``.
- **aha moment**: in the order written, a reflection phrase (one that counts, above), an answer written before it,
  and a final answer written after it that differs from it and is right: a self-correction. The answer before is the
  inside of the last ``<answer>`` closed before the phrase, else the last number before it that is not one of the
  prompt's numbers (the first numbers of a chain of thought are usually the operands, restated). The final answer is
  the strict answer, or the lenient one where there are no tags. The moment is the first phrase for which this holds.

    >>> j = judge("<think>23+45 = 58. Wait, let me recheck: 3+5=8, 2+4=6, so 68.</think> <answer>68</answer>",
    ...           "68", prompt="23+45=")
    >>> j.format, j.strict_correct, j.reflects, j.aha.first_answer, j.aha.final_answer
    (True, True, True, '58', '68')
    >>> judge("Wait for the bus. What is 23+45? 68", "68", prompt="Wait for the bus. What is 23+45?").reflects
    False
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aha.config.sections import REFLECTION_PHRASES
from aha.data.templates import R1_PLAIN, R1_SYSTEM
from aha.rewards.builtin import answer_matches, completion_text, extract_answer, has_think_format

COPY_WORDS = 4  # a run of this many words the prompt also has (and more than the phrase itself) is a copy of it

# a minus sign belongs to a number unless it follows a word or a ')' (then it is subtraction: '23-45' is 23 and 45)
_NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # (the rewards' own, aha.rewards.answers)
_WORD_RE = re.compile(r"\w+")


def reflection_pattern(phrases: tuple[str, ...] | list[str] = REFLECTION_PHRASES) -> re.Pattern:
    """One case-insensitive regex matching any phrase as whole words (any run of spaces between its words). A letter,
    ``_`` or ``-`` next to a phrase makes it part of another word; a digit does not (``24wait``: a number, then the
    word, as a model may write it without the space).

    >>> p = reflection_pattern(["wait", "check again"])
    >>> [bool(p.search(t)) for t in ["Wait, no.", "await it", "let me CHECK   again", "checking again", "24wait"]]
    [True, False, True, False, True]
    """
    words = [r"\s+".join(re.escape(w) for w in phrase.split()) for phrase in phrases if phrase.strip()]
    if not words:
        return re.compile(r"(?!x)x")  # matches nothing: reflection off
    letter = r"[^\W\d]"  # a word character that is not a digit: a letter or _
    phrase = "|".join(sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!{letter})(?<!-)(?:{phrase})(?!{letter}|-)", re.IGNORECASE)


def strict_answer(text: str) -> str | None:
    """The inside of the last ``<answer>…</answer>``, stripped; None without the tags.

    >>> strict_answer("<think>hm</think><answer> 68 </answer>"), strict_answer("so 68")
    ('68', None)
    """
    answer, tagged = extract_answer(text)
    return answer if tagged else None


def lenient_answer(text: str, prompt: Any = "") -> str | None:
    """The last number in the text (thousands commas dropped) outside a copy of ``prompt``; None when there is none.

    >>> lenient_answer("23 + 45 is 68."), lenient_answer("about 1,024 or -3.5 then"), lenient_answer("50-62")
    ('68', '-3.5', '62')
    >>> lenient_answer("68. Now: what is 23+45?", prompt="What is 23+45?"), lenient_answer("23+45", prompt="23+45=")
    ('68', None)
    """
    found = Written(text, prompt).lenient()
    return found[1] if found else None


def _numbers(text: str) -> list[tuple[int, str]]:
    return [(m.end(), m.group().replace(",", "")) for m in _NUMBER_RE.finditer(text)]


def _text_of(prompt: Any) -> str:
    """A prompt's text: itself, or its messages' contents one per line."""
    if isinstance(prompt, (list, tuple)):
        return "\n".join(completion_text(m) for m in prompt)
    return "" if prompt is None else str(prompt)


def _is_assistant(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "assistant"


@lru_cache(maxsize=64)  # a group's completions share their prompt
def _words_of(context: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD_RE.findall(context))


@lru_cache(maxsize=64)
def _numbers_of(context: str) -> frozenset[str]:
    return frozenset(n for _, n in _numbers(context))


@lru_cache(maxsize=64)
def _runs(context: str, n: int) -> frozenset[tuple[str, ...]]:
    """Every run of ``n`` words of ``context`` (lower case)."""
    words = _words_of(context)
    return frozenset(words[i : i + n] for i in range(len(words) - n + 1))


class Written:
    """One completion, split into what the model wrote and what it was given (the module's definitions).

    ``completion``: the text (``response_prefix`` first, as the rewards see it) or a transcript (chat messages);
    ``prompt``: the row's prompt (text or messages); ``template_text``: what the prompt template adds (R1's
    instruction). ``text`` is the completion's text, a transcript's assistant messages joined by a blank line.

    >>> w = Written("<think>What is 2+2? Wait, 4</think><answer>4</answer> wait", "What is 2+2?", "<think>")
    >>> [m.group() for m in w.reflections(reflection_pattern())]  # not the 'wait' after </answer>
    ['Wait']
    >>> w.text[15:18], w.copied(15, 18), w.text[20:24], w.copied(20, 24)  # in the repeated question, or not
    ('2+2', True, 'Wait', False)
    """

    def __init__(self, completion: Any, prompt: Any = "", response_prefix: str = "", template_text: str = ""):
        given = [_text_of(prompt), template_text]
        if isinstance(completion, (list, tuple)):  # a transcript: the assistant's messages are the model's
            turns = [completion_text(m) for m in completion if _is_assistant(m)]
            given += [completion_text(m) for m in completion if not _is_assistant(m)]
            self.text = "\n\n".join(turns)
            self.own_from = 0
            self.answer_from = len(self.text) - len(turns[-1]) if turns else 0  # the rewards read the last turn
        else:
            self.text = "" if completion is None else str(completion)
            self.own_from = len(response_prefix) if response_prefix and self.text.startswith(response_prefix) else 0
            self.answer_from = 0
        self._context = context = "\n".join(g for g in given if g)
        self._context_len = len(_words_of(context))
        found = list(_WORD_RE.finditer(self.text))
        self._words = [m.group().lower() for m in found]
        self._starts, self._ends = [m.start() for m in found], [m.end() for m in found]
        blocks = list(_ANSWER_BLOCK_RE.finditer(self.text, self.answer_from))
        self.answer_block = blocks[-1] if blocks else None  # the strict answer's block
        self.answer_end = self.answer_block.end() if self.answer_block else len(self.text)

    @property
    def answer_text(self) -> str:
        """What the rewards read: the completion, or a transcript's last assistant message."""
        return self.text[self.answer_from :]

    def copied(self, start: int, end: int) -> bool:
        """Whether the text's characters ``start:end`` lie inside a copy of the prompt (:data:`COPY_WORDS`)."""
        a, b = bisect_right(self._ends, start), bisect_left(self._starts, end)  # the words it touches
        span = max(b - a + 1, min(COPY_WORDS, self._context_len))
        if b <= a or span > self._context_len:
            return False
        runs = _runs(self._context, span)
        return any(
            tuple(self._words[s : s + span]) in runs
            for s in range(max(0, b - span), min(a, len(self._words) - span) + 1)
        )

    def reflections(self, pattern: re.Pattern) -> list[re.Match]:
        """The reflection phrases that count, in order: the model's own, outside a copy, before its final answer ends."""
        hits = pattern.finditer(self.text, self.own_from, self.answer_end)
        return [m for m in hits if not self.copied(m.start(), m.end())]

    def lenient(self) -> tuple[int, str] | None:
        """(where it starts, the number) of the last number of the model's own text outside a copy."""
        for m in reversed(list(_NUMBER_RE.finditer(self.text, self.own_from))):
            if not self.copied(m.start(), m.end()):
                return m.start(), m.group().replace(",", "")
        return None

    def answer_before(self, position: int) -> str | None:
        """The answer written before ``position``: the last ``<answer>`` closed before it, else the last number
        before it that is not one of the prompt's numbers."""
        blocks = _ANSWER_BLOCK_RE.findall(self.text, self.own_from, position)
        if blocks:
            return blocks[-1].strip()
        given = _numbers_of(self._context)
        numbers = [n for _, n in _numbers(self.text[self.own_from : position]) if n not in given]
        return numbers[-1] if numbers else None

    def final_answer(self) -> tuple[int, str] | None:
        """(where it starts, the answer): the strict answer's block, or the lenient answer without tags."""
        if self.answer_block is not None:
            return self.answer_block.start(), self.answer_block.group(1).strip()
        return self.lenient()


@dataclass(frozen=True)
class AhaMoment:
    phrase: str  # the reflection phrase, as written
    position: int  # where it starts in the text (a transcript's: in its assistant messages joined by a blank line)
    first_answer: str  # the answer written before it
    final_answer: str  # the right answer written after it, at the end


def find_aha(
    completion: Any,
    gold: str,
    pattern: re.Pattern | None = None,
    prompt: Any = "",
    match: str = "auto",
    response_prefix: str = "",
    template_text: str = "",
) -> AhaMoment | None:
    """The completion's aha moment (a self-correction, see the module's definition), or None.

    >>> find_aha("12+30 is 32. Wait, 1+3 is 4, so 42. <answer>42</answer>", "42", prompt="12+30=").first_answer
    '32'
    >>> find_aha("12+30 is 42. Wait, yes. <answer>42</answer>", "42", prompt="12+30=") is None  # nothing corrected
    True
    >>> find_aha("Wait: 12+30 = 42. <answer>42</answer>", "42", prompt="12+30=") is None  # no answer before it
    True
    """
    written = Written(completion, prompt, response_prefix, template_text)
    return _aha(written, str(gold).strip(), written.reflections(pattern or reflection_pattern()), match)


def _aha(written: Written, gold: str, reflections: list[re.Match], match: str) -> AhaMoment | None:
    """The first of ``reflections`` (the phrases that count, in order) that is an aha moment."""
    final = written.final_answer()
    if final is None or not answer_matches(final[1], True, gold, match):
        return None
    for hit in reflections:
        if hit.end() > final[0]:  # the final answer must come after the reflection
            break
        first = written.answer_before(hit.start())
        if first is not None and not answer_matches(first, True, final[1], match):  # the same: a check, not a fix
            return AhaMoment(hit.group(), hit.start(), first, final[1])
    return None


@dataclass(frozen=True)
class Judgement:
    format: bool
    reflects: bool
    strict_correct: bool | None  # None: no reference answer to compare with
    lenient_correct: bool | None
    aha: AhaMoment | None


def judge(
    completion: Any,
    gold: str | None,
    pattern: re.Pattern | None = None,
    prompt: Any = "",
    match: str = "auto",
    response_prefix: str = "",
    template_text: str = "",
) -> Judgement:
    """Format, reflection, strict/lenient correctness and the aha moment of one completion — its text (with
    ``response_prefix`` first, as the rewards see it) or a multi-turn transcript (chat messages) — for ``prompt``
    (text or messages; ``template_text``: what the prompt template adds). ``gold``: the reference answer; None
    leaves correctness and aha unjudged."""
    pattern = pattern or reflection_pattern()
    written = Written(completion, prompt, response_prefix, template_text)
    shape = has_think_format(written.answer_text)
    reflections = written.reflections(pattern)
    reflects = bool(reflections)
    if gold is None or str(gold).strip() == "":
        return Judgement(shape, reflects, None, None, None)
    gold = str(gold).strip()
    strict = strict_answer(written.answer_text)
    strict_ok = strict is not None and answer_matches(strict, True, gold, match)
    lenient = written.lenient()
    lenient_ok = strict_ok or (lenient is not None and answer_matches(lenient[1], False, gold, match))
    aha = _aha(written, gold, reflections, match) if reflects else None
    return Judgement(shape, reflects, strict_ok, lenient_ok, aha)


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
    without the correct/wrong split are measured. ``response_prefix`` (``task.response_prefix``) starts every
    completion's text and ``template_text`` is what the prompt template adds (R1's instruction): neither is the
    model's."""

    def __init__(
        self,
        phrases: list[str] | tuple[str, ...] = REFLECTION_PHRASES,
        match: str = "auto",
        golds: bool = True,
        response_prefix: str = "",
        template_text: str = "",
    ):
        self.pattern, self.match, self.golds = reflection_pattern(phrases), match, golds
        self.response_prefix, self.template_text = response_prefix, template_text

    def judge(self, prompts: list, completions: list, golds: list) -> list[Judgement]:
        """One verdict per completion: a text, or a multi-turn transcript (chat messages: only the assistant's
        count as the model's)."""
        return [
            judge(
                completion,
                gold if self.golds else None,
                self.pattern,
                prompt,
                self.match,
                self.response_prefix,
                self.template_text,
            )
            for prompt, completion, gold in zip(prompts, completions, golds)
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
    template = getattr(task_cfg, "template", "")
    return ReasoningMeter(
        task_cfg.reflection_phrases,
        task_cfg.answer_match,
        golds=getattr(task, "verifier", "accuracy") == "accuracy",
        response_prefix=getattr(task_cfg, "response_prefix", "") or "",
        template_text={"r1": R1_SYSTEM, "r1_plain": R1_PLAIN.format(prompt="")}.get(template, ""),
    )
