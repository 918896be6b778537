"""Run configuration: pydantic models, one per stage, loaded from YAML plus ``--set a.b=c`` overrides.

Every field carries a description; ``aha config show`` prints them, so the config is the documentation.
A wrong field ends in one line naming it and what is allowed (:class:`ConfigError`), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aha.errors import AhaError, first_line
from aha.track.reasoning import REFLECTION_PHRASES


class ConfigError(AhaError, ValueError):
    """A user-caused configuration problem; its message is one line meant for the terminal."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field("all-linear", description="Modules to adapt: 'all-linear' or a list of names.")


class ModelConfig(_Section):
    name: str = Field(
        "tiny",
        description="Policy model: a local HF directory, a .gguf file, the alias 'smollm2-135m', "
        "'tiny' or 'tiny:layers=3,hidden=128,heads=4,ff=512' (built in code, char tokenizer), or 'hf:<hub id>' "
        "(needs a network).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters.")
    chat_template: str | None = Field(None, description="A Jinja chat template for the tokenizer (as in tokenizer_config"
                                      ".json), for a model without one or to replace its own; chat prompts and "
                                      "task.template chat/r1 need one.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the policy's backward pass.")
    lean_activations: bool | Literal["auto"] = Field(
        "auto",
        description="Training passes over completions that share a prompt keep only each layer's matmul outputs for "
        "the backward pass and recompute the element-wise rest (RMSNorm, RoPE, attention softmax, SwiGLU): about half "
        "the activation memory (torch selective activation checkpointing). 'auto': on a CPU, where it costs a few % "
        "of the training pass (SmolLM2); on a GPU only where the plain pass's activations would fill over a quarter "
        "of the card (estimated from the model's shape), since there its per-op dispatch nearly doubled a 0.5B "
        "model's training pass at 16 × 64 tokens (H200). At 64 × 256 tokens that model's GPU peak was 26 GB with it "
        "(eager sampler), 42 GB without (compiled sampler).")


class TaskConfig(_Section):
    name: Literal["arithmetic", "countdown", "jsonl", "dataset", "code"] = Field(
        "arithmetic", description="Prompt source: 'arithmetic' and 'countdown' are generated; 'dataset' (or its older "
        "name 'jsonl') reads your data from task.path; 'code': Python function problems run against their tests in a "
        "sandbox (task.path: your own JSONL)."
    )
    path: Path | None = Field(None, description="dataset: the training data: a .jsonl, .json, .csv or .parquet file, a "
                              "directory written by datasets' save_to_disk, or hf:OWNER/NAME[:SPLIT] (needs a network). "
                              "A relative path is found next to the config file first, then in the working directory.")
    eval_path: Path | None = Field(None, description="dataset: held-out data (same formats); default: the last "
                                   "min(task.num_eval, a fifth of the rows) rows of task.path (the run says how many).")
    prompt_column: str = Field("prompt", description="dataset: the column holding the prompt (text, or a list of chat "
                               "messages); it also reaches rewards as 'prompts'.")
    answer_column: str = Field("answer", description="dataset: the column holding the reference answer. Every column "
                               "reaches reward functions under its own name (TRL's convention: solution=[...]); this "
                               "one also as 'answer', the built-in accuracy's keyword.")
    answer_match: Literal["auto", "exact", "math"] = Field(
        "auto", description="How the built-in accuracy (and so eval/accuracy) compares answers: 'exact' = equal text "
        "(whitespace collapsed, case counts); 'math' = equal numbers, then math-verify (0.5 = 1/2 = \\frac{1}{2}); "
        "'auto' = math where the reference answer reads as mathematics (digits, LaTeX, x+1), else exact (a word, a "
        "reversed string: math-verify would read 'abc' as a·b·c, equal to 'cba').")
    digits: int = Field(2, ge=1, le=12, description="arithmetic: digits per operand.")
    operations: list[Literal["+", "-", "*"]] = Field(["+"], description="arithmetic: operations to draw from.")
    reverse_answer: bool = Field(False, description="arithmetic: answer written least-significant digit first.")
    pad_operands: bool = Field(False, description="arithmetic: zero-pad operands to task.digits (e.g. 007+120=).")
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
    response_prefix: str = Field("", description="Text the model's answer starts with, appended to every prompt (RL "
                                 "rollouts and eval), e.g. '<think>' as Oat-Zero and TinyZero start R1-Zero's answer "
                                 "turn: rewards, metrics and samples see it as the completion's first words.")
    seed: int = Field(1234, description="Seed of the generated data (independent of the training seed).")


