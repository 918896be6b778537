"""Built-in reward functions.

Every function here has TRL's reward signature::

    fn(prompts: list, completions: list, **kwargs) -> list[float | None]

``completions`` hold either plain strings or conversational message lists
(``[{"role": "assistant", "content": "..."}]``). Extra dataset columns arrive as keyword lists
(``answer=[...]``); the trainer also passes ``completion_ids`` (list of token-id lists) and
``max_completion_length`` (an int). Keywords a function does not use are ignored.

How an answer is found and compared (:func:`extract_answer`, :func:`answer_matches` …) is
:mod:`aha.rewards.answers`'s, re-exported here.
"""

from __future__ import annotations

import re
from typing import Any

from aha.rewards.answers import (
    ANSWER_MATCHES,
    answer_matches,
    extract_answer,
    looks_mathematical,
    unevaluated,
)

__all__ = [
    "ANSWER_MATCHES",
    "accuracy",
    "answer_matches",
    "completion_text",
    "extract_answer",
    "has_think_format",
    "looks_mathematical",
    "overlong",
    "repetition",
    "tag_count",
    "think_format",
    "unevaluated",
]


# ─────────────────────────────── helpers ───────────────────────────────


def _content_text(content: Any) -> str:
    """Text of a message ``content``: a string, None, or a list of ``{"type": "text"}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def completion_text(completion: Any) -> str:
    """The text of one completion (or prompt), plain or conversational.

    A string is returned as is; for a message list, the content of the last ``assistant``
    message (or of the last message when none is from the assistant).

    >>> completion_text("42")
    '42'
    >>> completion_text([{"role": "assistant", "content": "<answer>7</answer>"}])
    '<answer>7</answer>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return _content_text(message.get("content"))
        last = completion[-1]
        return _content_text(last.get("content") if isinstance(last, dict) else last)
    raise TypeError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


# ─────────────────────────────── accuracy ───────────────────────────────


