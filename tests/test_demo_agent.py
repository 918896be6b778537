"""``aha demo agent``: the game and its turn cap, the teacher's habit, SFT rows that are token for token what the RL
run plays, the whole demo in its quick setting (summary + report), and (slow) the demo reaching its goal."""

from __future__ import annotations

import json

import pytest

from aha.data.templates import encode_text
from aha.demos.agent import (
    LETTERS,
    TURN_CAP,
    LetterGuess,
    TeacherEngine,
    episode_format,
    play,
    run_demo,
    scores,
)
from aha.models import DEFAULT_ALPHABET, char_tokenizer
from aha.rollout.episodes import sft_rows

KEYS = (
    "teacher_success",
    "sft_success",
    "rl_success",
    "teacher_turns",
    "sft_turns",
    "rl_turns",
    "wall_time_s",
    "rl_reward",
    "n_eval",
)


class Bisection(TeacherEngine):
    """The best player: the middle of the letters left (the lower one of two)."""

    def guess(self, lo: int, hi: int) -> int:
        return (lo + hi) // 2


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer(DEFAULT_ALPHABET)


def test_bisection_always_wins_within_the_cap_and_the_teachers_habit_often_does_not(tok):
    best = scores(play(Bisection(tok, 0), episode_format(tok), 1, greedy=True))
    assert best["success"] == 1.0 and best["turns"] == pytest.approx(49 / 15)  # 1·1 + 2·2 + 3·4 + 4·8 guesses
    teacher = scores(play(TeacherEngine(tok, 0), episode_format(tok), 200, greedy=False))
    assert 0.57 < teacher["success"] < 0.64  # exactly 0.604 for a uniform guess among the letters left (3000 games)
    assert 3.9 < teacher["turns"] < 4.3  # exactly 4.08


def test_the_game_states_the_letters_left_and_a_wasted_guess_keeps_them():
    game = LetterGuess()
    assert game.reset(target="C") == f"{LETTERS[0]}-{LETTERS[-1]}\n"
    said = [game.step(a).observation for a in ("H", "A", "M", "b", "B", "C")]
    assert said == ["earlier A-G", "later B-G", "earlier B-G", "say a letter B-G", "later C-G", "correct"]
    assert game.solved and game.turns == 6 > TURN_CAP


def test_sft_rows_are_token_for_token_what_the_episodes_played(tok):
    batch = play(TeacherEngine(tok, 1), episode_format(tok), 4, greedy=False)
    rows = sft_rows(batch, tok)
    assert len(rows) == sum(sum(m["role"] == "assistant" for m in t) for t in batch.transcripts)
    played = [p + c for p, c in zip(batch.rollouts.prompt_ids, batch.rollouts.completion_ids)]
    for row in rows:  # prompt + completion + EOS (as SFT encodes them) is the start of an episode the run played
        ids = encode_text(row["prompt"], tok) + encode_text(row["completion"], tok) + [tok.eos_token_id]
        assert any(episode[: len(ids)] == ids for episode in played), row
    assert any("<eos>" in row["prompt"] for row in rows)  # later turns carry the history, each turn's EOS included


def test_quick_demo_writes_every_summary_key_and_the_report(tmp_path):
    summary = run_demo(tmp_path, seed=0, quick=True)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert all(k in on_disk for k in KEYS), [k for k in KEYS if k not in on_disk]
    assert on_disk["teacher_success"] == summary["teacher_success"] > 0.2
    assert len(on_disk["rl_reward"]) == 2  # one per RL step
    assert all(0 <= on_disk[f"{p}_success"] <= 1 for p in ("teacher", "sft", "rl"))
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "teacher.jsonl").read_text().count("\n") == on_disk["sft_rows"]


@pytest.mark.slow
def test_rl_finds_the_strategy_the_teacher_never_showed(tmp_path):
    s = run_demo(tmp_path, seed=0)
    assert s["rl_success"] >= s["teacher_success"] + 0.20, s
    assert s["rl_turns"] < s["teacher_turns"], s
    assert s["sft_success"] < s["teacher_success"] + 0.05, s  # imitation reaches the teacher at best, not past it
