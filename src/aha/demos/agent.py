"""``aha demo agent``: the AlphaGo lesson in an environment, measured on a CPU in a few minutes.

The game (:class:`LetterGuess`, gym-style): find a letter from A to O. Every answer states the letters left
("later I-O"), so the best move reads off the last line: its middle letter. Bisection finds any of the 15 letters
within 4 guesses (3.27 on average); a player that guesses anywhere among the letters left (uniformly) finds it
within 4 guesses 60% of the time and needs 4.08 on average. Then:

  0. a teacher plays with that weak habit (uniform among the letters left): its transcripts are the demonstrations;
  1. SFT (imitation) on every teacher turn, with the history before it as the prompt, token for token as the RL
     run renders it: the student learns the habit;
  2. GRPO from the SFT checkpoint, rewarded by the game (1 for finding the letter) within a cap of 4 turns, where
     only bisection always wins: the student finds the strategy the teacher never showed.

Teacher, SFT and RL each play 510 fresh episodes (34 per letter), sampled at temperature 1 (the
teacher is a random player and so is its imitation: greedy decoding of an imitation of a random player is not that
player; greedy is measured beside it). An episode goes on until the letter is found or 10 turns; success is finding
it within the 4-turn cap, turns are the mean guesses played.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

import torch

from aha.build import prepare
from aha.config import RunConfig
from aha.demos import imitate_then_rl
from aha.env import Step, build_environment
from aha.rl import train_rl
from aha.rollout import SamplingParams
from aha.rollout.episodes import EpisodeBatch, EpisodeFormat, ScriptedEngine, run_episodes, sft_rows
from aha.rollout.hf import HFEngine
from aha.sft import train_sft
from aha.track.metrics import read_metrics
from aha.track.report import write_report

LETTERS = "ABCDEFGHIJKLMNO"  # the game's 15 letters: one token each, and capitals appear nowhere else in the text
TURN_CAP = 4  # env.max_turns in RL, and the success criterion: bisection always wins within it (15 = 2**4 - 1)
EVAL_TURNS = 10  # held-out episodes go on this long, so mean turns also counts the guesses past the cap
PROMPT = "guess a letter "
MAX_GUESS_TOKENS = 2  # a letter and EOS
MAX_EPISODE_TOKENS = 160  # 10 turns of 13 tokens, within the model's context with the prompt
_INTERVAL = re.compile(f"([{LETTERS}])-([{LETTERS}])")


class LetterGuess:
    """Guess-the-letter (A to O) where every answer states the letters left (gym-style: ``reset`` and ``step``).

    >>> game = LetterGuess()
    >>> game.reset(target="J")
    'A-O\\n'
    >>> [(s.observation, s.reward, s.done) for s in map(game.step, ["H", "L", "C", "?", "J"])]  # doctest: +NORMALIZE_WHITESPACE
    [('later I-O', 0.0, False), ('earlier I-K', 0.0, False), ('later I-K', 0.0, False),
     ('say a letter I-K', 0.0, False), ('correct', 1.0, True)]
    >>> game.turns, game.solved
    (5, True)

    A guess outside what is left is a wasted turn (the interval stays); anything but one letter A to O is answered
    with a reminder. The row may carry ``target`` (a letter; else it is drawn with ``seed``).
    """

    def __init__(self) -> None:
        self.lo, self.hi, self.target, self.turns, self.solved = 0, len(LETTERS) - 1, 0, 0, False

    def reset(self, seed: int | None = None, target: str | None = None, **row: Any) -> str:
        self.lo, self.hi = 0, len(LETTERS) - 1
        self.target = LETTERS.index(target) if target is not None else random.Random(seed).randint(self.lo, self.hi)
        self.turns, self.solved = 0, False
        return f"{self.interval}\n"

    @property
    def interval(self) -> str:
        return f"{LETTERS[self.lo]}-{LETTERS[self.hi]}"

    def step(self, action: str) -> Step:
        self.turns += 1
        guess = (action or "").strip()
        if len(guess) != 1 or guess not in LETTERS:
            return Step(f"say a letter {self.interval}", 0.0, False)
        g = LETTERS.index(guess)
        if g == self.target:
            self.solved = True
            return Step("correct", 1.0, True)
        if g < self.target:
            self.lo = max(self.lo, g + 1)
            return Step(f"later {self.interval}", 0.0, False)
        self.hi = min(self.hi, g - 1)
        return Step(f"earlier {self.interval}", 0.0, False)


def last_interval(text: str) -> tuple[int, int]:
    """The letters left, as indices into :data:`LETTERS`, that the last answer in ``text`` states.

    >>> last_interval("guess a letter A-O\\nH<eos>\\nlater I-O\\n")
    (8, 14)
    """
    lo, hi = _INTERVAL.findall(text)[-1]
    return LETTERS.index(lo), LETTERS.index(hi)


class TeacherEngine(ScriptedEngine):
    """The teacher as a rollout engine: it reads each context's last interval and guesses uniformly inside it (the
    weak habit), a guess being a letter and EOS, as a model's turn is. Played through :func:`run_episodes`, its
    transcripts are token for token what an RL run renders."""

    def __init__(self, tokenizer, seed: int):
        super().__init__(tokenizer, lambda context: LETTERS[self.guess(*last_interval(context))])
        self.rng = random.Random(seed)

    def guess(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


def settings(quick: bool) -> dict:
    """Sizes of the demo; ``quick`` is a smoke-test setting (seconds, learns little)."""
    if quick:
        return {
            "model": "tiny:layers=1,hidden=32,heads=2,ff=64,ctx=192",
            "teacher_episodes": 60,
            "sft_steps": 4,
            "rl_steps": 2,
            "prompts_per_step": 4,
            "group_size": 4,
            "eval_per_target": 2,
        }
    return {
        "model": "tiny:layers=1,hidden=64,heads=4,ff=512,ctx=192",  # one layer reads the last line well enough
        "teacher_episodes": 3000,  # ~12,300 teacher turns to imitate
        "sft_steps": 1000,
        "rl_steps": 300,
        "prompts_per_step": 16,
        "group_size": 8,  # 128 episodes a step
        "eval_per_target": 34,  # 15 letters × 34 = 510 held-out episodes
    }


def demo_config(out: Path, seed: int, s: dict) -> tuple[RunConfig, RunConfig]:
    """The embedded defaults: (SFT config, GRPO config), fp32 everywhere (the same numbers on any CPU)."""
    common: dict[str, Any] = {
        "model": {"name": s["model"]},
        # a row per game (its letter); the held-out file has one per letter (the demo plays its own evaluation)
        "task": {
            "name": "dataset",
            "path": str(out / "games.jsonl"),
            "eval_path": str(out / "eval.jsonl"),
            "template": "plain",
        },
        "env": {"factory": "aha.demos.agent:LetterGuess", "max_turns": TURN_CAP},
        "rollout": {
            "group_size": s["group_size"],
            "temperature": 1.0,
            "max_new_tokens": MAX_GUESS_TOKENS,
            "max_episode_tokens": MAX_EPISODE_TOKENS,
        },
        "log": {"eval_every": 0, "save_every": 0, "samples_per_step": 4, "report": False, "tensorboard": False},
    }
    return imitate_then_rl(
        common,
        out,
        seed,
        # micro-batches of 16: each is padded to its own longest history, not the batch's
        sft_train={
            "steps": s["sft_steps"],
            "lr": 3e-3,
            "lr_schedule": "cosine",
            "batch_size": 64,
            "micro_batch_size": 16,
        },
        rl={"prompts_per_step": s["prompts_per_step"], "mu": 1, "beta": 0.0, "loss_type": "dapo"},
        rl_train={
            "steps": s["rl_steps"],
            "lr": 3e-3,
            "lr_schedule": "cosine",  # (at a constant 3e-3 the last steps can undo some of the gain)
            "warmup_steps": 2,
            "micro_batch_size": 128,
        },
    )


def game_rows(copies: int) -> list[dict]:
    """``copies`` rows per target (every letter equally often)."""
    return [{"prompt": PROMPT, "target": t} for _ in range(copies) for t in LETTERS]


def episode_format(tokenizer) -> EpisodeFormat:
    return EpisodeFormat(tokenizer, "plain", build_environment(LetterGuess, tokenizer=tokenizer))


def play(engine, fmt: EpisodeFormat, per_target: int, greedy: bool, max_turns: int = EVAL_TURNS) -> EpisodeBatch:
    """``per_target`` episodes of each target, played to ``max_turns``."""
    sampling = SamplingParams(temperature=1.0, max_new_tokens=MAX_GUESS_TOKENS, greedy=greedy)
    return run_episodes(engine, fmt, game_rows(1), per_target, sampling, max_turns, MAX_EPISODE_TOKENS)


def scores(batch: EpisodeBatch) -> dict:
    """Success (found within :data:`TURN_CAP` turns) and mean turns to find the letter, an episode that did not
    (within :data:`EVAL_TURNS`, or cut short by a turn that did not end) counting :data:`EVAL_TURNS`."""
    games = [ep.env for ep in batch.episodes]
    return {
        "success": sum(g.solved and g.turns <= TURN_CAP for g in games) / len(games),
        "turns": sum(g.turns if g.solved else EVAL_TURNS for g in games) / len(games),
    }


def evaluate_model(model_dir: Path, cfg: RunConfig, per_target: int, seed: int) -> dict:
    """Sampled (temperature 1) and greedy scores of a saved model on held-out episodes."""
    device, amp, _, model, tok, _ = prepare(cfg.model_copy(update={"init_from": model_dir}))
    model.eval()
    engine, fmt = HFEngine(model, tok, device, amp), episode_format(tok)
    torch.manual_seed(10_000 + seed)  # the held-out episodes' sampling: apart from training's
    sampled = scores(play(engine, fmt, per_target, greedy=False))
    greedy = scores(play(engine, fmt, 1, greedy=True))  # greedy: one episode per target says it all
    return {**sampled, "greedy": greedy}


def run_demo(out: Path, seed: int = 0, quick: bool = False) -> dict:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings(quick)
    for name, copies in (("games", 4), ("eval", 1)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in game_rows(copies)))
    sft_cfg, rl_cfg = demo_config(out, seed, s)

    # ------------------------------------------------------------------ the teacher's transcripts
    _, _, _, _, tok, _ = prepare(sft_cfg)  # (the tiny model's tokenizer: its characters and EOS)
    fmt = episode_format(tok)
    per_target = max(1, s["teacher_episodes"] // len(LETTERS))
    demos = play(TeacherEngine(tok, seed), fmt, per_target, greedy=False)
    traces = sft_rows(demos, tok)  # (each row checked to encode back to the tokens its episode played)
    (out / "teacher.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    teacher = scores(play(TeacherEngine(tok, 10_000 + seed), fmt, s["eval_per_target"], greedy=False))
    n_eval = s["eval_per_target"] * len(LETTERS)
    print(f"[demo] teacher: success {teacher['success']:.3f}, {teacher['turns']:.2f} turns on {n_eval} episodes")

    # ------------------------------------------------------------------ 1. imitation (SFT)
    t0 = time.perf_counter()
    train_sft(sft_cfg, out / "sft", rows=traces)
    t_sft = time.perf_counter() - t0
    sft = evaluate_model(
        out / "sft" / "checkpoints" / f"step-{s['sft_steps']}" / "model", sft_cfg, s["eval_per_target"], seed
    )
    print(f"[demo] SFT: success {sft['success']:.3f}, {sft['turns']:.2f} turns  ({t_sft:.0f} s)")

    # ------------------------------------------------------------------ 2. RL (GRPO) from the SFT checkpoint
    t0 = time.perf_counter()
    train_rl(rl_cfg, out / "rl")
    t_rl = time.perf_counter() - t0
    rl = evaluate_model(
        out / "rl" / "checkpoints" / f"step-{s['rl_steps']}" / "model", rl_cfg, s["eval_per_target"], seed
    )
    print(f"[demo] RL: success {rl['success']:.3f}, {rl['turns']:.2f} turns  ({t_rl:.0f} s)")

    # ------------------------------------------------------------------ summary, table, report
    steps = [r for r in read_metrics(out / "rl") if r["step"] > 0 and "reward/mean" in r]
    summary = {
        "teacher_success": teacher["success"],
        "sft_success": sft["success"],
        "rl_success": rl["success"],
        "teacher_turns": teacher["turns"],
        "sft_turns": sft["turns"],
        "rl_turns": rl["turns"],
        "greedy": {"sft": sft["greedy"], "rl": rl["greedy"]},
        "rl_reward": [round(r["reward/mean"], 4) for r in steps],
        "rl_env_turns": [round(r["env/turns"], 3) for r in steps if "env/turns" in r],
        "evaluation": f"{n_eval} held-out episodes ({s['eval_per_target']} per target), sampled at temperature 1, "
        f"played to {EVAL_TURNS} turns; success = found within {TURN_CAP} turns",
        "n_eval": n_eval,
        "turn_cap": TURN_CAP,
        "seed": seed,
        "quick": quick,
        "sft_rows": len(traces),
        "sft_time_s": t_sft,
        "rl_time_s": t_rl,
        "wall_time_s": time.perf_counter() - t_start,
        "cpu_time_s": time.process_time() - cpu_start,  # (this process's, all threads: on a shared machine)
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out / "rl", out=out / "report.html", summary=summary)
    print_table(summary)
    print(f"[demo] wrote {out / 'summary.json'} and {out / 'report.html'}")
    return summary


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"guess a letter A-O: {summary['n_eval']} held-out episodes, sampled — {summary['wall_time_s']:.0f} s in all"
    )
    table.add_column("player")
    table.add_column(f"found within {TURN_CAP} turns", justify="right")
    table.add_column("mean turns", justify="right")
    table.add_column("greedy: found / turns", justify="right")
    for name, label in (("teacher", "teacher (random in interval)"), ("sft", "SFT (imitation)"), ("rl", "RL (GRPO)")):
        g = summary["greedy"].get(name)
        table.add_row(
            label,
            f"{summary[f'{name}_success']:.3f}",
            f"{summary[f'{name}_turns']:.2f}",
            f"{g['success']:.3f} / {g['turns']:.2f}" if g else "",
        )
    table.add_row("bisection (best)", "1.000", f"{49 / 15:.2f}", "")
    Console().print(table)
