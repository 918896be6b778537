"""Behaviour unchanged? A fingerprint of what training computes, to compare before and after a refactor.

Nine small runs (a 1-layer tiny Llama on 1-digit sums, 20 steps each, fp32, one thread: the same bits on every
run of the same code on the same CPU) cover the loop's paths: GRPO with μ=2 and β=0.04; DAPO with dynamic sampling,
minibatches and micro-batches; GSPO with an entropy bonus; PPO with a separate critic and with a value head; RLOO;
REINFORCE++ with a baseline; GRPO after SFT warm-up steps; GRPO with μ=2 sampled by 2 Ray rollout workers (a local
Ray instance: ``ray`` installed). Each run's every logged number (timings and memory left
out) and a SHA-256 of its final weights go into one JSON file; ``--demos`` adds ``aha demo --seed 0`` and
``aha demo rlhf --seed 0``'s ``summary.json`` (wall times left out).

    python benchmarks/behaviour.py run --out /tmp/before.json            # on the old code (e.g. a git worktree)
    python benchmarks/behaviour.py run --out /tmp/after.json             # on the new code
    python benchmarks/behaviour.py compare /tmp/before.json /tmp/after.json

``compare`` prints every number that differs (bit for bit) and exits 1 if any does. Run it with nothing else
training on the machine only if you also want the timings; the fingerprint itself does not depend on load.
To fingerprint another checkout, run this file with that checkout's ``src`` first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DIGITS = (
    "def digits(prompts, completions, **kw):\n    return [sum(ch.isdigit() for ch in c) / 3 for c in completions]\n"
)
BASE = {
    "model": {"name": "tiny:layers=1,hidden=32,heads=2,ff=64"},
    "task": {"name": "arithmetic", "digits": 1, "num_train": 200, "num_eval": 20},
    "rollout": {"group_size": 4, "max_new_tokens": 3},
    "rl": {"prompts_per_step": 4},
    "train": {"steps": 20, "lr": 1e-3, "precision": "fp32", "device": "cpu", "seed": 0, "threads": 1},
    "log": {"tensorboard": False, "report": False, "progress": False, "eval_every": 10, "save_every": 10},
}
CONFIGS = {
    "grpo_mu2_beta": {"rl": {"mu": 2, "beta": 0.04}},
    "dapo_dynamic_minibatch_micro": {
        "rl": {"loss_type": "dapo", "dynamic_sampling": True, "num_minibatches": 2, "epsilon_high": 0.28, "mu": 2},
        "train": {"micro_batch_size": 4},
    },
    "gspo_entropy": {"rl": {"importance_sampling_level": "sequence", "entropy_coef": 0.01}},
    "ppo_separate_critic": {"rl": {"algo": "ppo"}, "critic": {"kind": "separate"}},
    "ppo_value_head": {"rl": {"algo": "ppo"}, "critic": {"kind": "head"}},
    "rloo": {"rl": {"algo": "rloo"}},
    "reinforce_pp_baseline": {"rl": {"algo": "reinforce++_baseline"}},
    "sft_warmup": {
        "sft": {"imitation_steps": 5, "imitation_lr": 1e-2},
        "rl": {"beta": 0.04},
        "train": {"batch_size": 16},
    },
    "grpo_ray_2workers": {"rl": {"mu": 2}, "distributed": {"backend": "ray", "rollout_workers": 2, "timeout_s": 120}},
}
UNTIMED = ("time/", "throughput/", "memory/", "perf/")


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def numbers(row: dict) -> dict:
    """A metrics row without its timings; floats as their exact repr."""
    return {k: repr(v) for k, v in sorted(row.items()) if not k.startswith(UNTIMED) and not k.endswith("_s")}


def weights_digest(model_dir: Path) -> str:
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        for name, tensor in sorted(load_file(path).items()):
            digest.update(name.encode())
            digest.update(tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def one_run(name: str, work: Path) -> dict:
    """Train config ``name`` in this process (called in a fresh subprocess per config)."""
    import yaml

    import aha

    reward = work / "digits_reward.py"
    reward.write_text(DIGITS)
    cfg = merge(merge(BASE, CONFIGS[name]), {"rewards": [{"name": f"{reward}:digits"}]})
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = aha.train(str(path), out=work / name, overwrite=True)
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"metrics": [numbers(r) for r in rows], "weights": weights_digest(Path(summary["model"]))}


def demo(args: list[str], work: Path) -> dict:
    out = work / "-".join(["demo", *args])
    subprocess.run(
        [str(Path(sys.executable).with_name("aha")), "demo", *args, "--seed", "0", "--out", str(out)],
        check=True,
        env=_env(),
        stdout=subprocess.DEVNULL,
    )
    summary = json.loads((out / "summary.json").read_text())
    return _strip(summary)


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in sorted(value.items()) if "wall" not in k and not k.endswith(("_s", "seconds"))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return repr(value) if isinstance(value, float) else value


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(out: Path, demos: bool) -> None:
    result: dict = {"python": sys.version.split()[0], "cpu": _cpu(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="aha-behaviour-") as tmp:
        for name in CONFIGS:
            done = subprocess.run(
                [sys.executable, __file__, "one", name, tmp], env=_env(), capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            result["runs"][name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{name}: {len(result['runs'][name]['metrics'])} rows, weights {result['runs'][name]['weights'][:16]}"
            )
        if demos:
            result["demo"] = demo([], Path(tmp))
            print("aha demo --seed 0: done")
            result["demo_rlhf"] = demo(["rlhf"], Path(tmp))
            print("aha demo rlhf --seed 0: done")
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out}")


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    if a["cpu"] != b["cpu"]:
        print(f"note: different CPUs ({a['cpu']} / {b['cpu']}): bits may differ for that reason alone")
    differences = list(_diff(a.get("runs", {}), b.get("runs", {}), "runs"))
    for key in ("demo", "demo_rlhf"):
        if key in a and key in b:
            differences += list(_diff(a[key], b[key], key))
    for line in differences[:50]:
        print(line)
    checked = sum(len(r["metrics"]) for r in b.get("runs", {}).values())
    print(
        f"{len(differences)} differences; {len(b.get('runs', {}))} runs ({checked} metric rows) and "
        f"{sum(k in b for k in ('demo', 'demo_rlhf'))} demo summaries compared bit for bit"
    )
    return 1 if differences else 0


def _diff(a, b, where: str):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'after' if key in b else 'before'}"
            else:
                yield from _diff(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _diff(x, y, f"{where}[{i}]")
    elif a != b:
        yield f"{where}: {a!r} -> {b!r}"


def _cpu() -> str:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    return "avx512_bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "avx2"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":  # internal: one config in this process, its JSON on stdout
        import torch

        torch.set_num_threads(1)
        print(json.dumps(one_run(sys.argv[2], Path(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--demos", action="store_true", help="also aha demo and aha demo rlhf, seed 0 (minutes)")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.out, args.demos)
    else:
        raise SystemExit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
