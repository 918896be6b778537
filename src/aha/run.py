"""The run skeleton every stage shares (RL, SFT, and the reward-model stage): the run directory, resume-or-clear,
the resolved config, the metrics logger, the eval and checkpoint cadence, the progress bar and the report.

A stage reads::

    run = Run(cfg, run_dir, resume, "sft")
    ... build the model, optimizer, sampler ...
    start = run.begin(lambda ckpt: resume_from(ckpt, model, optimizer, scheduler, sampler))
    if run.eval_due(0): run.log(0, evaluate())
    for step in run.steps(start):
        metrics = ...one step (an update with a non-finite loss or gradient norm skipped: aha.optim.finite_step)...
        metrics.update(run.count_skipped(step, problem))  # None, or what was not finite
        if run.eval_due(step): metrics.update(evaluate())
        run.log(step, metrics, shown={"loss": ...})
        run.stop_if_failing(step)  # train.max_skipped_steps skipped in a row
        if run.save_due(step): run.save(step, model, tokenizer, training_state(...))
    return run.finish(metrics)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from tqdm.auto import tqdm

from aha.checkpoint import (
    clear_run,
    list_checkpoints,
    newest_intact,
    remove_partial_checkpoints,
    save_checkpoint,
    set_aside,
)
from aha.config import RunConfig, save_config
from aha.errors import TrainingError
from aha.threads import refresh as refresh_threads
from aha.track.metrics import MetricsLogger


def resume_problem(out: Path) -> str | None:
    """Why ``--resume`` cannot continue the run in ``out`` (it holds no complete checkpoint), or None. Checked before
    any stage starts (:func:`aha.api.train`: SFT would otherwise start afresh and wipe metrics.jsonl) and again here."""
    if list_checkpoints(out):
        return None
    return f"--resume: no complete checkpoint in {out / 'checkpoints'} (run without --resume to start afresh)"


class Run:
    """One stage's run in ``run_dir``. ``resume=True`` continues from its newest complete checkpoint."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool, name: str):
        self.cfg, self.dir, self.resume, self.name = cfg, Path(run_dir), resume, name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self._intact_checkpoints() if resume else []
        self.logger: MetricsLogger | None = None
        self.bar = None
        self.start = 0
        self.on_finish: list = []  # callables run by finish (e.g. stopping Ray rollout workers)
        self.skipped = SkippedSteps()

    def _intact_checkpoints(self) -> list[Path]:
        """The checkpoints to resume from, newest last: a damaged one newer than the newest intact one is said in one
        line and set aside (renamed ``damaged-step-N``), so that the run continues from the one before it."""
        where = self.dir / "checkpoints"
        intact, damaged = newest_intact(self.dir)
        if intact is None:  # every stage: resuming nothing must not start afresh and clear the run
            if not damaged:
                raise TrainingError(cast(str, resume_problem(self.dir)))
            found = "; ".join(f"{ckpt.name}: {problem}" for ckpt, problem in damaged)
            raise TrainingError(f"--resume: no intact checkpoint in {where} ({found}); start afresh with --overwrite")
        for ckpt, problem in damaged:
            aside = set_aside(ckpt)
            print(
                f"checkpoint {ckpt} is damaged ({problem}): set aside as {aside.name}, resuming from {intact.name}",
                file=sys.stderr,
            )
        return list_checkpoints(self.dir)

    @property
    def resuming(self) -> bool:
        """A checkpoint will be restored: work that only a fresh start needs (e.g. the imitation steps) can be skipped."""
        return bool(self.checkpoints)

    def begin(self, restore: Callable[[Path], int], note: str | None = None) -> int:
        """Restore the newest checkpoint with ``restore`` (returns its step), or clear what an earlier run left in the
        directory; then write the resolved config and open the logger. Returns the step to continue after. ``note``
        (e.g. the task's word on its held-out split) is printed on stderr once all is set up."""
        if note:
            print(note, file=sys.stderr)
        start = 0
        if self.checkpoints:
            for partial in remove_partial_checkpoints(self.dir):  # what a process killed mid-write left
                print(f"removed the half-written checkpoint {partial}", file=sys.stderr)
            start = restore(self.checkpoints[-1])
            self.skipped.load_state_dict(
                torch.load(self.checkpoints[-1] / "trainer_state.pt", mmap=True, weights_only=False).get(
                    "skipped_steps", {}
                )
            )
            print(f"resumed from {self.checkpoints[-1]} (step {start})")
        else:  # a fresh start: nothing of an earlier run in run_dir may mix with this one (the CLI asks first)
            clear_run(self.dir)
        save_config(self.cfg, self.dir / "config.yaml")
        log = self.cfg.log
        self.logger = MetricsLogger(
            self.dir,
            log.tensorboard,
            log.wandb,
            log.wandb_project,
            self.cfg.model_dump(mode="json"),
            resume_step=start if self.checkpoints else None,
        )
        self.start = start
        return start

    def steps(self, start: int):
        """The steps after ``start`` up to ``train.steps``, under a progress bar."""
        self.bar = tqdm(
            range(start + 1, self.cfg.train.steps + 1),
            desc=self.name,
            disable=not self.cfg.log.progress,
            dynamic_ncols=True,
        )
        return self.bar

    def eval_due(self, step: int) -> bool:
        """Evaluate every ``log.eval_every`` steps, at the last step, and at step 0 of a fresh run."""
        every = self.cfg.log.eval_every
        if step == 0:
            return bool(every) and self.start == 0
        return bool(every) and (step % every == 0 or step == self.cfg.train.steps)

    def save_due(self, step: int) -> bool:
        every = self.cfg.log.save_every
        return bool(every and step % every == 0) or step == self.cfg.train.steps

    def save(self, step: int, model, tokenizer, state: dict) -> Path:
        state = {**state, "skipped_steps": self.skipped.state_dict()}
        return save_checkpoint(self.dir, step, model, tokenizer, state, self.cfg.log.keep_checkpoints)

    def count_skipped(self, step: int, problem: str | None) -> dict:
        """Count a step whose update was skipped (``problem`` says what was not finite; None: it was taken), with a
        one-line warning; returns the metric ``train/skipped_steps`` (cumulative)."""
        self.skipped.count(problem is not None)
        if problem is not None:
            tqdm.write(
                f"warning: step {step}: {problem}: update skipped ({self.skipped.in_a_row} in a row, "
                f"train.max_skipped_steps={self.cfg.train.max_skipped_steps})",
                file=sys.stderr,
            )
        return {"train/skipped_steps": self.skipped.total}

    def stop_if_failing(self, step: int) -> None:
        """Stop the run once ``train.max_skipped_steps`` steps in a row were skipped, naming the last intact checkpoint
        (a skipped step leaves the weights as they were, so every checkpoint on disk holds finite ones)."""
        limit = self.cfg.train.max_skipped_steps
        if self.skipped.in_a_row < limit:
            return
        self.finish({})  # the logs flushed and the report written, for a look at what led here
        done = list_checkpoints(self.dir)
        raise TrainingError(
            f"stopped at step {step}: the loss or gradient norm was not finite {limit} steps in a row "
            f"(train.max_skipped_steps): try a lower train.lr or check the rewards; last intact "
            f"checkpoint: {done[-1] if done else 'none'}"
        )

    def log(self, step: int, metrics: dict, shown: dict | None = None) -> None:
        """Write one step's metrics; ``shown`` goes to the progress bar (with eval/accuracy when it was measured).
        Between steps, the run's thread count follows the other aha runs starting and ending (:mod:`aha.threads`)."""
        refresh_threads()
        assert self.logger is not None  # opened by begin()
        self.logger.log(step, metrics)
        if shown is not None and self.bar is not None:
            if "eval/accuracy" in metrics:
                shown = {**shown, "acc": f"{metrics['eval/accuracy']:.3f}"}
            self.bar.set_postfix(shown)

    def finish(self, last: dict) -> dict:
        """Close the bar and the logger, write report.html (``log.report``); returns ``last``."""
        for close in self.on_finish:
            close()
        if self.bar is not None:
            self.bar.close()
        assert self.logger is not None  # opened by begin()
        self.logger.close()
        if self.cfg.log.report:
            from aha.track.report import write_report  # (matplotlib: loaded only when a report is written)

            write_report(self.dir)
        return last


class SkippedSteps:
    """How many steps skipped their update (a non-finite loss or gradient norm): in all, and in a row up to now."""

    def __init__(self):
        self.total = self.in_a_row = 0

    def count(self, skipped: bool) -> None:
        self.total += skipped
        self.in_a_row = self.in_a_row + 1 if skipped else 0

    def state_dict(self) -> dict:
        return {"total": self.total, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.in_a_row = state.get("total", 0), state.get("in_a_row", 0)
