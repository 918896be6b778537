"""Held-out evaluation: greedy accuracy and sampled pass@k with the task's verifier."""

from __future__ import annotations

from aha.data.templates import render_prompt
from aha.rollout import SamplingParams


def verifier(task, name: str | None = None):
    """The reward function that decides correctness on this task (its own, else the built-in accuracy)."""
    from aha.rewards import resolve_reward

    name = name or getattr(task, "verifier", "accuracy")
    return task.rewards.get(name) or resolve_reward(name)


def columns_of(rows: list[dict], repeat: int = 1) -> dict[str, list]:
    keys = {k for r in rows for k in r if k != "prompt"}
    return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in keys}


def evaluate(engine, tokenizer, task, rows: list[dict], template: str, max_new_tokens: int,
             k: int = 1, temperature: float = 1.0, batch_size: int = 256) -> dict:
    """Greedy accuracy over ``rows`` (and pass@k with ``k`` samples at ``temperature`` when k > 1).

    Returns ``{"accuracy": float, "correct": [bool per row], "completions": [str per row], "pass@k": float?}``.
    """
    if not rows:
        from aha.tasks import DataError

        raise DataError(f"task {task.name!r} has no held-out rows to evaluate (a JSONL task holds out a fifth of its "
                        "rows, none under 5): set task.eval_path, or log.eval_every=0 to train without evaluation")
    fn = verifier(task)

    def sample_and_score(chunk: list[dict], n: int, sampling: SamplingParams) -> tuple[list[bool], list[str]]:
        """``n`` completions per row (grouped), each judged right or wrong by the task's verifier."""
        ids = [render_prompt(r["prompt"], tokenizer, template) for r in chunk]
        roll = engine.generate(ids, n, sampling)
        comps = [tokenizer.decode(c, skip_special_tokens=True) for c in roll.completion_ids]
        scores = fn([r["prompt"] for r in chunk for _ in range(n)], comps, **columns_of(chunk, n))
        return [bool(s and s > 0.5) for s in scores], comps

    correct, texts = [], []
    greedy = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    for start in range(0, len(rows), batch_size):
        ok, comps = sample_and_score(rows[start:start + batch_size], 1, greedy)
        correct += ok
        texts += comps
    out = {"accuracy": sum(correct) / max(1, len(correct)), "correct": correct, "completions": texts}
    if k > 1:
        hits, step = [], max(1, batch_size // k)
        sampled = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        for start in range(0, len(rows), step):
            ok, _ = sample_and_score(rows[start:start + step], k, sampled)
            hits += [any(ok[i:i + k]) for i in range(0, len(ok), k)]
        out[f"pass@{k}"] = sum(hits) / max(1, len(hits))
    return out
