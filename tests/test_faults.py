"""Runs that lose nothing (issue 29): a disk that fills up while a checkpoint is written, a checkpoint damaged after it
was written, a hub dataset or model asked for without a network, a data file that starts with a byte-order mark, and a
guard whose signal will never be logged. Each is met with one line naming the file or field and the fix, and a
resumed run continues from the last intact checkpoint with exactly the metrics and weights of a run that never
failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DIGITS_REWARD, TINY, Aha, aha, assert_same_run, merge, one_line_error, read_jsonl
from safetensors.torch import load_file

from aha.checkpoint import MANIFEST, checkpoint_problem, list_checkpoints
from aha.config import load_config
from aha.data.load import DataError, load_rows
from aha.errors import ModelLoadError, TrainingError
from aha.rl import train_rl

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096  # a tmpfs counts whole pages


def pages(folder: Path, skip: str | None = None) -> int:
    """The bytes the files under ``folder`` take on a tmpfs (whole pages), leaving out the subfolder ``skip``."""
    return sum(
        -(-f.stat().st_size // PAGE) * PAGE
        for f in folder.rglob("*")
        if f.is_file() and not (skip and skip in f.relative_to(folder).parts)
    )


def mount_tmpfs(where: Path, size: int, remount: bool = False) -> None:
    options = ("remount," if remount else "") + f"size={size}"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")


@pytest.fixture
def small_disk(tmp_path):
    """A folder to mount a tmpfs of a chosen size on (``mount_tmpfs``); unmounted afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, and mounting one needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def rl_config(tmp_path) -> Path:
    """A tiny GRPO run of 6 steps with a checkpoint every 2 (β > 0, so that a resume must restore the reference)."""
    (tmp_path / "digits.py").write_text(DIGITS_REWARD)
    path = tmp_path / "rl.yaml"
    path.write_text(
        yaml.safe_dump(
            merge(
                TINY,
                {
                    "rewards": [{"name": f"{tmp_path / 'digits.py'}:digits"}],
                    "rl": {"beta": 0.04},
                    "train": {"steps": 6},
                    "log": {"save_every": 2, "keep_checkpoints": 2},
                },
            ),
            sort_keys=False,
        )
    )
    return path


# ----------------------------------------------------------------------------- a full disk


def test_a_full_disk_stops_the_run_in_one_line_keeps_the_last_checkpoint_and_resume_continues(
    tmp_path, small_disk, rl_config
):
    whole = tmp_path / "whole"
    Aha(rl_config, whole).finish()  # the run as it goes with room: what the resumed run must match
    checkpoint = pages(whole / "checkpoints" / "step-6")
    # room for the run's other files and one checkpoint and a half: step 2's is written, step 4's cannot be
    mount_tmpfs(small_disk, pages(whole, skip="checkpoints") + checkpoint * 3 // 2)
    run = small_disk / "run"

    failed = Aha(rl_config, run)
    assert failed.proc.wait(timeout=300) == 2, failed.output()
    output = failed.output()
    assert "Traceback" not in output
    [line] = [x for x in output.splitlines() if x.strip() and not x.startswith("threads: ")]
    assert line.startswith("error: checkpoint step-4 not written: no space left on device (needs about "), line
    assert (
        f"in {run / 'checkpoints'}; {run / 'checkpoints' / 'step-2'} is intact: free some space, then continue "
        "with --resume" in line
    )
    needed = float(line.split("needs about ")[1].split()[0]) * 1e3  # (kB for this tiny model)
    assert needed == pytest.approx(
        sum(f.stat().st_size for f in (whole / "checkpoints" / "step-6").rglob("*") if f.is_file()), rel=0.05
    )
    assert [p.name for p in list_checkpoints(run)] == ["step-2"]
    assert checkpoint_problem(run / "checkpoints" / "step-2") is None  # every byte as written
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]  # the half-written one is gone

    mount_tmpfs(small_disk, 64 << 20, remount=True)  # space freed
    output = Aha(rl_config, run, "--resume").finish()
    assert f"resumed from {run / 'checkpoints' / 'step-2'} (step 2)" in output
    assert_same_run(run, whole, 6)  # nothing lost: steps 3 and 4 run again, to the same numbers


