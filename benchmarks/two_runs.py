"""Two aha runs at once on a small machine: each run's wall time alone, then two started together, and the ratio.

    flock /tmp/aha-train.lock python benchmarks/two_runs.py                 # torch's defaults (old), then aha's policy
    flock /tmp/aha-train.lock python benchmarks/two_runs.py --variants all  # also the single knobs, one at a time
    python benchmarks/two_runs.py --steps 100 --variants new                # quicker

The run is the demo's SFT stage, shortened (``aha train`` on the tiny model, 128 sequences per step, fp32): the same
command for every variant, each variant differing only in the environment it starts with. ``old`` sets
``AHA_THREADS=off`` (aha leaves torch's thread count and OpenMP's wait policy alone: torch's defaults, what aha did
before); ``new`` sets nothing (aha's thread policy, :mod:`aha.threads`). A pair whose runs pass ``--cap`` × the solo
time is stopped there and shown as "> cap" (the old behaviour can take ×20). Other processes on the machine (a busy
CI box, other people's tests) add noise: run it under the training lock, and look at the solo times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name → environment on top of the caller's (OMP_NUM_THREADS, AHA_THREADS, … cleared first)
    "old": {"AHA_THREADS": "off"},
    "OMP_WAIT_POLICY=PASSIVE": {"AHA_THREADS": "off", "OMP_WAIT_POLICY": "PASSIVE"},
    "KMP_BLOCKTIME=0": {"AHA_THREADS": "off", "KMP_BLOCKTIME": "0"},
    "GOMP_SPINCOUNT=10000": {"AHA_THREADS": "off", "GOMP_SPINCOUNT": "10000"},
    "OMP_NUM_THREADS=1": {"AHA_THREADS": "off", "OMP_NUM_THREADS": "1"},
    "new": {},
}
CLEARED = ("AHA_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def write_inputs(folder: Path, steps: int) -> Path:
    """The demo's teacher traces and its SFT config with ``steps`` steps; returns the config's path."""
    import random

    import yaml

    from aha.demos.alphago import demo_config, teacher_answer
    from aha.tasks import build_task

    sft, _ = demo_config(folder, seed=0)
    rng = random.Random(0)
    rows = [
        {"prompt": r["prompt"], "completion": teacher_answer(r["a"], r["b"], rng)} for r in build_task(sft.task).train
    ]
    (folder / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = sft.model_dump(mode="json")
    cfg["train"]["steps"] = steps
    cfg["log"].update(save_every=0, eval_every=0)
    path = folder / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, out: Path, env: dict) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from aha.cli import app; sys.exit(app())",
        "train",
        str(config),
        "--out",
        str(out),
        "--overwrite",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def thread_counts(output: str) -> str:
    """The run's thread counts from its ``threads:`` lines: ``2`` or ``2→1→2`` as other runs came and went;
    ``torch`` where aha left them to torch."""
    counts = [
        ln.split("→")[-1].split()[0] if "→" in ln else ln.split()[1]
        for ln in output.replace("\r", "\n").splitlines()
        if ln.startswith("threads:")
    ]
    return "→".join(counts) or "torch"


def run_together(config: Path, folder: Path, env: dict, n: int, cap_s: float) -> tuple[list[float | None], list[str]]:
    """Start ``n`` runs at once; each one's wall seconds (None: stopped at ``cap_s``) and thread counts."""
    t0 = time.perf_counter()
    procs = [start(config, folder / f"run{i}", env) for i in range(n)]
    times: list[float | None] = [None] * n
    while any(p.poll() is None for p in procs) and time.perf_counter() - t0 < cap_s:
        for i, p in enumerate(procs):
            if times[i] is None and p.poll() is not None:
                times[i] = time.perf_counter() - t0
        time.sleep(0.05)
    notes = []
    for i, p in enumerate(procs):
        if p.poll() is None:
            p.kill()
        elif times[i] is None:
            times[i] = time.perf_counter() - t0
        text = p.communicate()[0]
        if p.returncode not in (0, -9):
            raise SystemExit(f"run {i} failed:\n{text[-2000:]}")
        notes.append(thread_counts(text))
    return times, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="SFT steps per run (300: ~25 s alone on 2 cores)")
    ap.add_argument("--variants", default="old,new", help=f"comma-separated, or 'all': {', '.join(VARIANTS)}")
    ap.add_argument("--solo-runs", type=int, default=2, help="solo runs per variant; the fastest is the solo time")
    ap.add_argument("--cap", type=float, default=8.0, help="stop a pair's runs at this multiple of the solo time")
    args = ap.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(
        f"{os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}; "
        f"SFT on the tiny model, {args.steps} steps per run",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="aha-two-runs-") as tmp:
        folder = Path(tmp)
        config = write_inputs(folder, args.steps)
        print(f"{'variant':<26}{'solo s':>8}{'pair s (each)':>18}{'ratio':>14}   threads (solo | pair)", flush=True)
        for name in names:
            env = {**base, **VARIANTS[name]}
            solos = [run_together(config, folder, env, 1, cap_s=3600) for _ in range(args.solo_runs)]
            solo, note_solo = min(t for (t,), _ in solos), solos[0][1][0]  # the least disturbed by other processes
            pair, notes = run_together(config, folder, env, 2, cap_s=args.cap * solo)
            show = lambda t, solo=solo: f"{t:.1f}" if t is not None else f">{args.cap * solo:.0f}"  # noqa: E731
            ratio = lambda t, solo=solo: f"{t / solo:.2f}" if t is not None else f">{args.cap:.0f}"  # noqa: E731
            print(
                f"{name:<26}{solo:>8.1f}{' / '.join(map(show, pair)):>18}{' / '.join(map(ratio, pair)):>14}   "
                f"{note_solo} | {' ; '.join(notes)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