class RewardSpec(_Section):
    name: str = Field(..., description="Built-in name (accuracy, think_format, tag_count, overlong, repetition, ...), "
                      "'module:function' or 'path/to/file.py:function'.")
    weight: float = Field(1.0, allow_inf_nan=False, description="Weight of this function in the summed reward.")
    label: str | None = Field(None, pattern=r"^[\w.-]+$", description="Its name in the metrics (reward/<label>/mean), "
                              "samples and guard.gold/proxy/disagreement; default: the function's name (file.py:fn → fn, "
                              "rm:PATH → rm, a built-in → itself).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments bound to the function (e.g. "
                                 "{match: exact} for accuracy); for rm:PATH, the reward model's (batch_size, aggregate, "
                                 "std_coef, device).")


class RolloutConfig(_Section):
    engine: Literal["hf"] = Field("hf", description="The sampler (an aha.rollout.Engine): 'hf' = in-process, sharing the "
                                  "policy's weights (rollout.compile: its compiled variant).")
    group_size: int = Field(8, ge=1, description="G: completions sampled per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also applied to training logits).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(32, ge=1, description="Longest completion, in tokens.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (EOS always stops).")
    compile: bool | Literal["auto"] = Field(
        "auto", description="Sample from a copy of the policy with a static KV cache and a torch.compile'd decode step "
        "(on a GPU with CUDA graphs: a 0.5B model's rollout on an H200 ran ×7 faster; on a CPU, SmolLM2: ~45 vs ~62 ms "
        "per token step in bf16 on AMX, 96 vs 108 ms in fp32 on AVX2); a one-off compile of up to a minute or so per "
        "batch size. Not with LoRA. 'auto': on for a CUDA GPU without LoRA (where Triton is installed and the GPU's "
        "compute capability is ≥ 7.0), else off; if its compile fails, it says so and samples eagerly (true: an error).")
    min_new_tokens: int = Field(0, ge=0, description="EOS cannot be sampled before this many tokens (set it to max_new_tokens "
                                "for fixed-length completions, e.g. in benchmarks).")


class RLConfig(_Section):
    algo: str = Field(
        "grpo", description="Advantage estimator (registered in aha.algos.advantages): grpo (group-relative), rloo "
        "(leave-one-out), reinforce++ (returns with a token-level KL penalty, whitened over the batch), "
        "reinforce++_baseline (group mean subtracted first), ppo (a critic + GAE; see the critic section). KL to the "
        "reference goes into the loss for grpo, into the reward for the others.")
    policy_loss: str = Field("clip", description="Policy loss (registered in aha.algos.losses): 'clip' = the clipped "
                             "surrogate of PPO / GRPO / DAPO / GSPO; 'cispo' = MiniMax-M1's CISPO, −sg(clip(ρ, "
                             "1−epsilon_low, 1+epsilon_high))·A·log π: the clip bounds each token's weight instead of "
                             "dropping its gradient (the paper sets no lower bound, epsilon_low: 1.0, and tunes "
                             "epsilon_high; μ > 1 is where it differs from the clip).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per step; the batch holds prompts_per_step × group_size completions.")
    mu: int = Field(1, ge=1, description="μ: optimisation passes (PPO epochs) over each batch of rollouts (the ratio departs "
                    "from 1 after the first optimizer step).")
    num_minibatches: int = Field(1, ge=1, description="Optimizer steps per pass: the batch is split into this many shuffled "
                                 "minibatches (PPO-style); 1 = one step per pass over the whole batch.")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the reference model (0 = no reference model kept).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator (Schulman's k1/k2/k3).")
    epsilon_low: float = Field(0.2, ge=0, description="Clip range below 1 for the ratio.")
    epsilon_high: float | None = Field(None, ge=0, description="Clip range above 1 (DAPO clip-higher, e.g. 0.28); default = epsilon_low.")
    dual_clip: float | None = Field(None, gt=1, description="PPO's dual clip (Ye et al. 2020; 3 is typical): where the "
                                    "advantage is negative a token's clipped-surrogate loss is at most dual_clip × |A| "
                                    "(a token whose ratio soared cannot dominate the batch); None = off. Policy loss "
                                    "'clip' only.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="Loss aggregation: grpo = per-sequence mean; bnpo/dapo = token mean over the batch; "
        "dr_grpo = token sum / (sequences × max_new_tokens). Left unset it is dapo, or grpo (the mean over "
        "sequences, GSPO's objective) with importance_sampling_level: sequence, where a token mean would weigh each "
        "sequence by its length.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group std ('group', GRPO), the batch std, or not at all (Dr. GRPO).")
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="'sequence' = GSPO's length-normalised sequence ratio (its paper's clip range is far "
        "narrower, e.g. epsilon_low 3e-4, epsilon_high 4e-4); loss_type then defaults to grpo (a mean over sequences).")
    mask_truncated: bool = Field(False, description="Exclude completions cut at max_new_tokens from the loss (DAPO).")
    dynamic_sampling: bool = Field(False, description="Drop groups whose rewards all agree and sample more prompts (DAPO).")
    max_resample_rounds: int = Field(3, ge=0, description="Dynamic sampling: extra sampling rounds per step at most.")
    old_logprobs: Literal["auto", "sampler", "recompute"] = Field(
        "auto", description="Old-policy logprobs for μ>1: the sampler's own (free; exact in fp32), a separate no-grad "
        "pass, or 'auto' = recompute under bf16 (cached decoding and a full pass round differently: ~0.03 nats/token).")
    gamma: float = Field(1.0, ge=0, le=1, description="ppo / reinforce++: discount over completion tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="ppo: GAE λ (1 = Monte-Carlo returns, 0 = one-step TD).")
    whiten_advantages: bool = Field(True, description="ppo: normalise advantages over the batch's tokens (mean 0, std 1).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus: subtract entropy_coef × mean token entropy from the loss.")
    reward_on_error: Literal["raise", "skip"] = Field(
        "raise", description="A reward function that raises: stop the run naming it, or give that sample no opinion (None).")

    @model_validator(mode="before")
    @classmethod
    def _default_aggregation(cls, data: Any) -> Any:
        """GSPO's objective is a mean over sequences: an unset loss_type follows importance_sampling_level."""
        if isinstance(data, dict) and data.get("loss_type") is None and data.get("importance_sampling_level") == "sequence":
            data = {**data, "loss_type": "grpo"}
        return data


class CriticConfig(_Section):
    kind: Literal["separate", "head"] = Field(
        "separate", description="ppo: 'separate' = its own backbone (a copy of the policy's trunk or a reward model) plus a "
        "value head; 'head' = a value head on the policy's own trunk (one forward pass, shared gradients).")
    init_from: str = Field("policy", description="ppo, separate critic: 'policy' (the policy RL starts from) or a local HF "
                           "directory of a reward model (sequence classification; its score head becomes the value head).")
    lr: float | None = Field(None, gt=0, description="Critic learning rate (default: train.lr).")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss in the total loss.")
    clip_range: float | None = Field(0.2, gt=0, description="Value clipping around the old values (None = no clipping).")


class TrainConfig(_Section):
    steps: int = Field(100, ge=1, description="Optimisation steps (RL: rollout batches; SFT: optimizer steps).")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Decay after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimizer steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.99), description="AdamW betas, each in [0, 1).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
    max_skipped_steps: int = Field(3, ge=1, description="A step whose loss or gradient norm is not finite (NaN, "
                                   "inf) is skipped (the weights, the optimizer's state and the LR schedule stay as "
                                   "they were) with a warning, and counted in train/skipped_steps; this many in a row "
                                   "stop the run.")
    micro_batch_size: int = Field(64, ge=1, description="Sequences per forward/backward; the rest is gradient accumulation.")
    batch_size: int = Field(64, ge=1, description="SFT: sequences per optimizer step.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'bf16' = bf16 autocast (fp32 master weights); 'auto' = bf16 where the CPU/GPU has fast bf16.")
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="Attention kernel of the training passes (the sampler keeps the model's own): 'auto' = eager "
        "on CPU, where torch's flash-attention backward is slow under bf16 (SmolLM2, 16 × 100 tokens: fwd+bwd 2.47 → "
        "1.93 s), the model's own on GPU.")
    seed: int = Field(0, description="Seed for sampling, initialisation and data order.")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                        description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N' or 'mps' (Apple GPU).")
    threads: int = Field(0, ge=0, description="CPU threads of the tensor maths; 0 = auto: the usable cores (affinity, "
                         "cgroup quota, OMP_NUM_THREADS) shared evenly with the other aha runs on the machine, rechecked "
                         "as they start and end. The AHA_THREADS environment variable overrides it (a count, or 'off' = "
                         "torch's defaults).")


