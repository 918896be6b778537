"""What every stage builds first from its config: seeds, the device, the task, the policy and its tokenizer and
template (:func:`prepare`), and the rollout engine RL samples with (:func:`build_engine`)."""

from __future__ import annotations

import string
import sys

import torch

from aha.config import RunConfig
from aha.data.templates import check_prompts, resolve_template
from aha.evaluation import check_eval_data
from aha.gguf import cache_dir
from aha.modeling.device import pick_device, seed_everything
from aha.modeling.options import compiled_sampler
from aha.modeling.precision import Choice, cache_key, choose
from aha.models import load_policy
from aha.rollout import Engine
from aha.rollout.compiled import CompiledEngine
from aha.rollout.hf import HFEngine
from aha.rollout.ray import RayEngine
from aha.tasks import build_task
from aha.threads import use_threads


def prepare(cfg: RunConfig):
    """What every stage starts with: seeds set, ``(device, autocast dtype, task, model, tokenizer, template)``,
    the model on its device in train mode."""
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    task = build_task(cfg.task)
    if cfg.log.eval_every > 0:
        check_eval_data(cfg.task, task, needs_answers=not cfg.env.enabled)
    alphabet = task.alphabet
    if alphabet is not None and cfg.env.enabled:  # a tiny model must read the environment's answers too
        alphabet += "".join(c for c in string.printable if c not in alphabet and c not in "\t\r\x0b\x0c")
    model, tok = load_policy(cfg.model, alphabet, cfg.train.seed, cfg.init_from)
    model.to(device).train()
    template = resolve_template(cfg.task.template, tok)
    check_prompts(task.train + task.eval, tok, char_level=cfg.model.name.startswith("tiny") and task.alphabet is None)
    use_threads(cfg.train.threads)  # (after the checks: a user error is the run's only line)
    amp = precision(cfg, device, model).train
    return device, amp, task, model, tok, template


_CHOICES: dict[str, Choice] = {}


def precision(cfg: RunConfig, device: torch.device, model: torch.nn.Module) -> Choice:
    """What ``train.precision`` means for each phase of this run on this machine (:mod:`aha.modeling.precision`:
    under 'auto' a CPU is probed once and the probe cached in ``$AHA_CACHE/precision.json``). An 'auto' choice is
    said on stderr, once per process."""
    key = f"{cfg.train.precision}|{cache_key(model, device)}"
    if key not in _CHOICES:
        _CHOICES[key] = choose(cfg.train.precision, device, model, cache_dir() / "precision.json")
        if cfg.train.precision == "auto":
            print(_CHOICES[key].line, file=sys.stderr)
    return _CHOICES[key]


def build_engine(
    name: str,
    policy: torch.nn.Module,
    tokenizer,
    device: torch.device,
    amp: torch.dtype | None,
    compile: bool | str = False,
    lora: bool = False,
    distributed=None,
    rewards=None,
) -> Engine:
    """The engine ``rollout.engine`` names, sampling from ``policy``. ``hf``: in-process, sharing the policy's
    parameters; with ``rollout.compile`` (:func:`~aha.modeling.options.compiled_sampler`) its compiled variant;
    with ``distributed.backend: ray`` (a ``DistributedConfig``), Ray rollout workers
    (:class:`~aha.rollout.ray.RayEngine`, which imports Ray only when built), which reward beside the completions when given ``rewards`` (an
    :class:`~aha.rollout.scoring.RewardRecipe`)."""
    if distributed is not None and distributed.backend == "ray":
        return RayEngine(
            policy,
            tokenizer,
            distributed.rollout_workers,
            distributed.address,
            distributed.timeout_s,
            distributed.max_restarts,
            exact=device.type == "cpu" and amp is None,
            rewards=rewards,
        )

    if name != "hf":
        raise ValueError(f"rollout.engine {name!r}: only 'hf' is built in")
    if compiled_sampler(compile, device, lora):
        return CompiledEngine(policy, tokenizer, device, amp, fallback=compile == "auto")  # see its docstring
    return HFEngine(policy, tokenizer, device, amp)  # samples with the model's own attention kernel
