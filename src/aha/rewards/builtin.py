"""Built-in reward functions.

Every function here has TRL's reward signature::

    fn(prompts: list, completions: list, **kwargs) -> list[float | None]

``completions`` hold either plain strings or conversational message lists
(``[{"role": "assistant", "content": "..."}]``). Extra dataset columns arrive as keyword lists
(``answer=[...]``); the trainer also passes ``completion_ids`` (list of token-id lists) and
``max_completion_length`` (an int). Keywords a function does not use are ignored.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

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


_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(text: str) -> tuple[str, bool]:
    """The answer part of a completion and whether it came from ``<answer>`` tags.

    The inside of the last ``<answer>...</answer>`` pair, stripped; otherwise the whole
    stripped text.

    >>> extract_answer("<think>2+2</think> <answer> 4 </answer>")
    ('4', True)
    >>> extract_answer(" 4\\n")
    ('4', False)
    """
    if "<answer>" in text:  # cheap check before the regex: the CPU demos call this a lot
        found = _ANSWER_RE.findall(text)
        if found:
            return found[-1].strip(), True
    return text.strip(), False


# ─────────────────────────────── accuracy ───────────────────────────────

_INT_RE = re.compile(r"[+-]?\d+")


def _timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple:
    """math-verify parse of a gold answer; bare numbers/expressions are wrapped in ``$...$``.

    Cached: in GRPO every gold answer is compared with G completions.
    """
    from math_verify import parse

    timeout = _timeout()
    if "$" in gold or "\\boxed" in gold:
        return tuple(parse(gold, parsing_timeout=timeout))
    return tuple(parse(f"${gold}$", parsing_timeout=timeout) or parse(gold, parsing_timeout=timeout))


@functools.lru_cache(maxsize=8192)
def _parse_prediction(pred: str, tagged: bool) -> tuple:
    """math-verify parse of a prediction.

    Inside ``<answer>`` tags the text is meant to be just the answer, so it is read as LaTeX
    first (``$x+1$``); a whole free-text completion goes through math-verify's own extraction
    first ("... the answer is 42."). The other reading is the fallback when the first finds
    nothing. Cached: the completions of a group often give the same answer.
    """
    from math_verify import parse

    timeout = _timeout()
    if "$" in pred:
        return tuple(parse(pred, parsing_timeout=timeout))
    raw = functools.partial(parse, pred, parsing_timeout=timeout)
    wrapped = functools.partial(parse, f"${pred}$", parsing_timeout=timeout)
    first, second = (wrapped, raw) if tagged else (raw, wrapped)
    return tuple(first() or second())


_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# a sum, difference, product or power of numbers (a fraction is a value: 1/2 and \frac{1}{2} stay allowed)
_OPERATION_RE = re.compile(r"[\d)}]\s*(?:[-+*×^]|\\times|\\cdot)\s*[-+(]?\s*\d")


def unevaluated(pred: str, gold: str) -> bool:
    """Whether ``pred`` is an arithmetic expression left to compute where the gold answer is a number: ``80+51`` for
    131 restates the question rather than answering it (math-verify would evaluate it and call it right). A fraction
    counts as a value, and so does what follows the last ``=``. Only a bare answer is judged so (the inside of
    ``<answer>``, or a text without words); in free text math-verify picks out the answer.

    >>> [unevaluated(p, "131") for p in ["80+51", "$80 + 51$", "\\boxed{131}", "-131", "131.0", "262/2", "2*65+1"]]
    [True, True, False, False, False, False, True]
    >>> unevaluated("80+51=131", "131"), unevaluated("80+51", "x+1")  # worked to a value; a symbolic gold
    (False, False)
    """
    return bool(_NUMBER_RE.fullmatch(gold.strip())) and bool(_OPERATION_RE.search(pred.rsplit("=", 1)[-1]))


def _is_correct(pred: str, tagged: bool, gold: str) -> bool:
    """Fast exact/integer comparison, then math-verify; an unevaluated expression for a numeric gold is wrong."""
    if pred == gold:
        return True
    if _INT_RE.fullmatch(gold) and _INT_RE.fullmatch(pred) and len(pred) < 4000:
        return int(pred) == int(gold)  # "007" == "7"; no sympy needed
    if not pred or ((tagged or not _WORD_RE.search(pred)) and unevaluated(pred, gold)):
        return False
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return False
    pred_parsed = _parse_prediction(pred, tagged)
    if not pred_parsed:
        return False
    from math_verify import verify

    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_timeout()))


_MATH_WORDS = frozenset(
    {
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "log",
        "ln",
        "exp",
        "sqrt",
        "pi",
        "inf",
        "oo",
        "mod",
        "gcd",
        "lcm",
        "min",
        "max",
        "abs",
        "arcsin",
        "arccos",
        "arctan",
        "sinh",
        "cosh",
        "tanh",
    }
)
_WORD_RE = re.compile(r"[A-Za-z]+")
_MATH_OP_RE = re.compile(r"[-+*/^=()<>]")
ANSWER_MATCHES = ("auto", "exact", "math")


def looks_mathematical(text: str) -> bool:
    r"""Whether an answer reads as mathematics: LaTeX, or digits and operators with at most single-letter variables
    and function names (``sin``, ``sqrt`` …). A word is not mathematics, though math-verify would read ``abc`` as the
    product ``a·b·c`` (so ``cba`` would equal it).

    >>> [looks_mathematical(t) for t in ["42", "-0.5", r"\frac{1}{2}", "2x+1", "x^2", "sqrt(2)", "abc", "Paris", "x"]]
    [True, True, True, True, True, True, False, False, False]
    """
    text = text.strip()
    if "\\" in text or "$" in text:
        return True
    words = _WORD_RE.findall(text)
    if any(len(w) > 1 and w.lower() not in _MATH_WORDS for w in words):
        return False
    return bool(_INT_DIGIT_RE.search(text)) or bool(words and _MATH_OP_RE.search(text))


_INT_DIGIT_RE = re.compile(r"\d")


def _normalised(text: str) -> str:
    return " ".join(text.split())


def answer_matches(pred: str, tagged: bool, gold: str, match: str = "auto") -> bool:
    """Whether a predicted answer equals the gold one. ``exact``: equal strings after collapsing whitespace (case
    counts); ``math``: equal numbers, then math-verify (``0.5`` = ``1/2`` = ``\\frac{1}{2}``); ``auto``: ``math``
    where the gold answer reads as mathematics (:func:`looks_mathematical`), else ``exact``.

    >>> answer_matches("cba", True, "abc"), answer_matches("ba", True, "ab"), answer_matches("1/2", True, "0.5")
    (False, False, True)
    """
    if match not in ANSWER_MATCHES:
        raise ValueError(f"match must be one of {', '.join(ANSWER_MATCHES)}, got {match!r}")
    if match == "exact" or (match == "auto" and not looks_mathematical(gold)):
        return _normalised(pred) == _normalised(gold)
    return _is_correct(pred, tagged, gold)


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