class SFTConfig(_Section):
    path: Path | None = Field(None, description="stage sft: demonstrations, prompt + completion columns or TRL's "
                              "conversational 'messages' (the last assistant message is the completion), in any format "
                              "task.path takes (.jsonl, .json, .csv, .parquet, a save_to_disk directory, hf:OWNER/NAME).")
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    completion_column: str = Field("completion", description="Column holding the target completion.")
    imitation_steps: int = Field(0, ge=0, description="RL stages: first imitate the task's reference answers for this "
                                 "many SFT steps (so a model built from scratch produces answers RL can rank); the KL "
                                 "reference is the model after them. Formerly sft.warmup_steps (not the LR warm-up, "
                                 "train.warmup_steps).")
    imitation_lr: float = Field(1e-3, gt=0, description="Learning rate of the imitation steps (formerly sft.warmup_lr).")


class RewardModelConfig(_Section):
    path: Path | None = Field(None, description="stage reward_model: preference data — rankings {prompt, completions, "
                              "ranking (indices best-first, ties as nested lists)} or TRL pairs {prompt, chosen, "
                              "rejected} — as .jsonl, .json, .parquet or a datasets save_to_disk directory.")
    eval_path: Path | None = Field(None, description="Held-out preference data; default: the last eval_fraction of the "
                                   "rows of path.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of path's rows held out when eval_path is not set "
                                 "(at least one row).")
    loss: Literal["bt", "pl"] = Field("bt", description="'bt' = Bradley-Terry on every ordered pair a ranking implies "
                                      "(each ranking weighted once in total); 'pl' = Plackett-Luce on the whole ranking "
                                      "(listwise; ties share a position, Breslow). On pairs the two are the same.")
    margin: float = Field(0.0, ge=0, description="bt: the better completion must win by this much: −log σ(r_b − r_w − "
                          "margin).")
    center_coef: float = Field(0.0, ge=0, description="Reward centering: add center_coef × mean over rankings of (their "
                               "mean score)², so scores stay near 0 per prompt (TRL's center_rewards_coefficient c on "
                               "pairs is center_coef = 4c).")
    num_heads: int = Field(1, ge=1, le=64, description="Ensemble: scalar heads on one trunk, each initialised "
                           "differently and trained on its own Poisson(1) bootstrap weighting of every batch. The "
                           "saved score head is their mean (what plain transformers returns); the heads themselves go "
                           "to aha_ensemble.json beside it, for the rm: reward's mean − std_coef·std and disagreement.")
    bootstrap: bool = Field(True, description="Ensemble (num_heads > 1): each head weighs every ranking by its own "
                            "Poisson(1) draw (online bootstrap); false = every head sees the same data.")
    template: Literal["auto", "plain", "chat"] = Field(
        "auto", description="How prompt + completion become one text: 'chat' = the tokenizer's chat template (user "
        "turn, assistant turn); 'plain' = the prompt's text followed by the completion's; 'auto' = chat where the "
        "tokenizer has a template. Saved with the model, so the rm: reward scores the same way.")
    max_length: int = Field(512, ge=8, description="Longest input in tokens; a longer one keeps its last max_length "
                            "tokens (the completion's end, where the score is read).")
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the scalar head(s) (default: train.lr).")


