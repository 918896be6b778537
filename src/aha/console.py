"""What a person at a terminal sees when a command fails because of something they can fix: one line on stderr
and exit code 2, never a traceback (``@friendly`` on every ``aha`` command, ``aha label`` included)."""

from __future__ import annotations

import functools

import typer

from aha.errors import AhaError


def friendly(fn):
    """Turn the errors a user can cause (every :class:`~aha.errors.AhaError`: config, data, paths, rewards,
    rankings, …) into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AhaError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: completed checkpoints are intact; continue with --resume", err=True)
            raise typer.Exit(130) from None

    return wrapper
