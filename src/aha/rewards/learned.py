"""A reward model's input and its use for scoring: the one text it scores for ``(prompt, completion)``
(:func:`render_text`), token ids cut to ``max_length``, the pooled last hidden state its heads read, and
:func:`load_reward_model` → :class:`RewardModel` (per-head scores, in fp32, no grad)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from aha.config import ConfigError
from aha.data.templates import encode_text
from aha.errors import AhaError, first_line
from aha.rewards.builtin import completion_text
from aha.rewards.support import Support, load_support

ENSEMBLE_FILE = "aha_ensemble.json"
CONFIG_KEY = "aha_reward_model"  # in config.json: {"template", "max_length", "num_heads", "loss"}


# ============================================================================ text → tokens


def rm_template(template: str, tokenizer) -> str:
    """'chat' or 'plain': ``auto`` is chat where the tokenizer has a chat template."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ConfigError("reward_model.template 'chat': this model's tokenizer has no chat template (use 'plain')")
    return "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"


def _messages_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(completion_text([m]) for m in prompt)


def render_text(prompt, completion, tokenizer, template: str) -> str:
    """The one text a reward model scores for ``(prompt, completion)``; ``template`` is 'chat' or 'plain'.

    chat: ``[*prompt messages (a text prompt is one user turn), {"role": "assistant", "content": completion}]``
    through the tokenizer's chat template; plain: the prompt's text followed directly by the completion's.

    >>> render_text("2+2=", "4", None, "plain")
    '2+2=4'
    """
    answer = completion_text(completion)
    if template == "plain":
        return _messages_text(prompt) + answer
    messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)


def encode_for_rm(text: str, tokenizer, max_length: int) -> list[int]:
    """Token ids of ``text`` as ``tokenizer(text)`` gives them, cut to the last ``max_length`` (where the score is read)."""
    ids = encode_text(text, tokenizer)
    if not ids:
        ids = [tokenizer.eos_token_id]  # an empty completion of an empty prompt: score something defined
    return ids[-max_length:]


def pad_batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def pooled_hidden(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``[B, H]``: the trunk's last hidden state at each row's rightmost non-pad token — the position transformers'
    ``*ForSequenceClassification`` reads its score from, so a head applied here gives the same score."""
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    idx = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (idx * (input_ids != pad_id)).argmax(-1)
    return hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model under a peft wrapper (with its LoRA layers in place)."""
    return cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model  # (peft)


# ============================================================================ a trained reward model, for scoring


@dataclass
class RewardModel:
    """A reward model loaded for scoring: ``score(prompts, completions) → [N, heads]`` in fp32, no grad."""

    model: nn.Module
    tokenizer: object
    heads: torch.Tensor  # [num_heads, hidden]; one row (the score head) for a single model
    template: str
    max_length: int
    device: torch.device
    path: Path
    support: Support | None = None  # where its training data was (aha.rewards.support), if saved beside it

    @property
    def num_heads(self) -> int:
        return self.heads.shape[0]

    @torch.no_grad()
    def features_ids(self, seqs: list[list[int]], batch_size: int = 32) -> torch.Tensor:
        """The pooled last hidden states ``[N, hidden]`` (fp32, on the model's device) the heads read, in batches of
        similar length."""
        pad = cast(Any, self.model).config.pad_token_id  # (a transformers model's config)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding; results put back in order
        out = torch.empty(len(seqs), self.heads.shape[1], device=self.device)
        trunk = cast(Any, self.model).base_model
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in part], pad, self.device)
            out[part] = pooled_hidden(trunk, ids, mask, pad).float()
        return out

    @torch.no_grad()
    def heads_of(self, feats: torch.Tensor) -> torch.Tensor:
        """``[N, heads]`` scores of pooled features, on the CPU."""
        return (feats @ self.heads.T).cpu()

    def encode(self, prompt, completion) -> list[int]:
        return encode_for_rm(
            render_text(prompt, completion, self.tokenizer, self.template), self.tokenizer, self.max_length
        )

    def score(self, prompts: list, completions: list, batch_size: int = 32) -> torch.Tensor:
        """``[N, heads]`` scores of ``(prompts[i], completions[i])`` (plain or conversational)."""
        return self.heads_of(self.features(prompts, completions, batch_size))

    def features(self, prompts: list, completions: list, batch_size: int = 32) -> torch.Tensor:
        """``[N, hidden]`` pooled features of ``(prompts[i], completions[i])``."""
        return self.features_ids([self.encode(p, c) for p, c in zip(prompts, completions)], batch_size)


_CACHE: dict[tuple, RewardModel] = {}


class RewardModelError(AhaError, ValueError):
    """A path that is not a loadable reward model (one-line message)."""


def load_reward_model(path: str | Path, device: str | torch.device | None = None) -> RewardModel:
    """Load a reward model directory (written by this stage, or any HF ``*ForSequenceClassification`` with one
    label) in fp32, in eval mode; cached per (directory, its weights' mtime, device)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise RewardModelError(
            f"{path}: not a reward-model directory (no config.json); give the RM stage's "
            "RUN_DIR/model or a checkpoint's model directory"
        )
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))
    key = (str(path.resolve()), stamp, str(device))
    if key in _CACHE:
        return _CACHE[key]
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as e:
        raise RewardModelError(
            f"{path}: could not load it as a sequence-classification model ({first_line(e)})"
        ) from None
    if model.config.num_labels != 1:
        raise RewardModelError(
            f"{path}: a classifier with {model.config.num_labels} labels, not a reward model (1 label)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    meta = getattr(model.config, CONFIG_KEY, None) or {}
    heads = model.score.weight.detach().float()
    if (path / ENSEMBLE_FILE).is_file():
        heads = torch.tensor(json.loads((path / ENSEMBLE_FILE).read_text())["weight"], dtype=torch.float32)
    rm = RewardModel(
        model.to(device).eval(),
        tok,
        heads.to(device),
        rm_template(meta.get("template", "auto"), tok),
        int(meta.get("max_length", 512)),
        device,
        path,
        load_support(path, device),
    )
    _CACHE.clear()  # one reward model held at a time: a run uses one, and they are large
    _CACHE[key] = rm
    return rm