# ----------------------------------------------------------------------------- a damaged checkpoint


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {  # how, to which file, and the words that say so
    "truncated weights": (truncate, "model/model.safetensors", "model/model.safetensors is truncated"),
    "a flipped bit in the optimizer state": (
        flip_a_bit,
        "trainer_state.pt",
        "trainer_state.pt changed after it was written",
    ),
    "a missing file": (Path.unlink, "model/tokenizer.json", "model/tokenizer.json is missing"),
    "a missing trainer state": (Path.unlink, "trainer_state.pt", "trainer_state.pt is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_newest_intact_one(
    tmp_path, rl_config, damage, capsys
):
    cfg = load_config(rl_config, ["train.steps=4", "log.keep_checkpoints=3"])
    run = tmp_path / "run"
    train_rl(cfg, run)
    ckpts = run / "checkpoints"
    assert json.loads((ckpts / "step-4" / MANIFEST).read_text())["files"].keys() >= {
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "trainer_state.pt",
    }
    rows = read_jsonl(run / "metrics.jsonl")
    weights = {k: v.clone() for k, v in load_file(ckpts / "step-4" / "model" / "model.safetensors").items()}

    how, name, words = DAMAGE[damage]
    how(ckpts / "step-4" / name)
    capsys.readouterr()
    train_rl(cfg, run, resume=True)
    out, err = capsys.readouterr()
    [said] = [line for line in err.splitlines() if "damaged" in line]
    assert said.startswith(f"checkpoint {ckpts / 'step-4'} is damaged ({words}")
    assert said.endswith("set aside as damaged-step-4, resuming from step-2")
    assert f"resumed from {ckpts / 'step-2'} (step 2)" in out
    assert (ckpts / "damaged-step-4" / "model").is_dir()  # kept for a look, no longer a checkpoint
    assert [p.name for p in list_checkpoints(run)] == ["step-2", "step-4"]
    assert checkpoint_problem(ckpts / "step-4") is None

    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    for got, want in zip(read_jsonl(run / "metrics.jsonl"), rows):  # steps 3 and 4 again, to the same numbers
        assert {k: v for k, v in got.items() if not k.startswith(("time/", "throughput/"))} == {
            k: v for k, v in want.items() if not k.startswith(("time/", "throughput/"))
        }
    again = load_file(ckpts / "step-4" / "model" / "model.safetensors")
    assert all((again[k] == weights[k]).all() for k in weights)


def test_with_every_checkpoint_damaged_resume_says_so_in_one_line(tmp_path, rl_config):
    run = tmp_path / "run"
    cfg = load_config(rl_config, ["train.steps=2"])
    train_rl(cfg, run)
    truncate(run / "checkpoints" / "step-2" / "trainer_state.pt")
    line = one_line_error(aha("train", rl_config, "-o", run, "--resume", "--set", "train.steps=2"))
    assert line.startswith(
        f"error: --resume: no intact checkpoint in {run / 'checkpoints'} (step-2: trainer_state.pt is truncated ("
    )
    assert line.endswith("); start afresh with --overwrite")
    assert (run / "checkpoints" / "step-2").is_dir()  # nothing moved or deleted


def test_a_checkpoint_without_a_manifest_from_an_older_aha_still_resumes(tmp_path, rl_config, capsys):
    cfg = load_config(rl_config, ["train.steps=4"])
    run = tmp_path / "run"
    train_rl(cfg, run)
    rows = read_jsonl(run / "metrics.jsonl")
    for ckpt in list_checkpoints(run):
        (ckpt / MANIFEST).unlink()
    (run / "checkpoints" / "step-4" / "trainer_state.pt").unlink()  # an older aha's unfinished one: not a checkpoint
    capsys.readouterr()
    train_rl(cfg, run, resume=True)
    out, err = capsys.readouterr()
    assert f"resumed from {run / 'checkpoints' / 'step-2'} (step 2)" in out and "damaged" not in err
    assert read_jsonl(run / "metrics.jsonl")[-1]["reward/mean"] == rows[-1]["reward/mean"]


# ----------------------------------------------------------------------------- the hub without a network


def test_a_hub_dataset_without_a_network_fails_at_once_in_one_line():
    load_rows([{"prompt": "warm"}])  # (the imports are not what is timed: transformers' takes seconds on a busy CPU)
    import datasets  # noqa: F401

    import aha.models  # noqa: F401

    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_rows("hf:aha-tests/no-such-dataset")
    assert time.monotonic() - start <= 2.0
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("hf:aha-tests/no-such-dataset: the Hugging Face hub cannot be reached")
    assert "save it with save_to_disk or as .jsonl/.parquet" in message


def test_a_hub_model_without_a_network_fails_at_once_unless_the_local_cache_has_it(tmp_path):
    import huggingface_hub  # noqa: F401  (the imports are not what is timed)
    import transformers  # noqa: F401

    from aha.config import ModelConfig
    from aha.models import build_tiny, load_policy

    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_policy(ModelConfig(name="hf:aha-tests/no-such-model"))
    assert time.monotonic() - start <= 2.0
    assert "\n" not in str(err.value) and "cannot be reached" in str(err.value) and "local directory" in str(err.value)

    # a model the local cache holds (as the hub client leaves it) loads without a network: in a process of its own,
    # as the hub libraries read HF_HOME when imported
    model, tok = build_tiny("tiny:layers=1,hidden=16,heads=2,ff=32", "0123456789+=")
    repo = tmp_path / "hf" / "hub" / "models--aha-tests--cached"
    revision = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(repo / "snapshots" / revision)
    tok.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = (
        "import json, time; from aha.config import ModelConfig; from aha.models import load_policy; "
        "t = time.monotonic(); m, tok = load_policy(ModelConfig(name='hf:aha-tests/cached')); "
        "print(json.dumps([m.config.hidden_size, tok('12+3=').input_ids, time.monotonic() - t]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    hidden, ids, seconds = json.loads(done.stdout.splitlines()[-1])
    assert hidden == 16 and ids == tok("12+3=").input_ids and seconds <= 5


# ----------------------------------------------------------------------------- a byte-order mark


@pytest.mark.parametrize(
    "suffix,text",
    [
        ("jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n'),
        ("json", '[{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]'),
        ("csv", "prompt,answer\n1+1=,2\n2+2=,4\n"),
    ],
)
def test_a_file_that_starts_with_a_utf8_byte_order_mark_is_read(tmp_path, suffix, text):
    path = tmp_path / f"bom.{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    rows = load_rows(path, ("prompt", "answer"))
    assert [(r["prompt"], str(r["answer"])) for r in rows] == [("1+1=", "2"), ("2+2=", "4")]
    assert list(rows[0]) == ["prompt", "answer"]  # no mark stuck to the first column's name


# ----------------------------------------------------------------------------- the guard's signal


@pytest.fixture(scope="module")
def one_head_rm(tmp_path_factory) -> Path:
    """A tiny reward model with one head and its saved support (the model directory)."""
    from aha.rm import train_reward_model

    root = tmp_path_factory.mktemp("rm")
    data = root / "prefs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(a)}) + "\n" for a in range(20))
    )
    cfg = load_config(
        None,
        [],
        stage="reward_model",
        model={"name": "tiny:layers=1,hidden=16,heads=2,ff=32"},
        reward_model={"path": str(data)},
        train={"steps": 2, "batch_size": 8, "device": "cpu", "precision": "fp32"},
        log={"tensorboard": False, "report": False, "progress": False, "eval_every": 0, "save_every": 0},
    )
    train_reward_model(cfg, root / "run")
    return root / "run" / "model"


@pytest.mark.parametrize(
    "signal,fix", [("ensemble_std", "reward_model.num_heads > 1"), ("support_distance", "reward_model.support: true")]
)
def test_a_guard_signal_that_will_not_be_logged_stops_the_run_before_its_first_step(
    tmp_path, write_config, one_head_rm, signal, fix
):
    from aha.rewards.support import SUPPORT_FILE

    rm = one_head_rm
    if signal == "support_distance":  # a reward model trained without its support
        rm = tmp_path / "rm"
        subprocess.run(["cp", "-r", str(one_head_rm), str(rm)], check=True)
        (rm / SUPPORT_FILE).unlink()
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": f"rm:{rm}"}],
                "train": {"steps": 2},
                "guard": {"enabled": True, "disagreement": f"rm:{rm}", "signal": signal},
            }
        )
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train_rl(cfg, run)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"guard.disagreement 'rm:{rm}' will log no {signal} (guard.signal): ")
    assert fix in message
    assert not (run / "metrics.jsonl").exists()  # before step 0's eval, let alone step 1


def test_a_guard_signal_the_reward_model_logs_passes_the_build_time_check(write_config, one_head_rm):
    from aha.guard import check_guard_config

    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": f"rm:{one_head_rm}"}],
                "guard": {"enabled": True, "disagreement": f"rm:{one_head_rm}", "signal": "support_distance"},
            }
        )
    )
    assert check_guard_config(cfg) is None