class GuardConfig(_Section):
    """The reward-hacking guard (aha.guard): watches every RL step's metrics and stops or rolls back."""

    enabled: bool = Field(False, description="Watch the run for reward hacking (KL budget, gold vs proxy, ensemble "
                          "disagreement) and act as guard.action says. The trainer then measures KL to a frozen copy of "
                          "the starting policy every step, even at rl.beta = 0 (for measurement only, not in the loss).")
    action: Literal["stop", "rollback"] = Field(
        "rollback", description="On a trigger: 'stop' the run where it is, or 'rollback' = restore the best step's "
        "weights (by smoothed gold where guard.gold is set, else the highest smoothed proxy while the ensemble still "
        "agreed, else the highest proxy under the KL budget), then stop.")
    kl_budget: float | None = Field(None, gt=0, description="Act as soon as the logged kl (per-token KL to the "
                                    "reference, rl.kl_estimator) exceeds this; None = no budget.")
    gold: str | None = Field(None, description="Name of a held-out judge among rewards (give it weight 0: logged as "
                             "reward/<name>/mean, never optimised). Warning sign: smoothed gold falls while the smoothed "
                             "proxy rises.")
    proxy: str | None = Field(None, description="Name of the optimised reward among rewards to watch as the proxy; "
                              "None = the weighted total reward/mean.")
    disagreement: str | None = Field(None, description="Name of a reward-model reward (rm:PATH with ensemble heads) "
                                     "whose reward/<name>/ensemble_std is watched when guard.gold is not set. Warning "
                                     "sign: it rises above its early baseline.")
    window: int = Field(5, ge=1, description="Steps in the moving averages of proxy, gold and disagreement.")
    patience: int = Field(5, ge=1, description="Consecutive steps the warning sign must last before the guard acts.")
    gold_tolerance: float = Field(0.02, ge=0, description="Gold counts as fallen when its moving average is this "
                                  "fraction of its best below that best.")
    baseline_steps: int = Field(10, ge=1, description="Disagreement baseline: the mean ensemble_std of the first "
                                "this many steps.")
    disagreement_rise: float = Field(0.5, gt=0, description="Disagreement counts as risen when its moving average "
                                     "exceeds (1 + this) × the baseline.")
    min_steps: int = Field(10, ge=0, description="No warning counts before this many steps (moving averages settle).")
    fit_gao: bool = Field(True, description="Fit Gao et al. 2022's R(d) = d(α − β log d), d = √KL, to gold online "
                          "(least squares; gold relative to its first window) and log the predicted peak √KL, "
                          "exp(α/β − 1), as guard/predicted_peak_sqrt_kl.")


