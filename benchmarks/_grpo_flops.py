"""What a GRPO step costs in FLOPs, and the speeds that bound it: the matmul peak (MFU's denominator), one decode
step's matmuls, and aha's floor (its FLOPs at that peak) on this machine."""

from __future__ import annotations

import time

from _grpo_runs import prompts


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


def auto_precision(path: str) -> tuple[str, dict]:
    """What aha's ``train.precision: auto`` chooses for this model on this machine, measured afresh (no cache): its
    line and the probe's seconds."""
    import torch

    from aha.config import ModelConfig
    from aha.modeling.precision import choose
    from aha.models import load_policy

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_policy(ModelConfig(name=path))
    choice = choose("auto", device, model.to(device))
    return choice.line, choice.probe
