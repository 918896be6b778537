"""Trainer options end to end, each on 2–3 steps of the tiny config: LoRA (frozen base, KL to the
adapter-free model, a merged checkpoint), DAPO dynamic sampling, GSPO with every loss aggregation, and
masking truncated completions; what the 'auto' options resolve to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import aha.build
import aha.rl.optimize
from aha.config import load_config
from aha.rl import train_rl
from aha.track.metrics import read_metrics


def steps_of(run_dir: Path) -> list[dict]:
    """Metric rows of the training steps (step 0 only holds the initial eval)."""
    return [r for r in read_metrics(run_dir) if r["step"] > 0]


@pytest.fixture
def capture_policy(monkeypatch):
    """Keeps the policy train_rl builds (the trained object itself) and a copy of its starting weights."""
    box: dict = {}
    real = aha.build.load_policy

    def load_and_keep(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        box["model"] = model
        box["start"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model, tok

    monkeypatch.setattr(aha.build, "load_policy", load_and_keep)
    return box


# ─────────────────────────────── LoRA ───────────────────────────────


def test_lora_trains_only_adapters_and_saves_a_merged_model(tmp_path, write_config, digits_reward, capture_policy):
    cfg = load_config(
        write_config(
            {"rewards": [{"name": digits_reward}], "model": {"lora": {"enabled": True, "r": 4}}, "rl": {"beta": 0.04}}
        )
    )
    run = tmp_path / "run"
    train_rl(cfg, run)
    policy, start = capture_policy["model"], capture_policy["start"]

    lora = [n for n, _ in policy.named_parameters() if "lora_" in n]
    assert lora
    for name, p in policy.named_parameters():
        if "lora_" in name:
            assert not torch.equal(p, start[name]), f"{name} did not train"
        else:
            assert torch.equal(p, start[name]), f"base weight {name} moved"

    # the reference is the adapter-free model: equal to the policy at step 1 (lora_B starts at 0), apart after
    rows = steps_of(run)
    kls = [r["kl"] for r in rows]
    assert all(k is not None and math.isfinite(k) for k in kls), kls
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 0

    # the checkpoint is a plain HF model with the adapters merged in
    model_dir = run / "checkpoints" / "step-2" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert not hasattr(plain, "peft_config")
    ids = torch.tensor([[3, 4, 12, 5, 6, 13, 7, 8], [5, 6, 7, 8, 9, 10, 11, 2]])
    policy.eval()
    with torch.no_grad():
        trained, merged = policy(input_ids=ids).logits, plain(input_ids=ids).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids).logits
    assert torch.allclose(merged, trained, atol=1e-4), (merged - trained).abs().max()
    assert (trained - base).abs().max() > 1e-2  # so the match above is not the base model matching itself


# ─────────────────────────────── dynamic sampling ───────────────────────────────

# Prompts starting with an even digit give the whole group the same reward (no learning signal); the others
# a random value per sample. Python's `random` is seeded by the trainer, so the run is reproducible.
PARITY_REWARD = (
    "import random\n"
    "def parity(prompts, completions, **kw):\n"
    "    return [1.0 if int(p[0]) % 2 == 0 else random.random() for p in prompts]\n"
)


def test_dynamic_sampling_resamples_until_every_group_has_signal(tmp_path, write_config):
    reward = tmp_path / "parity.py"
    reward.write_text(PARITY_REWARD)
    G, P = 4, 4
    cfg = load_config(
        write_config(
            {
                "rewards": [{"name": f"{reward}:parity"}],
                "rl": {"dynamic_sampling": True},
                "log": {"samples_per_step": G * P},
            }
        )
    )
    run = tmp_path / "run"
    train_rl(cfg, run)

    rows = steps_of(run)
    assert any(r["frac_reward_zero_std"] > 0 for r in rows)  # the first round did draw groups without signal
    assert any(r["dynamic_sampling/rounds"] > 1 for r in rows), [r["dynamic_sampling/rounds"] for r in rows]

    # samples.jsonl holds the whole training batch (G × P rows): only groups whose rewards differ
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for step in (1, 2):
        batch = [s for s in samples if s["step"] == step]
        assert len(batch) == G * P
        for g in range(P):
            group = batch[g * G : (g + 1) * G]
            assert len({s["prompt"] for s in group}) == 1
            assert int(group[0]["prompt"][0]) % 2 == 1, group[0]["prompt"]
            rewards = [s["reward"] for s in group]
            assert max(rewards) - min(rewards) > 1e-6, rewards


def test_dynamic_sampling_step_without_signal_skips_the_update_but_still_evals_and_saves(
    tmp_path, write_config, capture_policy
):
    """A reward every completion shares: no round ever finds a group with signal. Each step gives up after
    1 + max_resample_rounds rounds without touching the weights, and the run still ends with its final eval
    and checkpoint (the weights it started from)."""
    reward = tmp_path / "const.py"
    reward.write_text("def const(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    cfg = load_config(
        write_config(
            {"rewards": [{"name": f"{reward}:const"}], "rl": {"dynamic_sampling": True, "max_resample_rounds": 2}}
        )
    )
    run = tmp_path / "run"
    train_rl(cfg, run)

    rows = steps_of(run)
    assert [r["dynamic_sampling/rounds"] for r in rows] == [3, 3]
    assert all("loss/policy" not in r for r in rows)
    assert "eval/accuracy" in rows[-1]
    saved = load_file(run / "checkpoints" / "step-2" / "model" / "model.safetensors")
    for name, start in capture_policy["start"].items():
        assert torch.equal(saved[name], start), name


# ─────────────────────────────── GSPO × loss aggregations ───────────────────────────────


def test_gspo_with_each_loss_type_clips_on_the_second_pass(tmp_path, write_config, digits_reward):
    """μ = 2 at a high learning rate: the second pass's sequence ratios leave [0.8, 1.2], so the clip engages.
    Step 1's completions all have 3 tokens, where the four aggregations agree, so every run samples the same
    step-2 batch; there they differ as the lengths do (bnpo = dapo with one micro-batch). A per-token-ratio
    run on the same batch tells that the sequence level is really in use. (Seed 1: its step-2 lengths vary;
    with some seeds every step-2 completion runs to the limit and dr_grpo = dapo there.)"""

    def run(level: str, loss_type: str) -> list[dict]:
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "train": {"lr": 0.05, "seed": 1},
                    "rl": {"importance_sampling_level": level, "mu": 2, "loss_type": loss_type},
                }
            )
        )
        train_rl(cfg, tmp_path / f"{level}-{loss_type}")
        return steps_of(tmp_path / f"{level}-{loss_type}")

    step1, step2 = {}, {}
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        rows = run("sequence", loss_type)
        assert len(rows) == 2
        assert all(r["loss/policy"] is not None and math.isfinite(r["loss/policy"]) for r in rows), (loss_type, rows)
        assert any(r["clip_ratio"] > 0 for r in rows), (loss_type, [r["clip_ratio"] for r in rows])
        step1[loss_type], step2[loss_type] = rows[0]["loss/policy"], rows[1]["loss/policy"]
    assert step2["bnpo"] == pytest.approx(step2["dapo"], abs=1e-6)
    assert step2["grpo"] != pytest.approx(step2["dapo"], abs=1e-4)
    assert step2["dr_grpo"] != pytest.approx(step2["dapo"], abs=1e-4)
    # the same batch with per-token ratios: the second pass's loss, hence step 1's mean, differs
    assert run("token", "grpo")[0]["loss/policy"] != pytest.approx(step1["grpo"], abs=1e-4)


# ─────────────────────────────── mask_truncated ───────────────────────────────


def test_mask_truncated_drops_every_cut_completion_from_the_loss(tmp_path, write_config, digits_reward):
    """One new token: a completion is truncated unless that token is EOS. On a step where all of them are
    truncated no token contributes (loss and gradient exactly 0); one EOS completion is enough to bring
    the gradient back. Without masking, the same first step (same seed, same rollouts) has a gradient.
    (Seed 1 gives both kinds of step within 3; the assertions below say so if a sampler change breaks that.)"""

    def run(mask_truncated: bool, steps: int) -> list[dict]:
        cfg = load_config(
            write_config(
                {
                    "rewards": [{"name": digits_reward}],
                    "rollout": {"max_new_tokens": 1},
                    "rl": {"mask_truncated": mask_truncated},
                    "train": {"steps": steps, "seed": 1},
                }
            )
        )
        train_rl(cfg, tmp_path / f"masked-{mask_truncated}")
        return steps_of(tmp_path / f"masked-{mask_truncated}")

    masked = run(True, 3)
    all_cut = [r for r in masked if r["completions/clipped_ratio"] == 1.0]
    some_stopped = [r for r in masked if r["completions/clipped_ratio"] < 1.0]
    assert all_cut and some_stopped, [r["completions/clipped_ratio"] for r in masked]
    for r in all_cut:
        assert r["grad_norm"] == 0.0 and r["loss/policy"] == 0.0, r
    for r in some_stopped:
        assert r["grad_norm"] > 0, r

    assert masked[0] in all_cut
    unmasked = run(False, 1)
    assert unmasked[0]["completions/clipped_ratio"] == 1.0 and unmasked[0]["grad_norm"] > 0


@pytest.mark.parametrize(
    "overrides, want_lean, want_compiled",
    [
        ({}, False, False),  # 'auto' on a CPU: a tiny model's activations are small, so not lean; the eager sampler
        ({"model": {"lean_activations": True}}, True, False),
        ({"model": {"lean_activations": False}, "rollout": {"compile": True}}, False, True),
    ],
)
def test_auto_options_resolve_for_the_device_and_explicit_values_win(
    tmp_path, write_config, digits_reward, monkeypatch, overrides, want_lean, want_compiled
):
    """model.lean_activations and rollout.compile default to 'auto' (on a CPU: lean where activations are large, no
    compiled sampler; the memory rules are tested below with stand-ins); an explicit true/false is what the trainer
    uses."""
    import aha.build
    import aha.modeling.options
    from aha.rollout.hf import HFEngine

    monkeypatch.setattr(aha.modeling.options, "machine_memory", lambda: 24 * 2**30)  # (this machine's, not CI's)
    leans, built = [], []
    real_forward = aha.rl.optimize.policy_forward

    def spy_forward(*args, **kwargs):
        leans.append(kwargs.get("lean"))
        return real_forward(*args, **kwargs)

    class SpyCompiled(HFEngine):  # stands in for the compiled sampler (whose compile would take seconds here)
        def __init__(self, *args, fallback: bool, **kwargs):
            built.append(fallback)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(aha.rl.optimize, "policy_forward", spy_forward)
    monkeypatch.setattr(aha.build, "CompiledEngine", SpyCompiled)  # where the engine is built
    cfg = load_config(write_config({"rewards": [{"name": digits_reward}], "train": {"steps": 1}, **overrides}))
    train_rl(cfg, tmp_path / "run")
    assert set(leans) == {want_lean} and bool(built) == want_compiled
    assert built in ([], [False])  # asked for explicitly: a failed compile is an error, not a quiet fallback


def test_lean_auto_turns_on_only_where_activations_would_fill_a_quarter_of_the_card_or_a_64th_of_the_ram(
    monkeypatch,
):
    """'auto' weighs the estimated activations against the GPU's memory (a stand-in card here: CI has none) or the
    CPU machine's (a stand-in RAM). An explicit value is used as given, and an unknown model shape is lean."""
    from types import SimpleNamespace

    import aha.modeling.options
    from aha.modeling.options import lean_activations

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=24, hidden_size=896, intermediate_size=4864))
    assert lean_activations(False, model, cpu, 10**6, None) is False and lean_activations(True, model, gpu, 1, None)
    smollm2 = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536))
    monkeypatch.setattr(aha.modeling.options, "machine_memory", lambda: 24 * 2**30)  # 0.375 GiB a 64th
    assert lean_activations("auto", smollm2, cpu, 16 * 64, None) is True  # ~1.46 GB estimated (1.49 measured)
    assert lean_activations("auto", smollm2, cpu, 4 * 32, None) is False  # ~0.18 GB
    think = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=3, hidden_size=128, intermediate_size=512))
    assert lean_activations("auto", think, cpu, 64 * 60, None) is False  # a think-demo RL micro-batch: ~0.15 GB
    monkeypatch.setattr(aha.modeling.options, "machine_memory", lambda: 0)  # the OS does not say
    assert lean_activations("auto", think, cpu, 16, None) is True
    assert lean_activations("auto", SimpleNamespace(), cpu, 1, None) is True

    def card(gib: float):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=gib * 2**30))

    tokens = 64 * 296  # the 0.5B benchmark's 64 × 256 completions after a 40-token prompt: ~32 GB estimated in bf16
    card(139)  # an H200: it fits in a quarter
    assert lean_activations("auto", model, gpu, tokens, torch.bfloat16) is False
    assert lean_activations("auto", model, gpu, 16 * 100, torch.bfloat16) is False
    card(80)  # an H100: over a quarter
    assert lean_activations("auto", model, gpu, tokens, torch.bfloat16) is True
    card(139)  # fp32 activations take more room than bf16's mix
    assert lean_activations("auto", model, gpu, 2 * tokens, None) is True
    assert lean_activations("auto", SimpleNamespace(), gpu, 1, None) is True


