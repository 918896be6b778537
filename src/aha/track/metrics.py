"""Metric sinks: RUN_DIR/metrics.jsonl always (one object per line, always with ``step``), TensorBoard and
W&B when asked; RUN_DIR/samples.jsonl for completions."""

from __future__ import annotations

import json
import math
from pathlib import Path

from aha.errors import AhaError


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "aha",
        config: dict | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        # (a fresh run starts from files that checkpoint.clear_run removed; it appends to nothing of an older run)
        if resume_step is not None:  # drop lines written after the checkpoint we resume from
            for path in (self.metrics_path, self.samples_path):
                _truncate_after(path, resume_step)
        self._tb = self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # resumed: TensorBoard hides the events a killed process logged after the checkpoint (purge_step)
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        if wandb:
            try:
                import wandb as _wandb
            except ImportError:
                raise AhaError(
                    "log.wandb is on but wandb is not installed: pip install wandb (or set log.wandb=false)"
                ) from None
            self._wandb = _wandb.init(project=wandb_project, dir=str(self.run_dir), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                if self._tb is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def log_samples(self, rows: list[dict]) -> None:
        with self.samples_path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a killed process
    path.write_text("".join(line + "\n" for line in keep))


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
