"""The SFT warm-up of ``recipes/tools-smollm2.yaml``: tool-call traces played by a scripted teacher, then SFT on them.

The teacher (:func:`calculator_teacher`, a :class:`~aha.rollout.episodes.ScriptedEngine`) is a rollout engine that
plays the recipe's own episodes through :func:`~aha.rollout.episodes.run_episodes`, in the environment and format
the RL run builds (:func:`aha.rl.parts.episode_format`): it calls the calculator on the problem, then answers with
the tool's result::

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "347*829"}}
    </tool_call><|im_end|>          ← the environment answers <tool_response>287663</tool_response>
    <answer>287663</answer><|im_end|>

Each teacher turn is one SFT row: the prompt is the episode's tokens before the turn, the completion the turn
(:func:`sft_rows`), both checked to encode back to exactly the tokens the episode played, so SFT trains on what RL
will render. The rows' prompts are already rendered (chat template, tools in the system prompt): SFT reads them as
text (``task.template: plain``).

    python -m aha.demos.tools_traces recipes/tools-smollm2.yaml --out runs/tools-sft
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from aha.config import RunConfig, load_config
from aha.data.templates import resolve_template
from aha.rl.parts import episode_format
from aha.rollout import SamplingParams
from aha.rollout.episodes import EpisodeBatch, EpisodeFormat, ScriptedEngine, run_episodes, sft_rows
from aha.sft import train_sft
from aha.tasks import build_task

# the warm-up's size (measured in docs/tools-smollm2.md)
EPISODES = 128  # teacher episodes on training problems: two SFT rows each
STEPS = 10
LR = 3e-5
BATCH_SIZE = 16

_PROBLEM = re.compile(r"(\d+\s*[-+*]\s*\d+)\s*=")
_RESPONSE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)


def tool_call_text(expression: str) -> str:
    """A calculator call in the Hermes layout the system prompt shows.

    >>> print(tool_call_text("3*4"))
    <tool_call>
    {"name": "calculator", "arguments": {"expression": "3*4"}}
    </tool_call>
    """
    call = {"name": "calculator", "arguments": {"expression": expression}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def teacher_turn(context: str) -> str:
    """What the teacher writes after ``context`` (an episode's text so far): the tool's last result as the answer
    once there is one, else a call on the last problem (``a*b=``) in the text.

    >>> teacher_turn("user: 12*34=")
    '<tool_call>\\n{"name": "calculator", "arguments": {"expression": "12*34"}}\\n</tool_call>'
    >>> teacher_turn("user: 12*34=\\n<tool_response>\\n408\\n</tool_response>")
    '<answer>408</answer>'
    """
    results = _RESPONSE.findall(context)
    if results:
        return f"<answer>{results[-1]}</answer>"
    return tool_call_text(_PROBLEM.findall(context)[-1].replace(" ", ""))


def calculator_teacher(tokenizer) -> ScriptedEngine:
    """The teacher as a rollout engine: each turn is :func:`teacher_turn` of the decoded context, its tokens as the
    tokenizer encodes the text, then EOS."""
    return ScriptedEngine(tokenizer, teacher_turn)


def recipe_format(cfg: RunConfig, tokenizer) -> tuple[EpisodeFormat, list[dict]]:
    """The RL run's episode format for ``cfg`` (its environment, template and tools prompt) and its training rows."""
    task = build_task(cfg.task)
    fmt = episode_format(cfg, task, tokenizer, resolve_template(cfg.task.template, tokenizer))
    if fmt is None:
        raise ValueError("the recipe has no env: tool-call traces need env.tools")
    return fmt, task.train


def play_teacher(cfg: RunConfig, tokenizer, episodes: int) -> EpisodeBatch:
    """``episodes`` teacher episodes on the first training rows, with the recipe's caps."""
    fmt, rows = recipe_format(cfg, tokenizer)
    ro = cfg.rollout
    sampling = SamplingParams(ro.temperature, ro.top_p, ro.max_new_tokens, list(ro.stop))
    return run_episodes(
        calculator_teacher(tokenizer), fmt, rows[:episodes], 1, sampling, cfg.env.max_turns, ro.max_episode_tokens
    )


def sft_config(cfg: RunConfig, traces: Path, steps: int = STEPS, lr: float = LR, batch_size: int = BATCH_SIZE):
    """The warm-up's config: the recipe's model and precision, SFT on ``traces`` (prompts read as text: they are
    rendered already), no eval (``aha eval`` with the recipe measures the checkpoint), one checkpoint at the end."""
    data = cfg.model_dump(mode="json")
    data["stage"] = "sft"
    data["sft"] = {**data["sft"], "path": str(traces)}
    data["task"] = {**data["task"], "template": "plain"}
    data["train"] = {
        **data["train"],
        "steps": steps,
        "lr": lr,
        "lr_schedule": "cosine",
        "warmup_steps": 0,
        "batch_size": batch_size,
        "micro_batch_size": min(batch_size, 8),
    }
    data["log"] = {**data["log"], "eval_every": 0, "save_every": steps, "report": False}
    return RunConfig.model_validate(data)


def warm_up(recipe: Path, out: Path, episodes: int = EPISODES, steps: int = STEPS, lr: float = LR) -> dict:
    """Write ``out/traces.jsonl`` (the teacher's rows for ``recipe``) and run the SFT warm-up in ``out``."""
    from transformers import AutoTokenizer

    from aha.models import resolve_model_dir

    cfg = load_config(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(resolve_model_dir(cfg.model.name))
    rows = sft_rows(play_teacher(cfg, tok, episodes), tok)
    traces = out / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"[tools] {len(rows)} SFT rows from {episodes} teacher episodes → {traces}")
    t0 = time.perf_counter()
    metrics = train_sft(sft_config(cfg, traces, steps, lr), out)
    print(f"[tools] SFT warm-up: {steps} steps in {time.perf_counter() - t0:.0f} s → {out}/checkpoints/step-{steps}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LR)
    args = parser.parse_args(argv)
    warm_up(args.recipe, args.out, args.episodes, args.steps, args.lr)


if __name__ == "__main__":
    main()
