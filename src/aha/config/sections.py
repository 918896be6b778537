"""Config sections of the model, the task, rewards, sampling, optimisation and SFT (the RL objective and the critic:
:mod:`aha.config.objective`).

Each field carries a description: ``aha config show`` prints them, so the config is the documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aha.errors import AhaError


class ConfigError(AhaError, ValueError):
    """A user-caused configuration problem; its message is one line meant for the terminal."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of names."
    )


class ModelConfig(_Section):
    name: str = Field(
        "tiny",
        description="Policy model: a local HF directory, a .gguf file, the alias 'smollm2-135m', "
        "'tiny' or 'tiny:layers=3,hidden=128,heads=4,ff=512' (built in code, char tokenizer), or 'hf:<hub id>' "
        "(needs a network).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters.")
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template for the tokenizer (as in tokenizer_config"
        ".json), for a model without one or to replace its own; chat prompts and "
        "task.template chat/r1 need one.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the policy's backward pass.")
    lean_activations: bool | Literal["auto"] = Field(
        "auto",
        description="Training passes over completions that share a prompt keep only each layer's matmul outputs for "
        "the backward pass and recompute the element-wise rest (RMSNorm, RoPE, attention softmax, SwiGLU): about half "
        "the activation memory (torch selective activation checkpointing), the same numbers. 'auto': only where the "
        "plain pass's activations (estimated from the model's shape) would fill over a quarter of the GPU's memory or "
        "a 64th of a CPU machine's: it costs a few % of SmolLM2's training pass on a CPU, 1/5 of a tiny model's, "
        "and its per-op dispatch nearly doubled a 0.5B model's pass at 16 × 64 tokens on an H200. At 64 × 256 tokens "
        "that model's GPU peak was 26 GB with it (eager sampler), 42 GB without (compiled sampler).",
    )


REFLECTION_PHRASES = (  # Oat-Zero's keywords, then the ones R1-style traces are known for (task.reflection_phrases)
    "recheck",
    "rethink",
    "re-evaluate",
    "re-examine",
    "try again",
    "check again",
    "think again",
    "go over the steps",
    "wait",
    "alternatively",
    "however",
    "verify",
)


