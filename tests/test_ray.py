"""Scale-out on Ray, tested where Ray can reach nothing but this machine: each case of tests/ray_cases.py runs in a
fresh user + network namespace whose only interface is the loopback (``unshare -rn``), so the Ray instance it starts
listens on 127.0.0.1 alone. And the single-process path imports nothing from Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


def run_in_loopback_namespace(case: str) -> None:
    inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider tests/ray_cases.py::{case}"
    out = subprocess.run(["unshare", "-rn", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "1 passed" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize(
    "case",
    [
        "test_workers_sample_what_the_trainer_would_and_follow_each_sync",
        "test_a_rollout_worker_that_dies_mid_run_is_restarted_and_the_run_completes",
        "test_two_trainer_ranks_update_as_one_process_and_resume_alike",
        "test_rewards_in_the_workers_are_the_trainers_even_when_a_worker_dies_rewarding",
        "test_a_reward_that_fails_in_a_worker_is_the_trainers_one_line",
    ],
)
def test_ray_rollout_workers(case):
    run_in_loopback_namespace(case)


def test_the_single_process_path_imports_nothing_from_ray(tmp_path, write_config):
    cfg = write_config()
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom aha.cli import app\n"
        f"r = CliRunner().invoke(app, ['train', {str(cfg)!r}, '-o', {str(tmp_path / 'run')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
