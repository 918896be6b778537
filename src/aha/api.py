"""The Python API: what the ``aha`` command does, callable with Python objects (the CLI is a thin layer over it).

    import aha
    from datasets import Dataset

    def reverse_ok(prompts, completions, solution, **kw):           # TRL's reward signature, TRL's column names
        return [float(c.strip() == s) for c, s in zip(completions, solution)]

    ds = Dataset.from_list([{"prompt": f"reverse {w}:", "solution": w[::-1]} for w in ["abc", "pots", ...]])
    summary = aha.train({"task": {"answer_column": "solution"}, "train": {"steps": 50}},
                        reward_funcs=[reverse_ok], train_dataset=ds, out="runs/reverse")
    print(summary["metrics"]["eval/accuracy"], summary["model"])
    aha.evaluate(summary["model"], summary["run_dir"] + "/config.yaml")

A dataset given in memory is written into the run directory (``RUN/data/train.parquet`` or ``.jsonl``) and the run's
config points at it, so the run is reproducible and resumable from the CLI. A Python reward function is registered
as ``py:NAME`` (config.yaml records that name); resuming needs the function again: ``aha.train(..., resume=True)``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aha.build import prepare
from aha.checkpoint import list_checkpoints, newest_model, run_contents
from aha.config import ConfigError, RewardSpec, RunConfig
from aha.config import load_config as _load_yaml
from aha.errors import TrainingError
from aha.evaluation import eval_verifier
from aha.evaluation import evaluate as _evaluate
from aha.rewards import build_rewards, register_reward
from aha.rl import train_rl
from aha.rl.parts import episode_format
from aha.rm import train_reward_model
from aha.rollout import SamplingParams
from aha.rollout.episodes import PYTHON_ENVS, evaluate_episodes
from aha.rollout.hf import HFEngine
from aha.rollout.scoring import RewardScorer, ScoreSettings
from aha.run import resume_problem
from aha.sft import train_sft
from aha.track.reasoning import reasoning_meter

__all__ = ["evaluate", "load_config", "train"]


def load_config(
    config: str | Path | Mapping | RunConfig | None = None, overrides: Sequence[str] | Mapping[str, Any] | None = None
) -> RunConfig:
    """A validated :class:`~aha.config.RunConfig` from a YAML path, a dict (sections as in the YAML) or a config,
    with ``overrides`` (``["rl.beta=0.04"]`` or ``{"rl.beta": 0.04}``) applied. A wrong field is a one-line
    :class:`~aha.config.ConfigError`.

    >>> load_config({"rl": {"beta": 0.04}}, {"train.steps": 3}).train.steps
    3
    """
    sets = (
        [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        if isinstance(overrides, Mapping)
        else list(overrides or [])
    )
    if isinstance(config, RunConfig):
        return _load_yaml(None, sets, **config.model_dump(mode="json"))
    if isinstance(config, Mapping):
        return _load_yaml(None, sets, **dict(config))
    if config is None or isinstance(config, (str, Path)):
        return _load_yaml(config, sets)
    raise ConfigError(f"config: expected a YAML path, a dict or a RunConfig, got {type(config).__name__}")


def train(
    config: str | Path | Mapping | RunConfig | None = None,
    *,
    out: str | Path = "runs/aha",
    reward_funcs: Sequence[Any] | Mapping[str, Callable] | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    environment_factory: Any = None,
    tools: Sequence[Any] | None = None,
) -> dict:
    """Train as ``aha train`` does, with the stage the config names (rl, sft or reward_model).

    ``environment_factory`` (rl: multi-turn episodes, as TRL's GRPOTrainer takes it): a class with ``reset(**row)``
    and public methods as tools, or a gym-style class (``reset``/``step``); ``tools``: plain functions with docstrings
    as stateless tools. Both as TRL takes them; YAML's ``env.factory`` / ``env.tools`` name them by spec instead.

    ``reward_funcs`` (rl) replaces the config's rewards: callables with TRL's signature, reward specs (``"accuracy"``,
    ``"file.py:fn"``, ``"rm:DIR"``), ``(reward, weight)`` pairs, or a dict ``{name: callable}``. ``train_dataset`` /
    ``eval_dataset``: a ``datasets.Dataset``, a list of dicts, or a path in any format the loader reads; for rl the
    prompts (``task.name`` becomes ``dataset``), for sft the demonstrations, for reward_model the preferences.

    Returns the run's summary: ``{"run_dir", "stage", "model" (the final model's directory), "metrics" (the last
    logged)}``.
    """
    cfg = load_config(config, overrides)
    out = Path(out)
    _check_out(out, resume, overwrite)
    if environment_factory is not None or tools:
        cfg = _with_env(cfg, environment_factory, tools or [], reward_funcs is None)
    if reward_funcs is not None:
        cfg.rewards = _reward_specs(reward_funcs)
    if train_dataset is not None or eval_dataset is not None:
        cfg = _with_data(cfg, out, train_dataset, eval_dataset)
    metrics = run_stage(cfg, out, resume)
    return {"run_dir": str(out), "stage": cfg.stage, "model": str(final_model(cfg, out)), "metrics": metrics}


def _evaluate_episodes(cfg: RunConfig, task, policy, tok, template: str, device, amp, rows: list[dict]) -> dict:
    """One greedy episode per row in the config's environment (``env``), rewarded by its ``rewards``."""
    fmt = episode_format(cfg, task, tok, template)
    assert fmt is not None  # (called with env set)
    scorer = RewardScorer(ScoreSettings.of(cfg), tok, build_rewards(cfg.rewards, task, cfg.task.answer_match))
    ro = cfg.rollout
    sampling = SamplingParams(ro.temperature, ro.top_p, ro.max_new_tokens, list(ro.stop))
    engine = HFEngine(policy, tok, device, amp)
    return evaluate_episodes(engine, fmt, scorer, rows, sampling, cfg.env.max_turns, ro.max_episode_tokens)


