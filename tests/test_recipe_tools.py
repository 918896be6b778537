"""``recipes/tools-smollm2.yaml``: SmolLM2 with the calculator. The recipe builds its environment and rewards; the
SFT warm-up's rows are token for token what the RL run renders; the teacher's episodes are rewarded 1 and a wrong
answer 0; the recipe trains with a tiny model in place of SmolLM2 (its template: plain text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from aha.config import load_config
from aha.data.templates import render_prompt
from aha.demos.tools_traces import (
    calculator_teacher,
    play_teacher,
    recipe_format,
    sft_config,
    teacher_turn,
)
from aha.env import calculator
from aha.models import resolve_model_dir
from aha.rewards.specs import build_rewards
from aha.rollout import SamplingParams
from aha.rollout.episodes import model_turns, run_episodes, sft_rows
from aha.rollout.scoring import RewardScorer, ScoreSettings
from aha.sft import encode_pairs
from aha.tasks import build_task

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tools-smollm2.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(RECIPE)


@pytest.fixture(scope="module")
def tok(cfg):
    return AutoTokenizer.from_pretrained(resolve_model_dir(cfg.model.name))  # (the tokenizer only: no weights)


@pytest.fixture(scope="module")
def played(cfg, tok):
    return play_teacher(cfg, tok, 6)


def test_the_recipe_gives_smollm2_the_calculator_on_products_it_cannot_do_in_its_head(cfg):
    assert cfg.env.tools == ["calculator"] and cfg.env.enabled
    assert (cfg.task.name, cfg.task.digits, cfg.task.operations, cfg.task.template) == ("arithmetic", 3, ["*"], "chat")
    assert [r.name for r in cfg.rewards] == ["accuracy"] and cfg.train.precision == "fp32"
    rows = build_task(cfg.task).eval
    assert len(rows) == cfg.task.num_eval and all(int(r["answer"]) == r["a"] * r["b"] for r in rows)


def test_the_teacher_calls_the_calculator_then_answers_with_its_result(cfg, played):
    rows = build_task(cfg.task).train
    for row, transcript, episode in zip(rows, played.transcripts, played.episodes):
        assert [m["role"] for m in transcript] == ["assistant", "tool", "assistant"]
        assert transcript[1]["content"] == str(row["a"] * row["b"]) == calculator(f"{row['a']}*{row['b']}")
        assert transcript[2]["content"] == f"<answer>{row['a'] * row['b']}</answer>"
        assert (episode.tool_calls, dict(episode.errors), episode.done) == (1, {}, True)
    assert not any(played.truncated)


def test_sft_rows_are_token_for_token_what_the_rl_run_renders(cfg, tok, played):
    fmt, rows = recipe_format(cfg, tok)
    sft = sft_rows(played, tok)
    turns = model_turns(played)
    assert len(sft) == len(turns) == 2 * len(played.transcripts)
    # the SFT warm-up reads the rows as text (template plain): its tokens are the episodes' exactly
    pairs = encode_pairs(sft, tok, sft_config(cfg, Path("traces.jsonl")).task.template)
    assert [(p, c[:-1]) for p, c in pairs] == [(ctx, t[:-1]) for ctx, t in turns]
    assert all(c[-1] == t[-1] == tok.eos_token_id for (_, c), (_, t) in zip(pairs, turns))
    # the first turn's prompt is the RL prompt: the chat template with the calculator in the system prompt
    first = pairs[0][0]
    assert first == fmt.prompt_ids(rows[0]["prompt"], None)
    assert first != render_prompt(rows[0]["prompt"], tok, "chat")  # (not the prompt without the tools)
    assert '"name": "calculator"' in sft[0]["prompt"] and sft[0]["prompt"].endswith("<|im_start|>assistant\n")
    # the second turn's prompt continues the first: the call, then the environment's answer as RL appends it
    call = pairs[0][1]
    answer = fmt.answer_ids(played.transcripts[0][1:2], call)
    assert pairs[1][0] == first + call + answer


def test_the_recipes_reward_gives_the_teacher_1_and_a_wrong_answer_0(cfg, tok, played):
    task = build_task(cfg.task)
    scorer = RewardScorer(ScoreSettings.of(cfg), tok, build_rewards(cfg.rewards, task, cfg.task.answer_match))
    rows = task.train[: len(played.transcripts)]
    envs = [e.env for e in played.episodes]
    right = scorer(rows, played.rollouts, transcripts=played.transcripts, environments=envs, group_size=1)
    assert right.rewards == [1.0] * len(rows)
    wrong = [[*t[:-1], {"role": "assistant", "content": "<answer>12345</answer>"}] for t in played.transcripts]
    copied = [[*t[:-1], {"role": "assistant", "content": "no answer"}] for t in played.transcripts]
    for transcripts in (wrong, copied):  # (strict: the tool's result in the transcript is not an answer)
        scores = scorer(rows, played.rollouts, transcripts=transcripts, environments=envs, group_size=1)
        assert scores.rewards == [0.0] * len(rows)


def test_the_teacher_writes_a_call_on_the_question_not_on_the_system_prompts_example():
    assert "(12.5 - 3)" not in teacher_turn('e.g. "(12.5 - 3) * 4 / 7" user 401*17= assistant')
    assert '"expression": "401*17"' in teacher_turn("(12.5 - 3) * 4 / 7 user 401*17=")


def test_the_teacher_engine_plays_only_whole_turns_within_the_caps(cfg, tok):
    fmt, rows = recipe_format(cfg, tok)
    batch = run_episodes(calculator_teacher(tok), fmt, rows[:2], 2, SamplingParams(max_new_tokens=48), 3, 160)
    assert len(batch.transcripts) == 4 and batch.rollouts.finish_reasons == ["stop"] * 4


def test_the_recipe_trains_with_a_tiny_model(tmp_path):
    """Two GRPO steps of the recipe's episodes (a 1-layer model, plain-text template): the metrics hold the
    tool-call counters the docs plot."""
    from aha.api import train

    overrides = [
        "model.name=tiny:layers=1,hidden=32,heads=2,ff=64,ctx=512",
        "task.template=plain",
        "task.num_train=16",
        "task.num_eval=4",
        "rollout.group_size=2",
        "rollout.max_new_tokens=4",
        "rl.prompts_per_step=2",
        "train.steps=2",
        "train.micro_batch_size=4",
        "log.eval_every=2",
        "log.save_every=0",
        "log.report=false",
        "log.tensorboard=false",
        "log.progress=false",
    ]
    train(RECIPE, out=tmp_path / "run", overrides=overrides)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2 and all("env/tool_calls" in r and "env/turns" in r for r in steps)
    assert any("eval/accuracy" in r for r in rows)