class TaskConfig(_Section):
    name: Literal["arithmetic", "countdown", "dataset", "code"] = Field(
        "arithmetic",
        description="Prompt source: 'arithmetic' and 'countdown' are generated; 'dataset' reads your data from "
        "task.path; 'code': Python function problems run against their tests in a "
        "sandbox (task.path: your own JSONL).",
    )
    path: Path | None = Field(
        None,
        description="dataset: the training data: a .jsonl, .json, .csv or .parquet file, a "
        "directory written by datasets' save_to_disk, or hf:OWNER/NAME[:SPLIT] (needs a network). "
        "A relative path is found next to the config file first, then in the working directory.",
    )
    eval_path: Path | None = Field(
        None,
        description="dataset: held-out data (same formats); default: the last "
        "min(task.num_eval, a fifth of the rows) rows of task.path (the run says how many).",
    )
    prompt_column: str = Field(
        "prompt",
        description="dataset: the column holding the prompt (text, or a list of chat "
        "messages); it also reaches rewards as 'prompts'.",
    )
    answer_column: str = Field(
        "answer",
        description="dataset: the column holding the reference answer. Every column "
        "reaches reward functions under its own name (TRL's convention: solution=[...]); this "
        "one also as 'answer', the built-in accuracy's keyword.",
    )
    answer_match: Literal["auto", "exact", "math"] = Field(
        "auto",
        description="How the built-in accuracy (and so eval/accuracy) compares answers: 'exact' = equal text "
        "(whitespace collapsed, case counts); 'math' = equal numbers, then math-verify (0.5 = 1/2 = \\frac{1}{2}); "
        "'auto' = math where the reference answer reads as mathematics (digits, LaTeX, x+1), else exact (a word, a "
        "reversed string: math-verify would read 'abc' as a·b·c, equal to 'cba').",
    )
    digits: int = Field(2, ge=1, le=12, description="arithmetic: digits per operand.")
    operations: list[Literal["+", "-", "*"]] = Field(["+"], description="arithmetic: operations to draw from.")
    reverse_answer: bool = Field(False, description="arithmetic: answer written least-significant digit first.")
    pad_operands: bool = Field(False, description="arithmetic: zero-pad operands to task.digits (e.g. 007+120=).")
    terms: int | tuple[int, int] = Field(
        2,
        description="arithmetic: operands per problem (2–8): a number, or [lo, hi] drawn per problem (e.g. 3+41+7=; "
        "* binds first). 2 keeps the original two-operand generator (the same rows for a seed).",
    )
    num_numbers: int = Field(3, ge=2, le=6, description="countdown: how many numbers to combine.")
    num_train: int = Field(20000, ge=1, description="Generated tasks: training prompts.")
    num_eval: int = Field(200, ge=1, description="Held-out prompts for eval/accuracy.")
    template: Literal["auto", "plain", "chat", "r1", "r1_plain"] = Field(
        "auto",
        description="How prompts reach the model: 'plain' text; 'chat' via the tokenizer's chat template; "
        "'r1' chat with the R1-Zero <think>/<answer> instruction as the system prompt; 'r1_plain' R1-Zero's text "
        "prompt for a base model ('A conversation between User and Assistant. … User: PROMPT\\nAssistant:', no chat "
        "template); 'auto' = chat if the tokenizer has a template.",
    )
    response_prefix: str = Field(
        "",
        description="Text the model's answer starts with, appended to every prompt (RL "
        "rollouts and eval), e.g. '<think>' as Oat-Zero and TinyZero start R1-Zero's answer "
        "turn: rewards, metrics and samples see it as the completion's first words.",
    )
    seed: int = Field(1234, description="Seed of the generated data (independent of the training seed).")
    reflection_phrases: list[str] = Field(
        list(REFLECTION_PHRASES),
        description="Phrases that count as reflection (whole words, any case, in the model's own text: outside a "
        "copy of the prompt, before the final </answer>): Oat-Zero's keywords plus wait, alternatively, however, "
        "verify.",
    )
    eval_reward: str | None = Field(
        None,
        description="The reward that scores eval (a reward spec, e.g. 'code', "
        "'file.py:fn'; a row counts as right when it scores above 0.5; eval/reward_mean "
        "is its mean); default: the task's own check (accuracy, or code for task code).",
    )

    @field_validator("terms")
    @classmethod
    def _terms_in_range(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 2 <= lo <= hi <= 8:
            raise ValueError("expected a number of operands from 2 to 8, or [lo, hi] with 2 <= lo <= hi <= 8")
        return v


class RewardSpec(_Section):
    name: str = Field(
        ...,
        description="Built-in name (accuracy, think_format, tag_count, overlong, repetition, ...), "
        "'module:function' or 'path/to/file.py:function'.",
    )
    weight: float = Field(1.0, allow_inf_nan=False, description="Weight of this function in the summed reward.")
    label: str | None = Field(
        None,
        pattern=r"^[\w.-]+$",
        description="Its name in the metrics (reward/<label>/mean), "
        "samples and guard.gold/proxy/disagreement; default: the function's name (file.py:fn → fn, "
        "rm:PATH → rm, a built-in → itself).",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments bound to the function (e.g. "
        "{match: exact} for accuracy); for rm:PATH, the reward model's (batch_size, aggregate, "
        "std_coef, device).",
    )


class RolloutConfig(_Section):
    engine: Literal["hf"] = Field(
        "hf",
        description="The sampler (an aha.rollout.Engine): 'hf' = in-process, sharing the "
        "policy's weights (rollout.compile: its compiled variant).",
    )
    group_size: int = Field(8, ge=1, description="G: completions sampled per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also applied to training logits).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(32, ge=1, description="Longest completion, in tokens.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (EOS always stops).")
    max_episode_tokens: int = Field(
        1024,
        ge=1,
        description="Multi-turn episodes (env): most tokens after the prompt, the model's turns and the "
        "environment's answers together; an episode that reaches it ends, truncated.",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="Sample from a copy of the policy with a static KV cache and a torch.compile'd decode step "
        "(on a GPU with CUDA graphs: a 0.5B model's rollout on an H200 ran ×7 faster; on a CPU, SmolLM2: ~45 vs ~62 ms "
        "per token step in bf16 on AMX, 96 vs 108 ms in fp32 on AVX2); a one-off compile of up to a minute or so per "
        "batch size. Not with LoRA. 'auto': on for a CUDA GPU without LoRA (where Triton is installed and the GPU's "
        "compute capability is ≥ 7.0), else off; if its compile fails, it says so and samples eagerly (true: an error).",
    )
    min_new_tokens: int = Field(
        0,
        ge=0,
        description="EOS cannot be sampled before this many tokens (set it to max_new_tokens "
        "for fixed-length completions, e.g. in benchmarks).",
    )
    asynchronous: bool = Field(
        False,
        description="Asynchronous rollouts (distributed.backend: ray): the rollout workers sample the next steps' "
        "batches (up to rl.max_staleness weight versions old) while the trainer updates on this one; the loss is "
        "corrected by truncated importance weights (rl.is_cap, rl.is_level). See docs/async.md.",
    )


class TrainConfig(_Section):
    steps: int = Field(100, ge=1, description="Optimisation steps (RL: rollout batches; SFT: optimizer steps).")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Decay after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimizer steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.99), description="AdamW betas, each in [0, 1)."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
    max_skipped_steps: int = Field(
        3,
        ge=1,
        description="A step whose loss or gradient norm is not finite (NaN, "
        "inf) is skipped (the weights, the optimizer's state and the LR schedule stay as "
        "they were) with a warning, and counted in train/skipped_steps; this many in a row "
        "stop the run.",
    )
    micro_batch_size: int = Field(
        64, ge=1, description="Sequences per forward/backward; the rest is gradient accumulation."
    )
    group_by_length: bool = Field(
        False,
        description="Stages sft and rl: cut each batch (rl: each minibatch of rollouts) into micro-batches of like "
        "lengths, each padded (rl: cut) to its own longest sequence and holding no more tokens than micro_batch_size "
        "of the batch's longest: many short sequences to a micro-batch, few long ones (the gradient is the same, "
        "with less padding and fewer passes: benchmarks/group_by_length.py). Off by default: it changes the order of "
        "float sums, so a run would not repeat one made without it. The reward model's stage pads each micro-batch "
        "to its own longest already.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Examples per optimizer step of the supervised passes: sequences for stage sft and for RL's "
        "sft.imitation_steps, rankings (or pairs) for stage reward_model. RL's own batch is rl.prompts_per_step × "
        "rollout.group_size completions.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="'bf16' = bf16 autocast (fp32 master weights); 'auto' = each phase by measurement "
        "(aha.modeling.precision): sampling in bf16 where a probe, cached per machine, finds the decode step ≥ ×1.15 "
        "faster; training fp32 on a CPU (learning was weaker under bf16); both bf16 on a CUDA GPU with bf16.",
    )
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="Attention kernel of the training passes (the sampler keeps the model's own): 'auto' = eager "
        "on CPU, where torch's flash-attention backward is slow under bf16 (SmolLM2, 16 × 100 tokens: fwd+bwd 2.47 → "
        "1.93 s), the model's own on GPU.",
    )
    seed: int = Field(0, description="Seed for sampling, initialisation and data order.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N' or 'mps' (Apple GPU).",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads of the tensor maths; 0 = auto: the usable cores (affinity, "
        "cgroup quota, OMP_NUM_THREADS) shared evenly with the other aha runs on the machine, rechecked "
        "as they start and end. The AHA_THREADS environment variable overrides it (a count, or 'off' = "
        "torch's defaults).",
    )


class SFTConfig(_Section):
    path: Path | None = Field(
        None,
        description="stage sft: demonstrations, prompt + completion columns or TRL's "
        "conversational 'messages' (the last assistant message is the completion), in any format "
        "task.path takes (.jsonl, .json, .csv, .parquet, a save_to_disk directory, hf:OWNER/NAME).",
    )
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    completion_column: str = Field("completion", description="Column holding the target completion.")
    imitation_steps: int = Field(
        0,
        ge=0,
        description="RL stages: first imitate the task's reference answers for this "
        "many SFT steps (so a model built from scratch produces answers RL can rank); the KL "
        "reference is the model after them. Formerly sft.warmup_steps (not the LR warm-up, "
        "train.warmup_steps).",
    )
    imitation_lr: float = Field(
        1e-3, gt=0, description="Learning rate of the imitation steps (formerly sft.warmup_lr)."
    )
