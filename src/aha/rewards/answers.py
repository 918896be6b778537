"""Answers: the answer part of a completion, and whether it equals the gold one.

:func:`extract_answer` takes the inside of ``<answer>`` tags (else the whole text); :func:`answer_matches` compares
it with the gold answer as text or as mathematics (math-verify, with a fast path for integers), as the ``accuracy``
reward (:mod:`aha.rewards.builtin`) and the reasoning metrics do.
"""

from __future__ import annotations

import functools
import re
import threading

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
