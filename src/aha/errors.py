"""The one base class of the errors a user can cause (a config field, a data file, a path, a reward function,
a checkpoint): the CLI prints their message as one line and exits with code 2, never a traceback.

Every one of them, each beside the module that raises it (tests/test_layers.py keeps this list whole):

- here: :class:`TrainingError` (training cannot go on), :class:`ModelLoadError` (a model cannot be loaded)
- ``aha.config.ConfigError`` (a config field), ``aha.data.load.DataError`` (a data file or row)
- ``aha.rewards.RewardError`` (a reward function failed), ``aha.rewards.specs.RewardConfigError`` (a reward spec),
  ``aha.rewards.learned.RewardModelError`` (a reward model's folder)
- ``aha.checkpoint.CheckpointError`` and ``CheckpointSpaceError`` (a checkpoint damaged, foreign, or the disk full)
- ``aha.guard.GuardError``, ``aha.critic.CriticError``, ``aha.threads.ThreadsError``, ``aha.track.report.ReportError``
- ``aha.sandbox.SandboxError`` (no sandbox works here), ``aha.label.taskfile.LabelError`` (and ``aha.label.db.Refused``:
  a ranking the app refuses)
- ``aha.env.EnvError`` (an environment or tool spec that fits no shape, or a ``reset`` that raised: the row is named)
"""

from __future__ import annotations


class AhaError(Exception):
    """A user-caused problem; its message is one line meant for the terminal, naming the field or file and the fix."""


class TrainingError(AhaError, RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says where, and which checkpoint is intact."""


class ModelLoadError(AhaError, RuntimeError):
    """A model could not be found or loaded (models.py, gguf.py); the message says which and how to fix it."""


def first_line(e: BaseException) -> str:
    """An exception's first line of text (its type's name when it has none)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