def accuracy(
    prompts: list,
    completions: list,
    answer: list | None = None,
    match: str = "auto",
    strict: bool = False,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the completion's answer equals the ``answer`` column, else 0.0.

    The answer is the inside of ``<answer>...</answer>`` when present, else the whole text (``strict=True``: only the
    inside of the tags counts, a completion without them scores 0; R1-Zero's rule). ``match`` (config:
    ``task.answer_match``) says how answers compare (:func:`answer_matches`): by default numbers and expressions as
    mathematics (``0.5``, ``1/2`` and ``\\frac{1}{2}`` all match; ``04`` = ``4``) and anything else, e.g. a word or
    a reversed string, as text. A row whose ``answer`` is None or empty gets None (no opinion).

    >>> accuracy(["2+2="] * 4, ["4", "<answer>04</answer>", "5", "x"], answer=["4", "4", "4", None])
    [1.0, 1.0, 0.0, None]
    >>> accuracy(["reverse abc"] * 2, ["cba", "abc"], answer=["cba", "cba"])
    [1.0, 0.0]
    >>> accuracy(["2+2="] * 2, ["4", "<think>2+2</think><answer>4</answer>"], answer=["4", "4"], strict=True)
    [0.0, 1.0]
    """
    if answer is None:
        raise ValueError(
            "accuracy needs an 'answer' column in the dataset (the gold answer of each prompt; "
            "task.answer_column names yours)"
        )
    if len(answer) != len(completions):
        raise ValueError(f"accuracy got {len(answer)} answers for {len(completions)} completions")
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer):
        gold_text = "" if gold is None else str(gold).strip()
        if not gold_text:
            rewards.append(None)
            continue
        pred, tagged = extract_answer(completion_text(completion))
        ok = (tagged or not strict) and answer_matches(pred, tagged, gold_text, match)
        rewards.append(1.0 if ok else 0.0)
    return rewards


# ─────────────────────────────── format ───────────────────────────────

# Exactly one think block, then exactly one answer block, nothing else but whitespace.
_THINK_FORMAT_RE = re.compile(
    r"\s*<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>\s*",
    re.DOTALL,
)


def has_think_format(text: str) -> bool:
    """Whether the whole text is ``<think>...</think> <answer>...</answer>`` (R1-Zero's format), one block each.

    >>> has_think_format("<think>2+2</think>\\n<answer>4</answer>"), has_think_format("<answer>4</answer>")
    (True, False)
    """
    return _THINK_FORMAT_RE.fullmatch(text) is not None


def think_format(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 when the whole completion is ``<think>...</think> <answer>...</answer>`` (R1-Zero).

    >>> think_format([None] * 3, ["<think>2+2</think>\\n<answer>4</answer>", "<answer>4</answer>",
    ...                           "<think>a</think><answer>4</answer> extra"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if has_think_format(completion_text(c)) else 0.0 for c in completions]


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def tag_count(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """0.25 for each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` present exactly once.

    A smooth stepping stone towards ``think_format`` (as open-r1's ``tag_count_reward``).

    >>> tag_count([None] * 2, ["<think>hmm</think> 4", "<think><think></think><answer>4</answer>"])
    [0.5, 0.75]
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        rewards.append(sum(0.25 for tag in _TAGS if text.count(tag) == 1))
    return rewards


# ─────────────────────────────── length ───────────────────────────────


def overlong(
    prompts: list,
    completions: list,
    completion_ids: list | None = None,
    max_completion_length: int | None = None,
    overlong_buffer: int | None = None,
    **kwargs: Any,
) -> list[float]:
    """DAPO's soft overlong punishment: 0 for short enough completions, down to -1 at the limit.

    With ``L`` the completion length in tokens (``len(completion_ids[i])``; characters of the
    text when no ids are passed), ``L_max = max_completion_length`` and
    ``B = overlong_buffer`` (default ``L_max // 4``)::

        reward = 0                          if L <= L_max - B
               = (L_max - B - L) / B        if L_max - B < L <= L_max
               = -1                         if L > L_max

    With ``L_max=100, B=25``: ``L=75 → 0.0``, ``L=80 → -0.2``, ``L=90 → -0.6``,
    ``L=100 → -1.0``, ``L=120 → -1.0``.

    >>> overlong([None] * 3, ["", "", ""], completion_ids=[[0] * 75, [0] * 80, [0] * 100],
    ...          max_completion_length=100)
    [0.0, -0.2, -1.0]
    """
    if max_completion_length is None:
        raise ValueError(
            "overlong needs max_completion_length (the trainer passes rollout.max_new_tokens; called directly, pass it)"
        )
    max_len = int(max_completion_length)
    buffer = max_len // 4 if overlong_buffer is None else int(overlong_buffer)
    if max_len <= 0 or buffer < 0:
        raise ValueError(
            f"overlong needs max_completion_length > 0 and overlong_buffer >= 0, got {max_len} and {buffer}"
        )
    expected = max_len - buffer
    rewards = []
    for i, completion in enumerate(completions):
        if completion_ids is not None:
            length = len(completion_ids[i])
        else:
            length = len(completion_text(completion))
        if length <= expected:
            rewards.append(0.0)
        elif length <= max_len:  # here buffer > 0, since expected < length <= max_len
            rewards.append((expected - length) / buffer)
        else:
            rewards.append(-1.0)
    return rewards


# ─────────────────────────────── repetition ───────────────────────────────


def repetition(
    prompts: list,
    completions: list,
    ngram_size: int = 3,
    max_penalty: float = -1.0,
    **kwargs: Any,
) -> list[float]:
    """N-gram repetition penalty: ``(1 - unique_ngrams / total_ngrams) * max_penalty``.

    N-grams are over lower-cased words (``ngram_size=3``); a text with fewer words than that is
    read as characters instead (so ``"1111111"`` from a character-level model is caught). A
    text shorter than ``ngram_size`` units gets 0. As open-r1's ``get_repetition_penalty_reward``.

    ``"a b a b a b"`` has 4 word trigrams, 2 distinct: ``(1 - 2/4) * -1 = -0.5``.

    >>> repetition([None] * 3, ["a b a b a b", "one two three four", "hi"])
    [-0.5, 0.0, 0.0]
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion).lower()
        units: list[str] = text.split()
        if len(units) < ngram_size:
            units = list(text.strip())
        if len(units) < ngram_size:
            rewards.append(0.0)
            continue
        ngrams = list(zip(*(units[i:] for i in range(ngram_size))))
        penalty = (1.0 - len(set(ngrams)) / len(ngrams)) * max_penalty
        rewards.append(penalty + 0.0)  # + 0.0 turns -0.0 into 0.0
    return rewards