def test_machine_memory_is_the_lower_of_the_machines_and_its_containers(tmp_path):
    """A cgroup limit below the machine's memory is what the process may use; "max" (no limit) or no file is not."""
    from aha.modeling.options import machine_memory

    whole = machine_memory(limits=())
    assert whole > 0
    (tmp_path / "v2").write_text("max\n")
    (tmp_path / "v1").write_text(f"{2**30}\n")
    assert machine_memory(limits=(str(tmp_path / "v2"), str(tmp_path / "missing"))) == whole
    assert machine_memory(limits=(str(tmp_path / "v2"), str(tmp_path / "v1"))) == min(whole, 2**30)


def test_compiled_sampler_auto_needs_a_gpu_torch_compile_can_build_for(monkeypatch):
    """rollout.compile 'auto': off on a CPU and under LoRA; on a CUDA GPU only with Triton and compute capability
    ≥ 7.0 (stand-ins here: CI has no GPU). An explicit value is used as given."""
    import importlib.util

    from aha.modeling.options import compiled_sampler

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert compiled_sampler("auto", cpu, False) is False and compiled_sampler(True, cpu, False) is True
    assert compiled_sampler(False, gpu, False) is False
    real_find_spec = importlib.util.find_spec

    def setup(capability, triton: bool):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: capability)
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: (object() if triton else None) if name == "triton" else real_find_spec(name, *a),
        )

    setup((9, 0), True)
    assert compiled_sampler("auto", gpu, False) is True
    assert compiled_sampler("auto", gpu, True) is False  # LoRA
    setup((6, 0), True)
    assert compiled_sampler("auto", gpu, False) is False
    setup((9, 0), False)
    assert compiled_sampler("auto", gpu, False) is False
