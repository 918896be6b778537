"""Built-in tools: ``calculator`` (exact arithmetic, no ``eval``) and ``python`` (a program run in aha's sandbox).

Named in a config as ``env: {tools: [calculator, python]}``; each is a plain function with a docstring, the same
shape as a user's tool.

>>> calculator("(12.5 - 3) * 4 / 8")
'4.75'
>>> calculator("2 ** 100")
'1267650600228229401496703205376'
>>> calculator("1/3 + 1/6")
'0.5'
>>> calculator("10 / 3")
'10/3 ≈ 3.33333333333'
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction

from aha.env.tools import truncate
from aha.sandbox import Limits, resolve_isolation, run

MAX_EXPRESSION_CHARS = 500
MAX_BITS = 4096  # numerator or denominator of any value on the way (≈ 1233 decimal digits)
MAX_LITERAL_EXPONENT = 400  # 1e400 is fine, 1e999999999 is refused before it is built
_LITERAL = re.compile(r"^(\d*\.?\d*)(?:[eE]([+-]?\d+))?$")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.BitXor: "^"}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Numbers (integers or decimals) joined by +, -, *, / and ** (or ^), with parentheses, e.g. "(12.5 - 3) * 4 / 7".

    Returns:
        The exact value: an integer, a decimal, or a fraction with its decimal value.
    """
    return format_number(evaluate(expression))


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; ValueError (one line) for anything else.

    Only number literals, ``+ - * / **`` (``^`` and ``×``, ``÷`` are read as ``**``, ``*``, ``/``), unary ``+``/``-``
    and parentheses are accepted: names, calls, attributes and strings are refused before anything runs. Values are
    fractions, so ``0.1 + 0.2`` is exactly ``0.3``; each stays under :data:`MAX_BITS` bits.

    >>> evaluate("0.1 + 0.2") == Fraction(3, 10)
    True
    >>> evaluate("__import__('os')")
    Traceback (most recent call last):
    ...
    ValueError: only numbers, + - * / ** and parentheses are allowed (found a call)
    """
    if not isinstance(expression, str):
        raise ValueError(f"the expression must be text, got {type(expression).__name__}")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise ValueError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"not an arithmetic expression: {expression[:60]!r}") from None
    try:
        return _value(tree.body, text)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except RecursionError:
        raise ValueError("the expression is nested too deeply") from None


def _value(node: ast.AST, text: str) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _literal(ast.get_source_segment(text, node) or repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _value(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left, text), _value(node.right, text)
        if isinstance(node.op, (ast.Pow, ast.BitXor)):
            return _checked(_power(left, right))
        if isinstance(node.op, ast.Add):
            return _checked(left + right)
        if isinstance(node.op, ast.Sub):
            return _checked(left - right)
        if isinstance(node.op, ast.Mult):
            return _checked(left * right)
        return _checked(left / right)
    raise ValueError(f"only numbers, + - * / ** and parentheses are allowed (found {_what(node)})")


def _literal(source: str) -> Fraction:
    digits = source.replace("_", "")
    match = _LITERAL.match(digits)
    if not match or not match.group(1).strip("."):
        raise ValueError(f"not a number: {source!r}")
    if match.group(2) and abs(int(match.group(2))) > MAX_LITERAL_EXPONENT:
        raise ValueError(f"{source} is too large (exponents up to {MAX_LITERAL_EXPONENT})")
    return _checked(Fraction(digits))


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ValueError("only whole-number exponents are exact (a root is not)")
    power = exponent.numerator
    if base in (0, 1) or power in (0, 1):
        return base**power
    if base == -1:
        return Fraction(-1 if power % 2 else 1)
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if (bits - 1) * abs(power) > MAX_BITS:  # (a lower bound of the result's size: refused before it is built)
        raise ValueError(f"the result is too large (more than {MAX_BITS} bits)")
    return base**power


def _checked(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise ValueError(f"a value is too large (more than {MAX_BITS} bits)")
    return value


def _what(node: ast.AST) -> str:
    kinds = {
        ast.Call: "a call",
        ast.Name: "a name",
        ast.Attribute: "an attribute",
        ast.Subscript: "a subscript",
        ast.Compare: "a comparison",
        ast.Tuple: "a tuple (no commas in numbers)",
    }
    for kind, label in kinds.items():
        if isinstance(node, kind):
            return label
    if isinstance(node, ast.Constant):
        return f"a {type(node.value).__name__} constant"
    if isinstance(node, ast.BinOp):
        return "an operator other than + - * / **"
    return f"a {type(node).__name__}"


def format_number(value: Fraction) -> str:
    """An exact value as text: an integer, a terminating decimal (exact), or ``p/q ≈ d`` (12 significant digits).

    >>> format_number(Fraction(7, 4)), format_number(Fraction(-6, 3)), format_number(Fraction(2, 3))
    ('1.75', '-2', '2/3 ≈ 0.666666666667')
    """
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den == 1:  # a terminating decimal: exact
        places = max(twos, fives)
        scaled = abs(value.numerator) * 10**places // value.denominator
        whole, frac = divmod(scaled, 10**places)
        return f"{'-' if value < 0 else ''}{whole}.{str(frac).rjust(places, '0').rstrip('0')}"
    with localcontext() as ctx:
        ctx.prec = 12
        approx = Decimal(value.numerator) / Decimal(value.denominator)
    return f"{value.numerator}/{value.denominator} ≈ {approx}"


PYTHON_LIMITS = Limits(timeout_s=10.0, cpu_s=5.0, memory_mb=512, max_output_bytes=1 << 16)


def python_tool(limits: Limits | None = None, isolation: str = "auto", max_chars: int = 2000) -> Callable[[str], str]:
    """The ``python`` tool: runs the model's program in aha's sandbox (:func:`aha.sandbox.run`) and answers with its
    stdout, then its stderr, each cut to ``max_chars``, and how it ended when not cleanly. Checks at once that a
    sandbox works here (:class:`~aha.sandbox.SandboxError`, one line, where none does)."""
    mode = resolve_isolation(isolation)
    limits = limits or PYTHON_LIMITS

    def python(code: str) -> str:
        """Run a Python program in a sandbox (no network, no files kept) and return what it printed.

        Args:
            code: The program's source; print what you want to see.

        Returns:
            The program's output (stdout, then stderr), and how it ended if it failed.
        """
        result = run(code, limits, mode)
        if result.status == "error":
            raise RuntimeError(f"the sandbox could not run the program: {result.detail}")
        parts = [truncate(result.stdout, max_chars)]
        if result.stderr.strip():
            parts.append("[stderr]\n" + truncate(result.stderr, max_chars))
        if result.status != "ok":
            parts.append(f"[{result.status}: {result.detail}]" if result.detail else f"[{result.status}]")
        text = "\n".join(p for p in parts if p)
        return text if text.strip() else "(no output)"

    return python


# name → a function that makes the tool (the python tool checks for a sandbox when it is made)
BUILTIN_TOOLS: dict[str, Callable[[], Callable[..., str]]] = {
    "calculator": lambda: calculator,
    "python": python_tool,
}