def _with_env(cfg: RunConfig, factory: Any, tools: Sequence[Any], own_reward: bool) -> RunConfig:
    """The config with ``env`` naming the given class and functions (registered in this process as ``py:NAME``);
    without ``reward_funcs`` the environment's own reward is the run's (as ``env.factory`` in YAML makes it)."""
    specs = []
    for obj in ([factory] if factory is not None else []) + list(tools):
        if isinstance(obj, str):
            specs.append(obj)
            continue
        name = getattr(obj, "__name__", type(obj).__name__)
        PYTHON_ENVS[name] = obj
        specs.append(f"py:{name}")
    data = cfg.model_dump(mode="json", exclude_unset=False)
    env = dict(data["env"])
    if factory is not None:
        env["factory"] = specs.pop(0)
    env["tools"] = list(env["tools"]) + specs
    data["env"] = env
    if own_reward and factory is not None and "rewards" not in cfg.model_fields_set:
        data.pop("rewards")
    return _load_yaml(None, [], **data)


def evaluate(
    model: str | Path,
    config: str | Path | Mapping | RunConfig | None = None,
    *,
    dataset: Any = None,
    reward: str | Callable | None = None,
    k: int = 1,
    temperature: float = 1.0,
    limit: int = 0,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> dict:
    """Greedy accuracy (and pass@k for k > 1) of ``model`` (a checkpoint's model dir, an HF dir, .gguf, alias or tiny
    spec) on the task's held-out rows — or on ``dataset`` (every row) — judged by the task's check or ``reward`` (a
    spec or a callable; right = above 0.5). Returns ``{"accuracy", "reward_mean", "n", "completions", "correct",
    "lengths", "pass@k"?, "task"}`` and, where ``log.reasoning_metrics`` is on (the R1 templates), ``reasoning/*``
    (:mod:`aha.track.reasoning`). Without ``config``, a checkpoint's run config (``RUN/config.yaml``) is used where
    found. With an environment (``env``): one greedy episode per row, judged by the run's rewards
    (:func:`aha.rollout.episodes.evaluate_episodes`: ``accuracy``, ``reward_mean``, ``env/*``)."""
    if config is None:  # a checkpoint's model dir lives at RUN/checkpoints/step-N/model: use RUN/config.yaml
        config = next(
            (p / "config.yaml" for p in Path(model).resolve().parents[:4] if (p / "config.yaml").is_file()), None
        )
    cfg = load_config(config, overrides)
    cfg.model.name, cfg.init_from = str(model), None  # evaluate the model itself, not the run's starting point
    if dataset is not None:
        cfg.task.name, cfg.task.path = "dataset", _store(dataset, Path(tempfile.mkdtemp(prefix="aha-eval-")), "eval")
        cfg.task.eval_path = cfg.task.path  # every row is held out
    if reward is not None:
        cfg.task.eval_reward = reward if isinstance(reward, str) else _register(reward, None)
    cfg.log.eval_every = max(1, cfg.log.eval_every)  # (prepare checks that the held-out rows can be judged)
    device, amp, task, policy, tok, template = prepare(cfg)
    rows = task.eval[:limit] if limit else task.eval
    if cfg.env.enabled:  # episodes in the run's environment, judged by the run's rewards
        return {
            "task": task.name,
            "n": len(rows),
            **_evaluate_episodes(cfg, task, policy, tok, template, device, amp, rows),
        }
    result = _evaluate(
        HFEngine(policy, tok, device, amp),
        tok,
        task,
        rows,
        template,
        cfg.rollout.max_new_tokens,
        k=k,
        temperature=temperature,
        scorer=eval_verifier(cfg.task, cfg.rewards, task),
        response_prefix=cfg.task.response_prefix,
    )
    if meter := reasoning_meter(
        cfg.log.reasoning_metrics, cfg.task, task
    ):  # format, strict/lenient accuracy, reflection (log.reasoning_metrics)
        result.update(meter.of_eval(rows, result))
    return {"task": task.name, "n": len(rows), **result}


# ----------------------------------------------------------------------------- what train and the CLI share


def run_stage(cfg: RunConfig, out: Path, resume: bool = False) -> dict:
    """Run ``cfg.stage`` in ``out``; returns the last logged metrics."""
    if cfg.stage == "sft":
        return train_sft(cfg, out, resume=resume)
    if cfg.stage == "reward_model":
        return train_reward_model(cfg, out, resume=resume)

    return train_rl(cfg, out, resume=resume)


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """``out`` usable for this start: a fresh start never silently deletes a run, a resume needs a checkpoint."""
    if resume and overwrite:
        raise TrainingError("--resume continues the run in --out and --overwrite deletes it: choose one")
    if resume:  # checked here for every stage: train_sft would otherwise start afresh and wipe metrics.jsonl
        if problem := resume_problem(out):
            raise TrainingError(problem)
    elif (held := run_contents(out)) and not overwrite:  # a fresh start would delete them: ask first
        raise TrainingError(
            f"{out} already holds a run ({', '.join(held)}): continue it with --resume, start afresh "
            "with --overwrite (deletes it), or choose another --out"
        )
    make_out_dir(out)


def make_out_dir(out: Path) -> None:
    """Create the output directory up front, so a bad --out fails before any work, in one line."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"--out {out}: cannot create it ({e.strerror or e})") from None


def final_model(cfg: RunConfig, out: Path) -> Path:
    """Where the run's final model is: RUN/model for a reward model, else the newest checkpoint's model dir."""
    if cfg.stage == "reward_model":
        return out / "model"
    return newest_model(out) if list_checkpoints(out) else out


# ----------------------------------------------------------------------------- Python objects → config


def _register(fn: Callable, name: str | None) -> str:
    return register_reward(fn, name)


def _reward_specs(reward_funcs: Sequence[Any] | Mapping[str, Callable]) -> list:
    items = list(reward_funcs.items()) if isinstance(reward_funcs, Mapping) else [(None, r) for r in reward_funcs]
    specs = []
    for name, item in items:
        fn, weight = item if isinstance(item, tuple) and len(item) == 2 else (item, 1.0)
        if isinstance(fn, str):
            specs.append(RewardSpec(name=fn, weight=weight))
        elif callable(fn):
            specs.append(RewardSpec(name=_register(fn, name), weight=weight))
        else:
            raise ConfigError(f"reward_funcs: {fn!r} is neither a callable nor a reward spec string")
    if not specs:
        raise ConfigError("reward_funcs is empty: give at least one reward function")
    return specs


def _with_data(cfg: RunConfig, out: Path, train_data: Any, eval_data: Any) -> RunConfig:
    """The config pointing at the datasets (written into ``out/data`` where they are Python objects)."""
    train_path = None if train_data is None else _store(train_data, out / "data", "train")
    eval_path = None if eval_data is None else _store(eval_data, out / "data", "eval")
    if cfg.stage == "sft":
        if eval_path is not None:
            raise ConfigError("eval_dataset with stage sft: eval uses the task's held-out rows (configure task)")
        cfg.sft.path = train_path
    elif cfg.stage == "reward_model":
        cfg.reward_model.path = train_path or cfg.reward_model.path
        cfg.reward_model.eval_path = eval_path or cfg.reward_model.eval_path
    else:
        if train_path is not None:
            cfg.task.name, cfg.task.path = "dataset", train_path
        cfg.task.eval_path = eval_path or cfg.task.eval_path
    return cfg


def _store(data: Any, folder: Path, name: str) -> Path:
    """A path for ``data``: a path as given; a datasets.Dataset as Parquet, a list of dicts as JSONL, in ``folder``."""
    if isinstance(data, (str, Path)):
        return Path(data)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(data, "to_parquet") and hasattr(data, "column_names"):
        path = folder / f"{name}.parquet"
        data.to_parquet(str(path))
        return path
    if isinstance(data, (list, tuple)):
        path = folder / f"{name}.jsonl"
        try:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data)
        except TypeError as e:
            raise ConfigError(
                f"{name}_dataset: a row is not JSON-serialisable ({e}); pass a datasets.Dataset"
            ) from None
        path.write_text(text, encoding="utf-8")
        return path
    raise ConfigError(
        f"{name}_dataset: expected a datasets.Dataset, a list of dicts or a path, got {type(data).__name__}"
    )