class LogConfig(_Section):
    eval_every: int = Field(10, ge=0, description="Greedy eval/accuracy every N steps (and at step 0); 0 = off.")
    save_every: int = Field(50, ge=0, description="Checkpoint every N steps (and at the end); 0 = only at the end.")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    samples_per_step: int = Field(4, ge=0, description="Completions written to samples.jsonl per step.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files to RUN_DIR/tb.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (pip install wandb).")
    wandb_project: str = Field("aha", description="W&B project name.")
    progress: bool = Field(True, description="Show a progress bar.")
    report: bool = Field(True, description="Write RUN_DIR/report.html at the end of the run.")
    reasoning_metrics: bool | Literal["auto"] = Field(
        "auto", description="Log the reasoning metrics every step (reasoning/*: format compliance, strict and lenient "
        "accuracy, reflection rate, accuracy of reflecting vs other completions, mean length of right and wrong "
        "completions, aha moments; see aha.track.reasoning), at eval (eval/reasoning/*) and in `aha eval`; "
        "'auto' = on for task.template r1 and r1_plain.")
    reflection_phrases: list[str] = Field(
        list(REFLECTION_PHRASES), description="Phrases that count as reflection (whole words, any case): Oat-Zero's "
        "keywords plus wait, alternatively, however, verify.")
    eval_reward: str | None = Field(None, description="The reward that scores eval (a reward spec, e.g. 'code', "
                                    "'file.py:fn'; a row counts as right when it scores above 0.5; eval/reward_mean "
                                    "is its mean); default: the task's own check (accuracy, or code for task code).")


