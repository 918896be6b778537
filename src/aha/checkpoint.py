"""Checkpoints: ``RUN_DIR/checkpoints/step-N/`` holds an HF-format model + tokenizer (``model/``) and
``trainer_state.pt`` (optimizer, scheduler, RNG states, data position, step). Written into a temporary
directory, flushed to disk (fsync) and renamed, so a process killed at any point (or a power cut) leaves either the
whole checkpoint or none: a ``.tmp-step-N-PID`` directory is never taken for one, and a resumed run removes it.

Test hook: ``AHA_TEST_SLOW_CHECKPOINT=SECONDS`` sleeps that long between writing a checkpoint's weights and its
trainer state, a stand-in for a slow filesystem that gives a test time to kill the process mid-write."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from aha.errors import AhaError
from aha.models import save_model

class CheckpointError(AhaError, RuntimeError):
    """A checkpoint does not fit this run (other model shape, no critic where PPO needs one)."""


_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp / "model")
    if slow := os.environ.get("AHA_TEST_SLOW_CHECKPOINT"):  # the test hook (see the module's docstring)
        time.sleep(float(slow))
    adapter = _adapter_state(model)
    if adapter is not None:
        trainer_state = {**trainer_state, "adapter": adapter}
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    _fsync_tree(tmp)  # the files are on disk before the name says the checkpoint is complete
    if final.exists():  # only debris: a run resumes from its newest complete checkpoint and saves later steps
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)  # the rename itself
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete the ``.tmp-step-…`` directories a killed process left half-written; returns what it removed."""
    root = Path(run_dir) / "checkpoints"
    partial = sorted(p for p in root.glob(".tmp-step-*") if p.is_dir()) if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a directory on a system that cannot open one (Windows): its entries are written anyway
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then the directories (their entries), deepest first."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / "trainer_state.pt").is_file() and (p / "model" / "config.json").is_file()]
    return [p for _, p in sorted(found)]


def run_contents(run_dir: Path) -> list[str]:
    """What of an earlier run ``run_dir`` holds: its metrics and complete checkpoints (empty: none)."""
    found = ["metrics.jsonl"] if (Path(run_dir) / "metrics.jsonl").is_file() else []
    n = len(list_checkpoints(run_dir))
    return found + ([f"{n} checkpoint{'s' if n > 1 else ''}"] if n else [])


def clear_run(run_dir: Path) -> None:
    """Start afresh in ``run_dir``: remove an earlier run's checkpoints, metrics, samples and TensorBoard logs, so that
    the new run's checkpoints never sit beside (or get pruned in favour of) the old run's."""
    run_dir = Path(run_dir)
    for sub in ("checkpoints", "tb"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    for name in ("metrics.jsonl", "samples.jsonl"):
        (run_dir / name).unlink(missing_ok=True)


def load_trainer_state(ckpt: Path, model) -> dict:
    """Load weights from ``ckpt/model`` into ``model`` (adapters under LoRA) and return the trainer state.
    A file that cannot be read (truncated, emptied) or weights of another shape raise :class:`CheckpointError`."""
    aside = f"(move {ckpt} aside to resume from the checkpoint before it)"
    try:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    except Exception as e:  # EOFError, a zip reader's RuntimeError, an unpickling error…
        raise CheckpointError(f"checkpoint {ckpt}: trainer_state.pt cannot be read ({_short(e)}) {aside}") from None
    try:
        if "adapter" in state:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state["adapter"])
            return state
        from safetensors.torch import load_file

        weights = {}
        for f in sorted((ckpt / "model").glob("model*.safetensors")):
            weights.update(load_file(f))
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except Exception as e:  # a damaged weights file, or tensors of another shape (torch raises on those)
        raise CheckpointError(f"checkpoint {ckpt}: its weights do not load into this run's model ({_short(e)}): "
                              f"a damaged file, or a run with another model.name? {aside}") from None
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return state


def _short(e: Exception) -> str:
    """An exception in one line of at most ~200 characters (torch's size-mismatch messages run to many lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def training_state(optimizer, scheduler, sampler, critic=None) -> dict:
    """What a checkpoint holds besides the policy's weights (RNG states are added by :func:`save_checkpoint`);
    PPO's critic (value head, and its trunk if separate) travels here too."""
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict()}
    if critic is not None:
        state["critic"] = {k: v.detach().cpu().clone() for k, v in critic.state_dict().items()}
    return state


def resume_from(ckpt: Path, model, optimizer, scheduler, sampler, critic=None) -> int:
    """Restore weights, optimizer, schedule, data position, RNG states (and the critic); return the step."""
    state = load_trainer_state(ckpt, model)
    if critic is not None:
        if "critic" not in state:
            raise CheckpointError(f"checkpoint {ckpt} holds no critic (was it written by a critic-free run? set rl.algo to match)")
        critic.load_state_dict(state["critic"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return state["step"]


def _adapter_state(model):
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
    return None
