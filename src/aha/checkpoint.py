"""Checkpoints: ``RUN_DIR/checkpoints/step-N/`` holds an HF-format model + tokenizer (``model/``),
``trainer_state.pt`` (optimizer, scheduler, RNG states, data position, step) and, written last, ``manifest.json``
(every file's size and sha256). Written into a temporary directory, flushed to disk (fsync) and renamed, so a process
killed at any point (or a power cut) leaves either the whole checkpoint or none: a ``.tmp-step-N-PID`` directory is
never taken for one, and a resumed run removes it.

A full disk while writing one is a :class:`CheckpointSpaceError` naming the folder and the space needed; the
half-written one is removed and the checkpoints before it are untouched. A checkpoint damaged after it was written
(a truncated or altered file, a missing one) fails :func:`checkpoint_problem`, and a resumed run takes the newest
intact one (:func:`newest_intact`). A checkpoint without a manifest (written by an older aha) is taken as it is.

Test hook: ``AHA_TEST_SLOW_CHECKPOINT=SECONDS`` sleeps that long between writing a checkpoint's weights and its
trainer state, a stand-in for a slow filesystem that gives a test time to kill the process mid-write."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

from aha.errors import AhaError
from aha.models import save_model


class CheckpointError(AhaError, RuntimeError):
    """A checkpoint does not fit this run (other model shape, no critic where PPO needs one)."""


class CheckpointSpaceError(CheckpointError):
    """No room on the disk for a checkpoint (the message names the folder and the space needed)."""


_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"  # {"format": 1, "files": {"model/model.safetensors": {"size": ..., "sha256": ...}, ...}}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # disk full, quota exceeded, over the file-size limit


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
    adapter = _adapter_state(model)
    if adapter is not None:
        trainer_state = {**trainer_state, "adapter": adapter}
    state = {**trainer_state, "step": step, "rng": rng_state()}
    try:
        save_model(model, tokenizer, tmp / "model")
        if slow := os.environ.get("AHA_TEST_SLOW_CHECKPOINT"):  # the test hook (see the module's docstring)
            time.sleep(float(slow))
        torch.save(state, tmp / "trainer_state.pt")
        write_manifest(tmp)  # last: a checkpoint with a manifest was written whole
        _fsync_tree(tmp)  # the files are on disk before the name says the checkpoint is complete
    except Exception as e:  # safetensors, torch.save and json each say "disk full" their own way
        space = _space_problem(e, root, tmp, _bytes_needed(model, state, root))
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint only takes room
        if space is None:
            raise
        raise CheckpointSpaceError(
            f"checkpoint step-{step} not written: {space} in {root}; "
            f"{_intact_note(run_dir)}: free some space, then continue with --resume"
        ) from None
    if final.exists():  # only debris: a run resumes from its newest complete checkpoint and saves later steps
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)  # the rename itself
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _bytes_needed(model, state: dict, root: Path) -> int:
    """About how many bytes a checkpoint takes: its tensors' (the weights once, tied ones counted once), or the
    newest complete checkpoint's size where that is more (it has the tokenizer files too)."""
    seen, total = set(), 0

    def add(obj) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.numel())
            if key not in seen:
                seen.add(key)
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                add(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                add(v)

    add(dict(model.state_dict()))
    add(state)
    done = list_checkpoints(root.parent)
    before = sum(f.stat().st_size for f in done[-1].rglob("*") if f.is_file()) if done else 0
    return max(total, before)


def _space_problem(e: Exception, root: Path, tmp: Path, needed: int) -> str | None:
    """What of the disk stopped a checkpoint's write (``no space left on device (needs about 6.2 MB, 1.1 MB
    free)``), or None where ``e`` is no lack of room: an OSError with a no-space errno, or any error after which
    the free space cannot hold the rest of the checkpoint (torch.save says only "unexpected pos")."""
    err = next((x for x in _chain(e) if isinstance(x, OSError) and x.errno in _NO_SPACE), None)
    written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else 0
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    if err is None and not (free is not None and free < needed - written):
        return None
    reason = os.strerror(cast(int, err.errno)).lower() if err is not None else "no space left on device"
    have = f", {_size(free + written)} free" if free is not None else ""
    return f"{reason} (needs about {_size(needed)}{have})"


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _size(n: int) -> str:
    """A byte count for a message.

    >>> _size(6_500_000), _size(2_048)
    ('6.5 MB', '2.0 kB')
    """
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _intact_note(run_dir: Path) -> str:
    done = list_checkpoints(run_dir)
    return f"{done[-1]} is intact" if done else "no checkpoint was written yet"


def write_manifest(folder: Path) -> None:
    """``folder/manifest.json``: the size and sha256 of every file under ``folder`` (written after them all)."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint on disk, as the end of a sentence (``model/model.safetensors is truncated
    (41000 of 44248 bytes)``), or None when it is intact: every file in its manifest present, of its size and sha256
    (sizes first: they cost nothing). Without a manifest (an older aha's checkpoint) only its two essential files
    are looked for."""
    ckpt = Path(ckpt)
    if not (ckpt / MANIFEST).is_file():
        needed = ("trainer_state.pt", "model/config.json")
        return next((f"{name} is missing" for name in needed if not (ckpt / name).is_file()), None)
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
        files = {name: (int(want["size"]), str(want["sha256"])) for name, want in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST} cannot be read"
    for name, (size, _) in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if (got := path.stat().st_size) != size:
            return f"{name} is {'truncated' if got < size else 'longer than written'} ({got} of {size} bytes)"
    for name, (_, digest) in files.items():
        if _sha256(ckpt / name) != digest:
            return f"{name} changed after it was written (its sha256 differs from the manifest's)"
    return None


def newest_intact(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes :func:`checkpoint_problem` (None: none does), and the newer, damaged ones
    with what is wrong with each, newest first."""
    damaged: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        if (problem := checkpoint_problem(ckpt)) is None:
            return ckpt, damaged
        damaged.append((ckpt, problem))
    return None, damaged


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint ``step-N`` to ``damaged-step-N`` (kept for a look; no longer listed, resumed
    from or pruned); returns the new path."""
    target, n = ckpt.with_name(f"damaged-{ckpt.name}"), 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"damaged-{ckpt.name}-{n}")
    os.replace(ckpt, target)
    return target


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


def newest_model(run_dir: Path) -> Path:
    """The newest checkpoint's model directory (``RUN_DIR/checkpoints/step-N/model``); the run must hold one."""
    return list_checkpoints(run_dir)[-1] / "model"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first: those with a manifest (written whole, though maybe damaged since:
    :func:`checkpoint_problem`), and an older aha's with their trainer state and model config (temporary directories
    are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name))
        and (
            (p / MANIFEST).is_file() or ((p / "trainer_state.pt").is_file() and (p / "model" / "config.json").is_file())
        )
    ]
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
        raise CheckpointError(
            f"checkpoint {ckpt}: its weights do not load into this run's model ({_short(e)}): "
            f"a damaged file, or a run with another model.name? {aside}"
        ) from None
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
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
            raise CheckpointError(
                f"checkpoint {ckpt} holds no critic (was it written by a critic-free run? set rl.algo to match)"
            )
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