class DistributedConfig(_Section):
    backend: Literal["none", "ray"] = Field("none", description="'ray': rollouts sampled by Ray actors (pip install "
                                            "'aha[ray]'), each with its own copy of the policy; 'none': in-process.")
    rollout_workers: int = Field(2, ge=1, description="ray: rollout worker actors; the prompts of a step are split "
                                 "between them.")
    address: str | None = Field(None, description="ray: a running cluster's address ('auto', or HOST:PORT of `ray "
                                "start --head`); unset = a local Ray instance aha starts and stops itself.")
    timeout_s: float = Field(600.0, gt=0, description="ray: longest wait for one remote call; a worker that takes "
                             "longer is restarted and its prompts sampled again.")
    max_restarts: int = Field(3, ge=0, description="ray: restarts of a failing worker within one call before the run "
                              "stops.")


class RunConfig(_Section):
    """A whole run: ``stage`` picks the trainer; the other sections configure it."""

    stage: Literal["rl", "grpo", "sft", "reward_model"] = Field(
        "rl", description="Which trainer runs: 'rl' (the algorithm rl.algo names; 'grpo' is a synonym), 'sft' (imitation) "
        "or 'reward_model' (a scalar reward model from rankings or pairs; see reward_model).")
    init_from: Path | None = Field(None, description="Start from this checkpoint's model dir instead of model.name's weights.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Prompts, answers and held-out split.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="accuracy")], description="Reward functions and weights.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    rl: RLConfig = Field(default_factory=RLConfig, description="RL objective (GRPO, PPO, RLOO, REINFORCE++).")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="PPO's value model.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT data.")
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig, description="Reward-model training.")
    log: LogConfig = Field(default_factory=LogConfig, description="Metrics, eval, checkpoints.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Reward-hacking guard (RL stages).")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Scale-out on Ray.")

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.stage == "sft" and self.sft.path is None:
            raise ValueError("stage 'sft' needs sft.path (a prompt/completion JSONL)")
        if self.stage == "reward_model" and self.reward_model.path is None:
            raise ValueError("stage 'reward_model' needs reward_model.path (rankings or pairs: .jsonl, .json, .parquet "
                             "or a datasets directory)")
        if self.reward_model.loss == "pl" and self.reward_model.margin:
            raise ValueError("reward_model.margin applies to loss 'bt' only (set margin: 0 or loss: bt)")
        from aha.algos.advantages import ADVANTAGE_ESTIMATORS
        from aha.algos.losses import POLICY_LOSSES

        if self.rl.algo not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"rl.algo {self.rl.algo!r} is not a registered estimator ({', '.join(ADVANTAGE_ESTIMATORS)})")
        if self.rl.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"rl.policy_loss {self.rl.policy_loss!r} is not a registered loss ({', '.join(POLICY_LOSSES)})")
        if self.rl.dual_clip is not None and self.rl.policy_loss == "cispo":
            raise ValueError("rl.dual_clip bounds the clipped surrogate (policy_loss: clip); CISPO's weight is already "
                             "clipped (unset one of them)")
        if self.rollout.group_size < ADVANTAGE_ESTIMATORS[self.rl.algo].min_group_size:
            raise ValueError(f"rl.algo {self.rl.algo!r} needs rollout.group_size ≥ "
                             f"{ADVANTAGE_ESTIMATORS[self.rl.algo].min_group_size} (its baseline is the prompt's other samples)")
        if self.rollout.compile is True and self.model.lora.enabled:
            raise ValueError("rollout.compile does not support LoRA policies yet (set one of them to false)")
        if self.rl.dynamic_sampling and self.rollout.group_size < 2:
            raise ValueError("rl.dynamic_sampling needs rollout.group_size ≥ 2 (it drops groups whose rewards all agree)")
        if self.task.name == "jsonl" and self.task.path is None:
            raise ValueError("task.name 'jsonl' needs task.path")
        return self


# ----------------------------------------------------------------------------- loading


