"""The ``aha`` command: train, eval, demo, report, config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
import yaml

from aha.console import friendly
from aha.threads import set_wait_policy

set_wait_policy()  # before anything loads torch: OpenMP reads its wait policy once (aha.threads)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="aha — RL post-training for language models that you can read, run on a laptop, and watch learn.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")
app.add_typer(config_app, name="config")
from aha.label.cli import label_app  # noqa: E402  (light: FastAPI and uvicorn are imported by its commands)

app.add_typer(label_app, name="label")


SET_HELP = "Override a config field, e.g. --set rl.beta=0.04 (repeatable; see `aha config show`)."


@app.command()
@friendly
def train(
    config: Path = typer.Argument(..., help="YAML run config (see recipes/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: metrics, samples, checkpoints, report."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(False, help="Continue from the newest complete checkpoint in --out."),
    overwrite: bool = typer.Option(
        False, help="Start afresh in an --out that holds a run: deletes its checkpoints, metrics and samples."
    ),
):
    """Train with the stage the config names: rl (rl.algo: grpo, ppo, rloo, reinforce++, reinforce++_baseline, or any
    registered estimator), sft or reward_model."""
    from aha.api import _check_out, load_config, run_stage  # (torch: `aha --help` starts without it)

    cfg = load_config(config, set_)
    _check_out(out, resume, overwrite)
    last = run_stage(cfg, out, resume)
    shown: dict[str, float | str] = {
        k: round(v, 4)
        for k, v in last.items()
        if isinstance(v, float) and k.split("/")[0] in ("reward", "eval", "loss")
    }
    if cfg.stage == "reward_model":
        shown["model"] = str(out / "model")
    typer.echo(f"done: {out}  {json.dumps(shown)}")


@app.command("eval")
@friendly
def eval_(
    checkpoint: str = typer.Argument(
        ..., help="Model: a checkpoint's model dir, an HF dir, .gguf, alias or tiny spec."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config for the task (default: the run's config.yaml if found)."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    k: int = typer.Option(1, min=1, help="Also report sampled pass@k (k > 1)."),
    temperature: float = typer.Option(1.0, help="Temperature of the pass@k samples (> 0)."),
    limit: int = typer.Option(0, min=0, help="Evaluate only the first N held-out rows (0 = all)."),
    reward: str | None = typer.Option(
        None,
        "--reward",
        help="Judge with this reward spec instead of the task's "
        "check (e.g. code, file.py:fn, rm:DIR): right = scores above 0.5.",
    ),
):
    """Greedy accuracy (and sampled pass@k) of a model on the task's held-out split; with the R1 templates (or
    log.reasoning_metrics=true) also format compliance, strict and lenient accuracy and the reflection rate."""
    from aha.api import evaluate  # (torch: `aha --help` starts without it)

    if temperature <= 0:
        raise typer.BadParameter(
            f"{temperature} is not > 0 (greedy accuracy is always reported)", param_hint="'--temperature'"
        )
    res = evaluate(checkpoint, config, reward=reward, k=k, temperature=temperature, limit=limit, overrides=set_)
    hidden = ("correct", "completions", "lengths") + (() if reward else ("reward_mean",))
    typer.echo(json.dumps({"model": checkpoint, **{key: v for key, v in res.items() if key not in hidden}}))


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(..., help="A run directory (has metrics.jsonl).")):
    """Write RUN_DIR/report.html: plots, samples and config, self-contained (opens offline)."""
    from aha.track.report import write_report  # (matplotlib, only for this command)

    typer.echo(str(write_report(run_dir)))


DEMOS = {  # name → (module with run_demo(out, seed), one line for --help)
    "alphago": ("aha.demos.alphago", "a teacher, SFT on its traces, then GRPO past it (the AlphaGo lesson)"),
    "rlhf": (
        "aha.demos.rlhf",
        "a simulated labeller ranks samples, a reward model learns them, GRPO games it; the guard",
    ),
    "r1": ("aha.demos.r1", "R1-Zero-style RL on SmolLM2: accuracy, format, response length and reflection"),
    "agent": (
        "aha.demos.agent",
        "the AlphaGo lesson in a game: SFT on a random guesser, then GRPO finds a near-bisection search",
    ),
    "think": (
        "aha.demos.think",
        "the aha moment: GRPO rewarded for right sums alone learns to doubt its first answer ('wait') and work the "
        "sum out, length rising with accuracy",
    ),
}


@app.command()
@friendly
def demo(
    name: str = typer.Argument("alphago", help="Which demo: " + "; ".join(f"'{k}': {v[1]}" for k, v in DEMOS.items())),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Where the demo writes its runs and summary (default: runs/demo for alphago, runs/demo-NAME otherwise).",
    ),
    seed: int = typer.Option(0, help="Seed for model init, data and sampling."),
):
    """A demo on embedded defaults, minutes on a CPU (default: the AlphaGo lesson: imitation, then RL past it)."""
    import importlib

    if name not in DEMOS:
        raise typer.BadParameter(f"unknown demo '{name}'; choose one of: {', '.join(DEMOS)}", param_hint="NAME")
    from aha.api import make_out_dir  # (torch: `aha --help` starts without it)

    out = out or Path("runs/demo" if name == "alphago" else f"runs/demo-{name}")
    make_out_dir(out)
    importlib.import_module(DEMOS[name][0]).run_demo(out, seed)


@app.command("list")
@friendly
def list_(what: str | None = typer.Argument(None, help="rewards, tasks or models (omit for all three).")):
    """The built-in rewards, tasks and model names, one line each."""
    from aha.catalog import catalog  # (torch, through the rewards)

    sections = catalog()
    if what is not None and what not in sections:
        raise typer.BadParameter(f"'{what}' is not one of: {', '.join(sections)}", param_hint="WHAT")
    for section, items in sections.items():
        if what in (None, section):
            typer.echo(f"{section}:")
            width = max(map(len, items))
            for name, line in items.items():
                typer.echo(f"  {name:<{width}}  {line}")


@config_app.command("show")
@friendly
def config_show(
    config: Path | None = typer.Argument(None, help="A YAML config to resolve (omit for the defaults)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    parts: bool = typer.Option(
        False, "--parts", help="Show the config as an RL run's parts see it (policy, experience, optimizer step, ...)."
    ),
):
    """Every config field with its value and description; with --parts, what each part of an RL run reads."""
    from aha.config import describe, load_config  # (pydantic's models, only for these commands)

    if parts:
        from aha.rl.parts import describe_parts  # (torch: only for this view)

        resolved = load_config(config, set_)
        if resolved.stage != "rl":
            raise typer.BadParameter(f"--parts shows an RL run's parts; this config's stage is {resolved.stage!r}")
        typer.echo(yaml.safe_dump(describe_parts(resolved), sort_keys=False).rstrip())
        return
    cfg = load_config(config, set_).model_dump(mode="json")
    for name, _default, desc in describe():
        value = cfg
        for part in name.split("."):
            value = value[part]
        typer.echo(f"{name} = {json.dumps(value)}\n    {desc}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
