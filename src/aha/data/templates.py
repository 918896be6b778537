"""How a task's prompt text becomes the token ids the model sees."""

from __future__ import annotations

from aha.config import ConfigError
from aha.data.load import DataError
from aha.errors import first_line

R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)

R1_PLAIN = R1_SYSTEM + " User: {prompt}\nAssistant:"  # R1-Zero's text prompt, for a base model (no chat template)


def resolve_template(template: str, tokenizer) -> str:
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template in ("chat", "r1") and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"task.template {template!r}: this model's tokenizer has no chat template (use 'plain')")
    return template


def encode_text(text: str, tokenizer) -> list[int]:
    """Token ids of ``text`` (no special tokens). Text the tokenizer cannot encode — a character outside a tiny
    model's vocabulary, which has no unknown token — is a one-line :class:`~aha.tasks.DataError`."""
    try:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception as e:  # the tokenizers library raises a bare Exception ("WordLevel error: Missing [UNK] …")
        vocab = tokenizer.get_vocab()
        unknown = "".join(sorted({c for c in text if c not in vocab}))
        raise DataError(
            f"{text[:60]!r} cannot be tokenized by this model's tokenizer"
            + (f": it has no token for {unknown!r}" if unknown else f" ({first_line(e)})")
            + " (a tiny model knows only its task's characters)"
        ) from None


def encode_texts(texts: list[str], tokenizer) -> list[list[int]]:
    """:func:`encode_text` of each of ``texts``, the distinct ones in one batched call of the tokenizer (much faster on
    a dataset than one call each); text it cannot encode is the same one-line error."""
    distinct = list(dict.fromkeys(texts))
    try:
        ids = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    except Exception:  # one of them cannot be encoded: say which, in encode_text's words
        ids = [encode_text(t, tokenizer) for t in distinct]
    by_text = dict(zip(distinct, ids))
    return [list(by_text[t]) for t in texts]


def check_prompts(rows: list[dict], tokenizer, char_level: bool = False) -> None:
    """Fail before training, in one line, on prompts this model cannot take: chat messages where its tokenizer has
    no chat template, or (``char_level``: a tiny model's character tokenizer) text it has no token for."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    for i, row in enumerate(rows, 1):
        if isinstance(row.get("prompt"), list) and not has_chat:
            raise ConfigError(
                f"row {i}: the prompt is a list of chat messages, but this model's tokenizer has no chat "
                "template: use a chat model (e.g. model.name=smollm2-135m) or text prompts"
            )
    if char_level:
        encode_texts([row["prompt"] for row in rows if isinstance(row.get("prompt"), str)], tokenizer)


def render_prompt(prompt: str | list, tokenizer, template: str, response_prefix: str = "") -> list[int]:
    """Token ids for one prompt. ``template`` is already resolved ('plain', 'chat', 'r1' or 'r1_plain').

    Conversational prompts (lists of messages) go through the chat template, except under 'r1_plain', which puts
    the last user message into R1-Zero's text prompt (:data:`R1_PLAIN`). ``response_prefix`` (``task.response_prefix``,
    e.g. ``<think>``) is appended: the model's answer continues from it.
    """
    prefix = encode_text(response_prefix, tokenizer) if response_prefix else []
    return _render(prompt, tokenizer, template) + prefix


def _render(prompt: str | list, tokenizer, template: str) -> list[int]:
    if template == "plain" and isinstance(prompt, str):
        return encode_text(prompt, tokenizer)
    if template == "r1_plain":
        if isinstance(prompt, list):
            prompt = next((m.get("content", "") for m in reversed(prompt) if m.get("role") == "user"), "")
        return encode_text(R1_PLAIN.format(prompt=prompt), tokenizer)
    if not getattr(tokenizer, "chat_template", None):  # (check_prompts says so before a run; SFT data meets it here)
        raise ConfigError(
            "a prompt is a list of chat messages, but this model's tokenizer has no chat template: use "
            "a chat model (e.g. model.name=smollm2-135m), set model.chat_template, or use text prompts"
        )
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if template == "r1" and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": R1_SYSTEM}, *messages]
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # a character the tokenizer has no token for (a bare Exception), a template that raises
        raise DataError(
            f"{str(prompt)[:60]!r}: the model's chat template and tokenizer cannot encode this prompt ({first_line(e)})"
        ) from None
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)