RENAMED = {"sft.warmup_steps": "sft.imitation_steps", "sft.warmup_lr": "sft.imitation_lr"}  # old name → new


def _format_error(err: ValidationError) -> str:
    """One line per problem: ``rl.betta: unknown field (allowed: beta, mu, ...)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        loc = loc if loc.isprintable() else repr(loc)  # a key with a line break stays on the line
        if e["type"] == "extra_forbidden" and loc in RENAMED:
            lines.append(f"{loc} was renamed to {RENAMED[loc]}")
        elif e["type"] == "extra_forbidden":
            parent = _model_at(RunConfig, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent is not None else "?"
            lines.append(f"{loc}: unknown field (allowed: {allowed})")
        else:
            msg = e["msg"].replace("Value error, ", "")
            lines.append(f"{loc}: {msg} (got {e.get('input')!r})" if loc else msg)
    return "config error: " + "; ".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


# what PyYAML raises on text it cannot read: bad syntax; a date that does not exist (2020-13-45: ValueError); nesting
# deeper than Python's recursion limit
YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'rl.beta=0.04'`` → ``(['rl', 'beta'], 0.04)``; the value is parsed as YAML (so lists and bools work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set rl.beta=0.04")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else None
    except YAML_ERRORS as e:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({first_line(e)}); quote a value meant "
                          "as text") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **defaults: Any) -> RunConfig:
    """Read YAML (optional), apply ``a.b=c`` overrides, validate. Raises :class:`ConfigError` with one line."""
    data: dict = dict(defaults)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except YAML_ERRORS as e:
            raise ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data.update(relative_to(loaded, path.parent))
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


_PATH_FIELDS = (("task", "path"), ("task", "eval_path"), ("sft", "path"), ("reward_model", "path"),
                ("reward_model", "eval_path"), ("critic", "init_from"), ("model", "name"), ("init_from",))
_REWARD_REFS = (("guard", "gold"), ("guard", "proxy"), ("guard", "disagreement"), ("log", "eval_reward"))


def _near(value: Any, base: Path) -> Any:
    """``value`` as the path next to the config file, where it is a relative path found there and not in the
    working directory; otherwise unchanged."""
    if not isinstance(value, str) or not value or value.startswith(("hf:", "tiny", "smollm2")):
        return value
    candidate = Path(value).expanduser()
    if candidate.is_absolute() or candidate.exists() or not (base / candidate).exists():
        return value
    return str((base / candidate).resolve())


def _near_spec(spec: Any, base: Path) -> Any:
    """A reward spec whose file (``file.py:fn``, ``rm:DIR``) lies next to the config file, made absolute."""
    if not isinstance(spec, str):
        return spec
    if spec.startswith("rm:"):
        return "rm:" + _near(spec[3:], base)
    target, sep, attr = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target):
        return f"{_near(target, base)}:{attr}"
    return spec


def relative_to(data: dict, base: Path) -> dict:
    """A config mapping whose relative paths (data files, reward files, model dirs) are looked up next to the config
    file first, then in the working directory (a recipe runs from anywhere; --set values stay relative to the
    working directory). A reward spec made absolute is renamed everywhere the config names it."""
    import copy

    data = copy.deepcopy(data)
    for keys in _PATH_FIELDS:
        section = data
        for key in keys[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and keys[-1] in section:
            section[keys[-1]] = _near(section[keys[-1]], base)
    renamed = {}
    for spec in data["rewards"] if isinstance(data.get("rewards"), list) else []:  # (validation names a non-list)
        if isinstance(spec, dict) and "name" in spec:
            new = _near_spec(spec["name"], base)
            renamed[spec["name"]], spec["name"] = new, new
    for section, key in _REWARD_REFS:
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            part[key] = renamed.get(part[key], _near_spec(part[key], base))
    return data


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def describe(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Flatten the schema into ``(dotted.name, default, description)`` rows for ``aha config show``."""
    rows = []
    for name, field in model.model_fields.items():
        sub = _model_at(model, (name,))
        if sub is not None and name != "rewards":
            rows.extend(describe(sub, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
        rows.append((prefix + name, repr(default), field.description or ""))
    return rows
