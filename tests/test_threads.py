"""The thread policy: usable cores (affinity, cgroup quota, OMP_NUM_THREADS) shared between the aha runs alive on the
machine (a pid-checked registry), AHA_THREADS / train.threads overriding it, rechecked as runs come and go."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aha import threads
from aha.threads import (
    ThreadsError,
    _start_time,
    cgroup_cpu_limit,
    choose_threads,
    env_setting,
    other_runs,
    usable_cores,
)


@pytest.mark.parametrize(
    "cores, others, expected", [(2, 0, 2), (2, 1, 1), (2, 3, 1), (8, 1, 4), (8, 2, 2), (1, 0, 1), (16, 3, 4)]
)
def test_choose_threads_shares_the_cores_evenly(cores, others, expected):
    assert choose_threads(cores, others) == expected


def test_cgroup_quota_v2_and_v1(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0


def test_usable_cores_takes_the_tightest_limit(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == (8, "8 cores")
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)  # a quota of 2.5 cores: 3 threads
    assert usable_cores() == (3, "2.5-core cgroup quota")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert usable_cores() == (2, "OMP_NUM_THREADS=2")
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # a cap above the cores changes nothing
    assert usable_cores()[0] == 3


def test_registry_counts_live_runs_only(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (tmp_path / str(child.pid)).write_text(_start_time(child.pid))  # another run, alive
        (tmp_path / dead.stdout.strip()).write_text("")  # a run that was killed without cleaning up
        (tmp_path / str(os.getpid())).write_text(_start_time(os.getpid()))  # this run: not an "other"
        (tmp_path / "notes.txt").write_text("not a pid")
        assert other_runs(tmp_path) == 1
        assert not (tmp_path / dead.stdout.strip()).exists()  # the dead run's entry is gone
        (tmp_path / str(child.pid)).write_text("1")  # the pid now belongs to a process that started at another time
        assert other_runs(tmp_path) == 0
    finally:
        child.kill()
        child.wait()


def test_env_setting(monkeypatch):
    for raw, expected in (("", "auto"), ("auto", "auto"), ("3", 3), (" OFF ", "off")):
        monkeypatch.setenv("AHA_THREADS", raw)
        assert env_setting() == expected
    monkeypatch.setenv("AHA_THREADS", "two")
    with pytest.raises(ThreadsError, match="AHA_THREADS='two'"):
        env_setting()


@pytest.fixture
def policy(monkeypatch, tmp_path):
    """A fresh policy in this process, registering in ``tmp_path``; torch's thread count restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_policy", None)
    monkeypatch.setattr(threads, "registry_dir", lambda: tmp_path)
    monkeypatch.setattr(threads, "RECHECK_S", 0.0)
    monkeypatch.delenv("AHA_THREADS", raising=False)
    yield tmp_path
    torch.set_num_threads(before)


def test_a_run_gives_up_threads_when_another_starts_and_takes_them_back(policy, monkeypatch, capsys):
    monkeypatch.setattr(threads, "usable_cores", lambda: (2, "2 cores"))
    threads.use_threads(0)
    assert torch.get_num_threads() == 2
    assert "threads: 2 (2 cores, no other aha run" in capsys.readouterr().err
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (policy / str(child.pid)).write_text(_start_time(child.pid))
        threads.refresh()
        assert torch.get_num_threads() == 1
    finally:
        child.kill()
        child.wait()
    threads.refresh()
    assert torch.get_num_threads() == 2


def test_aha_threads_and_train_threads_fix_the_count(policy, monkeypatch, capsys):
    monkeypatch.setenv("AHA_THREADS", "1")
    threads.use_threads(2)  # the environment wins over train.threads
    assert torch.get_num_threads() == 1 and "AHA_THREADS=1" in capsys.readouterr().err
    monkeypatch.setattr(threads, "_policy", None)
    monkeypatch.delenv("AHA_THREADS")
    threads.use_threads(1)
    assert torch.get_num_threads() == 1 and "train.threads=1" in capsys.readouterr().err
    (policy / "1").write_text("")  # pid 1 is alive: a fixed count does not follow other runs
    threads.refresh()
    assert torch.get_num_threads() == 1


def test_off_leaves_torch_alone(policy, monkeypatch, capsys):
    monkeypatch.setenv("AHA_THREADS", "off")
    torch.set_num_threads(2)
    threads.use_threads(1)
    assert torch.get_num_threads() == 2 and capsys.readouterr().err == ""
    assert not list(policy.iterdir())  # not registered either


@pytest.mark.parametrize(
    "busy, others, user, expected",
    [
        (0.0, 0, None, None),  # an idle machine: spinning is fastest, torch's default stays
        (1.2, 0, None, "PASSIVE"),  # other work keeps a core busy
        (0.0, 1, None, "PASSIVE"),  # another aha run
        (1.2, 1, "ACTIVE", "ACTIVE"),  # the user's own policy wins
    ],
)
def test_idle_threads_sleep_only_on_a_busy_machine(monkeypatch, busy, others, user, expected):
    monkeypatch.delitem(sys.modules, "torch")  # (OpenMP reads the policy as torch loads: decided only before that)
    monkeypatch.delenv("AHA_THREADS", raising=False)
    if user is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", user)
    monkeypatch.setattr(threads, "busy_cores", lambda: busy)
    monkeypatch.setattr(threads, "other_runs", lambda: others)
    threads.set_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_busy_cores_reads_the_machine():
    from pathlib import Path

    busy = threads.busy_cores(0.05)
    if Path("/proc/stat").is_file():  # Linux: it is read, not given up on
        assert busy is not None
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1)


class _Stat:
    """A /proc/stat that reads ``texts`` one after the other (busy_cores reads it before and after its sleep)."""

    def __init__(self, *texts: str):
        self.texts = iter(texts)

    def read_text(self) -> str:
        return next(self.texts)


def test_busy_cores_is_the_busy_share_of_the_ticks_times_the_cores():
    from pathlib import Path

    cores = os.cpu_count() or 1
    # user nice system idle iowait irq softirq steal: 200 ticks passed, 100 of them idle or iowait
    before, after = "cpu 100 0 100 700 100 0 0 0 0 0\n", "cpu 150 0 130 780 120 0 0 20 0 0\n"
    assert threads.busy_cores(0, _Stat(before, after)) == pytest.approx(cores * 0.5)
    all_idle = "cpu 100 0 100 900 100 0 0 0 0 0\n"
    assert threads.busy_cores(0, _Stat(before, all_idle)) == 0.0
    assert threads.busy_cores(0, _Stat(before, before)) is None  # no tick passed: nothing to say
    assert threads.busy_cores(0, _Stat("cpu x y\n", after)) is None  # unreadable
    assert threads.busy_cores(0, Path("/nonexistent/proc/stat")) is None
