"""Supervised fine-tuning (imitation): maximise log π(completion | prompt) on demonstrations, loss on
completion tokens only. Checkpoints use the RL format, so GRPO can start from them (``init_from``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aha.build import prepare
from aha.checkpoint import resume_from, training_state
from aha.config import RunConfig
from aha.data.load import DataError, column_names, labelled_rows, text_problem
from aha.data.sampler import PromptSampler, length_groups
from aha.data.templates import encode_texts, render_prompt
from aha.evaluation import eval_verifier, evaluate
from aha.modeling.logprobs import completion_logprobs
from aha.modeling.options import autocast, set_attention, training_attention
from aha.models import fold_adapters
from aha.optim import finite_step, make_optimizer
from aha.rewards.builtin import completion_text
from aha.rollout import Rollouts, pack_rollouts
from aha.rollout.hf import HFEngine
from aha.run import Run


def demonstrations(source, prompt_col: str = "prompt", completion_col: str = "completion") -> list[dict]:
    """SFT rows ``{"prompt", "completion"}`` from any source :func:`aha.data.load.load_rows` reads. A row is either
    ``prompt`` + ``completion`` columns (text, or a chat prompt as a message list) or TRL's conversational
    ``messages``: the last assistant message is the completion, the messages before it the prompt.

    >>> demonstrations([{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}])
    [{'prompt': [{'role': 'user', 'content': '2+2?'}], 'completion': '4'}]
    """
    out = []
    for where, row in labelled_rows(source, "SFT data"):
        if isinstance(row, dict) and isinstance(row.get("messages"), list) and completion_col not in row:
            msgs = row["messages"]
            last = max(
                (i for i, m in enumerate(msgs) if isinstance(m, dict) and m.get("role") == "assistant"), default=None
            )
            if not last:  # None (no assistant message) or 0 (nothing before it)
                raise DataError(f"{where}: 'messages' needs an assistant message after at least one other message")
            if problem := text_problem(msgs[: last + 1]):
                raise DataError(f"{where}: 'messages' {problem}")
            out.append({"prompt": msgs[:last], "completion": completion_text([msgs[last]])})
            continue
        if not isinstance(row, dict) or any(row.get(c) in (None, "") for c in (prompt_col, completion_col)):
            keys = column_names(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(
                f"{where}: an SFT row needs {prompt_col!r} and {completion_col!r} (or TRL's 'messages'); "
                f"it has: {keys or 'nothing'}"
            )
        if problem := text_problem(row[prompt_col]):
            raise DataError(f"{where}: {prompt_col!r} {problem}")
        out.append({"prompt": row[prompt_col], "completion": row[completion_col]})
    return out


def encode_pairs(rows: list[dict], tok, template: str, prompt_col: str = "prompt", completion_col: str = "completion"):
    """``[(prompt_ids, completion_ids + [eos])]`` for each demonstration row."""
    texts = [row[prompt_col] for row in rows]
    if template == "plain" and all(isinstance(t, str) for t in texts):  # (the batched tokenizer: the same ids)
        prompts = encode_texts(texts, tok)
    else:
        prompts = [render_prompt(t, tok, template) for t in texts]
    completions = encode_texts([str(row[completion_col]) for row in rows], tok)
    return [(p, c + [tok.eos_token_id]) for p, c in zip(prompts, completions)]


def micro_batches(batch: list[tuple[list[int], list[int]]], size: int, by_length: bool) -> list[list]:
    """The batch's pairs in micro-batches of ``size``, or (``by_length``: ``train.group_by_length``) of like lengths,
    each padding to about its own longest in no more tokens than ``size`` of the batch's longest
    (:func:`~aha.data.sampler.length_groups`)."""
    if not by_length:
        return [batch[i : i + size] for i in range(0, len(batch), size)]
    return [[batch[i] for i in group] for group in length_groups([len(p) + len(c) for p, c in batch], size)]


def sft_loss(
    model, pairs: list[tuple[list[int], list[int]]], pad_id: int, device, amp, n_tokens: int | None = None
) -> torch.Tensor:
    """Negative log-likelihood of the completion tokens, summed and divided by ``n_tokens`` (default: theirs): the
    mean over tokens, every token weighing the same. A micro-batch of a larger batch passes the batch's completion
    tokens, so that the micro-batches' losses add up to the batch's token mean, whatever their lengths (a mean per
    micro-batch would weigh a token of a short micro-batch more)."""
    roll = Rollouts(
        [p for p, _ in pairs], [c for _, c in pairs], [[0.0] * len(c) for _, c in pairs], ["stop"] * len(pairs)
    )
    batch = pack_rollouts(roll, pad_id, device)  # the same layout RL trains on
    with autocast(device, amp):
        logp, _ = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["mask"].shape[1])
    mask = batch["mask"]
    return -(logp.float() * mask).sum() / (mask.sum().clamp(min=1) if n_tokens is None else max(n_tokens, 1))


def imitate_answers(
    model, tok, rows: list[dict], template: str, sft, train, device, amp, progress: bool = True
) -> float:
    """``sft.imitation_steps`` of SFT on the task's own (prompt, answer) rows before RL, with the ``train`` section's
    batch size, seed and gradient clip (``sft``, ``train``: the config's sections); returns the last loss.
    Under LoRA the trained adapters are then folded into the base weights (:func:`aha.models.fold_adapters`), so
    the KL reference (the policy with its adapters off) is the model after imitation, as with full fine-tuning."""
    pairs = encode_pairs(rows, tok, template, "prompt", "answer")
    tr = train.model_copy(update={"lr": sft.imitation_lr, "warmup_steps": 0, "lr_schedule": "constant"})
    optimizer, _ = make_optimizer(model, tr, sft.imitation_steps)
    sampler = PromptSampler(len(pairs), train.seed + 1)
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(sft.imitation_steps), desc="imitation", disable=not progress, dynamic_ncols=True):
        optimizer.zero_grad(set_to_none=True)
        loss = sft_loss(model, [pairs[i] for i in sampler.take(train.batch_size)], tok.pad_token_id, device, amp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
    fold_adapters(model)
    return loss.item()


def train_sft(cfg: RunConfig, run_dir: Path, resume: bool = False, rows: list[dict] | None = None) -> dict:
    """SFT on ``cfg.sft.path`` (or the given ``rows``), with greedy eval on the task's held-out split."""
    run = Run(cfg, run_dir, resume, "sft")
    tr = cfg.train
    device, amp, task, model, tok, template = prepare(cfg)
    rows = demonstrations(cfg.sft.path if rows is None else rows, cfg.sft.prompt_column, cfg.sft.completion_column)
    try:
        pairs = encode_pairs(rows, tok, template)
    except DataError as e:
        if not cfg.model.name.startswith("tiny") or cfg.task.name == "dataset":
            raise
        raise DataError(
            f"{e}; a tiny model's characters come from its task (task.name={cfg.task.name}): to train "
            "on your SFT data, set task.name=dataset and task.path to a file of your prompts "
            "(e.g. the SFT file itself)"
        ) from None
    optimizer, scheduler = make_optimizer(model, tr, total_steps=tr.steps)
    sampler = PromptSampler(len(pairs), tr.seed)
    engine = HFEngine(model, tok, device, amp)  # samples with the model's own attention kernel
    scorer = eval_verifier(cfg.task, cfg.rewards, task)
    set_attention([model], training_attention(tr.attention, device))
    start = run.begin(lambda ckpt: resume_from(ckpt, model, optimizer, scheduler, sampler), task.note)

    def run_eval() -> dict:
        result = evaluate(engine, tok, task, task.eval, template, cfg.rollout.max_new_tokens, scorer=scorer)
        return {
            "eval/accuracy": result["accuracy"],
            **({"eval/reward_mean": result["reward_mean"]} if cfg.task.eval_reward else {}),
        }

    last: dict = {}
    if run.eval_due(0):
        run.log(0, run_eval())
    for step in run.steps(start):
        t0 = time.perf_counter()
        batch = [pairs[i] for i in sampler.take(tr.batch_size)]
        optimizer.zero_grad(set_to_none=True)
        loss_total, n_tokens = 0.0, sum(len(c) for _, c in batch)
        for part in micro_batches(batch, tr.micro_batch_size, tr.group_by_length):
            loss = sft_loss(model, part, tok.pad_token_id, device, amp, n_tokens)
            loss.backward()
            loss_total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr.max_grad_norm).item()
        skipped = finite_step(optimizer, loss_total, grad_norm)  # None: the step was taken
        if skipped is None:
            scheduler.step()
        metrics = {
            "loss/sft": loss_total,
            "grad_norm": grad_norm,
            "lr": scheduler.get_last_lr()[0],
            "time/train_s": time.perf_counter() - t0,
            **run.count_skipped(step, skipped),
        }
        if run.eval_due(step):
            metrics.update(run_eval())
        run.log(step, metrics, shown={"loss": f"{loss_total:.3f}"})
        run.stop_if_failing(step)  # train.max_skipped_steps skipped in a row
        last = metrics
        if run.save_due(step):
            run.save(step, model, tok, training_state(optimizer, scheduler, sampler))
    return run.finish(last)
