"""Held-out evaluation: greedy accuracy and sampled pass@k, judged by the task's verifier or ``task.eval_reward``."""

from __future__ import annotations

from typing import cast

from aha.data.templates import render_prompt
from aha.rewards import as_completions, columns_of
from aha.rewards.specs import resolve_task_reward, reward_labels
from aha.rollout import SamplingParams
from aha.tasks import DataError


def verifier(task, name: str | None = None, answer_match: str = "auto", args: dict | None = None):
    """The reward function that decides correctness: ``name`` (a reward spec), else the task's own verifier
    (accuracy, or code for the code task); the built-in accuracy compares answers by ``answer_match``."""
    return resolve_task_reward(cast(str, name or getattr(task, "verifier", "accuracy")), task, args, answer_match)


def eval_verifier(task_cfg, specs, task):
    """The verifier a run's eval uses: ``task.eval_reward`` (with its ``args`` where it is one of the run's reward
    ``specs``), else the task's. ``task_cfg``: the config's ``task`` section."""
    name = task_cfg.eval_reward
    spec = next((r for r, label in zip(specs, reward_labels(specs)) if name in (r.name, label)), None)
    return verifier(task, spec.name if spec else name, task_cfg.answer_match, spec.args if spec else None)


def check_eval_data(task_cfg, task, needs_answers: bool = True) -> None:
    """Fail before training, in one line, where eval could not run: no held-out rows, or rows without the reference
    answer the built-in accuracy needs (``needs_answers``: False where episodes are judged by the run's rewards)."""
    if not task.eval:
        raise DataError(NO_EVAL_ROWS.format(name=task.name))
    if needs_answers and task_cfg.eval_reward is None and getattr(task, "verifier", "accuracy") == "accuracy":
        missing = sum(1 for r in task.eval if r.get("answer") in (None, ""))
        if missing:
            raise DataError(
                f"task {task.name!r}: {missing} of {len(task.eval)} held-out rows have no reference answer "
                f"(task.answer_column={task_cfg.answer_column!r}) for eval/accuracy: name the column that "
                "holds it with task.answer_column, score eval with another reward (task.eval_reward), "
                "or turn eval off (log.eval_every=0)"
            )


NO_EVAL_ROWS = (
    "task {name!r} has no held-out rows to evaluate (a dataset task holds out a fifth of its rows, none "
    "under 5): set task.eval_path, or log.eval_every=0 to train without evaluation"
)


def evaluate(
    engine,
    tokenizer,
    task,
    rows: list[dict],
    template: str,
    max_new_tokens: int,
    k: int = 1,
    temperature: float = 1.0,
    batch_size: int = 256,
    scorer=None,
    response_prefix: str = "",
) -> dict:
    """Greedy accuracy over ``rows`` (and pass@k with ``k`` samples at ``temperature`` when k > 1), judged by
    ``scorer`` (a reward function; default: the task's verifier): a completion is right when it scores above 0.5.
    ``response_prefix`` (``task.response_prefix``) ends every prompt and starts every completion's text.

    Returns ``{"accuracy": float, "reward_mean": float, "correct": [bool per row], "completions": [str per row],
    "lengths": [completion tokens per row], "pass@k": float?}``.
    """
    if not rows:
        raise DataError(NO_EVAL_ROWS.format(name=task.name))
    fn = scorer or verifier(task)
    scores_seen: list[float] = []
    lengths: list[int] = []

    def sample_and_score(chunk: list[dict], n: int, sampling: SamplingParams) -> tuple[list[bool], list[str]]:
        """``n`` completions per row (grouped), each judged right or wrong by the scorer (greedy: their lengths kept)."""
        ids = [render_prompt(r["prompt"], tokenizer, template, response_prefix) for r in chunk]
        roll = engine.generate(ids, n, sampling)
        comps = [response_prefix + tokenizer.decode(c, skip_special_tokens=True) for c in roll.completion_ids]
        prompts = [r["prompt"] for r in chunk for _ in range(n)]
        scores = fn(prompts=prompts, completions=as_completions(prompts, comps), **columns_of(chunk, n))
        if n == 1:
            scores_seen.extend(float(s) for s in scores if s is not None)
            lengths.extend(len(c) for c in roll.completion_ids)
        return [bool(s is not None and s > 0.5) for s in scores], comps

    correct, texts = [], []
    greedy = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    for start in range(0, len(rows), batch_size):
        ok, comps = sample_and_score(rows[start : start + batch_size], 1, greedy)
        correct += ok
        texts += comps
    out = {
        "accuracy": sum(correct) / max(1, len(correct)),
        "correct": correct,
        "completions": texts,
        "lengths": lengths,
        "reward_mean": sum(scores_seen) / len(scores_seen) if scores_seen else float("nan"),
    }
    if k > 1:
        hits, step = [], max(1, batch_size // k)
        sampled = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        for start in range(0, len(rows), step):
            ok, _ = sample_and_score(rows[start : start + step], k, sampled)
            hits += [any(ok[i : i + k]) for i in range(0, len(ok), k)]
        out[f"pass@{k}"] = sum(hits) / max(1, len(hits))
    return out
