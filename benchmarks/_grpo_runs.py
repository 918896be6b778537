"""The two frameworks' GRPO runs on one workload, each in a worker of ``grpo_speed.py``: arithmetic prompts and a
cheap reward, with the per-step times (rollout, train) and generated tokens each framework took."""

from __future__ import annotations

import json
import time
from pathlib import Path


def digits_reward(prompts, completions, **kwargs):
    """The share of digit characters: cheap, and never constant within a group."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


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
