"""``aha demo think``: the world (sums, the teacher's habits and error rates, a held-out split no training prompt
shares), the reasoning metrics on the teacher's traces, the correctness reward, the whole demo in its quick setting
(summary + report), and (slow) the demo reaching its goals on one seed."""

from __future__ import annotations

import json
import random
import re

import pytest

from aha.config.sections import REFLECTION_PHRASES
from aha.demos import think_world as world
from aha.demos.think import (
    ABLATIONS,
    MAX_NEW_TOKENS,
    ablation_config,
    demo_config,
    length_penalty,
    main,
    run_demo,
    settings,
)
from aha.track.reasoning import judge

KEYS = (
    "teacher_accuracy",
    "sft_accuracy",
    "rl_accuracy",
    "sft_length",
    "rl_length",
    "sft_reflection_rate",
    "rl_reflection_rate",
    "rl_aha_rate",
    "rl_accuracy_reflecting",
    "rl_accuracy_not_reflecting",
    "wall_time_s",
    "by_terms",
    "rl_steps_share",
    "rl_series",
    "rl_doubt_rate",
    "rl_recheck_rate",
)


def test_held_out_sums_are_distinct_balanced_and_never_trained_on():
    train, held = world.make_rows(20000, 600, seed=3)
    assert len(held) == len({r["prompt"] for r in held}) == 600
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert [sum(r["terms"] == n for r in held) for n in world.TERMS] == [150] * 4
    for r in random.Random(0).sample(train, 50) + held[:50]:
        terms = world.terms_of(r["prompt"])
        assert len(terms) == r["terms"] and all(1 <= t <= 9 for t in terms) and r["answer"] == str(sum(terms))
    assert settings(quick=False)["n_eval"] >= 500


def first_tries(trace: str) -> list[bool]:
    """Whether each step's first try slipped (its total is not the total before it plus the term; a re-done step,
    which repeats the label before it, is not a first try)."""
    tries, total, label = [], 0, ""
    for step in re.finditer(r"([a-f])\+(\d)=(\d\d)", trace):
        if step[1] != label:
            tries.append(int(step[3]) != total + int(step[2]))
        label, total = step[1], int(step[3])
    return tries


def test_the_teacher_thinks_rarely_doubts_its_guess_slips_sometimes_and_guesses_when_it_answers_directly():
    rng = random.Random(0)
    rows = [world.row_of([rng.randint(1, 9) for _ in range(n)]) for n in world.TERMS for _ in range(3000)]
    traces = [world.teacher_trace(world.terms_of(r["prompt"]), rng) for r in rows]
    worked = [(r, t) for r, t in zip(rows, traces) if world.has_steps(t)]
    assert len(worked) / len(rows) == pytest.approx(world.P_WORKED, abs=0.02)
    direct = [(r, t) for r, t in zip(rows, traces) if not world.has_steps(t)]
    for n in world.TERMS:  # a guess: rarely right, and not centred on the sum (so sharpening it does not find it)
        mine = [(r, t) for r, t in direct if r["terms"] == n]
        assert sum(world.is_right(t, r["prompt"], r["answer"]) for r, t in mine) / len(mine) < 0.15
        first_plus_five = [world.terms_of(r["prompt"])[0] + world.GUESS_EACH * (n - 1) for r, _ in mine]
        assert sum(int(t) for _, t in mine) / len(mine) == pytest.approx(sum(first_plus_five) / len(mine), abs=0.1)
    right_worked = sum(world.is_right(t, r["prompt"], r["answer"]) for r, t in worked) / len(worked)
    right_direct = sum(world.is_right(t, r["prompt"], r["answer"]) for r, t in direct) / len(direct)
    assert right_worked > 0.8 > 0.15 > right_direct  # thinking pays, for the teacher too
    assert 0.05 < sum(world.rechecks(t) for _, t in worked) / len(worked) < 0.3  # a slip caught: in a few
    tries = [slipped for _, t in worked for slipped in first_tries(t)]
    assert sum(tries) / len(tries) == pytest.approx(world.P_SLIP, abs=0.01)  # a step slips P_SLIP of the time
    # P_DOUBT (all) of the worked traces start with a guess, "wait", then the work: it doubts, then works it out
    assert sum(world.doubted(t) is not None for _, t in worked) / len(worked) == pytest.approx(world.P_DOUBT, abs=0.03)
    assert not any(world.doubted(t) for _, t in direct)
    doubted = [(r, t) for r, t in worked if world.doubted(t) is not None]
    assert sum(world.is_right(t, r["prompt"], r["answer"]) for r, t in doubted) / len(doubted) > 0.8  # work wins
    assert sum(world.corrects(t) for _, t in doubted) / len(doubted) > 0.8  # and mostly changes the guess
    assert 0.2 < sum(world.REFLECTION in t for t in traces) / len(traces) < 0.4  # present, in a minority
    # the world without doubted guesses (--no-doubt): "wait" only after a slip, rarely
    plain = [world.teacher_trace(world.terms_of(r["prompt"]), rng, p_doubt=0.0) for r in rows]
    assert sum(world.has_steps(t) for t in plain) / len(rows) == pytest.approx(world.P_WORKED, abs=0.02)
    assert not any(world.doubted(t) for t in plain)
    assert 0.01 < sum(world.REFLECTION in t for t in plain) / len(plain) < 0.1


def test_a_slip_is_off_by_one_or_two_and_a_caught_one_is_corrected():
    slips = world.worked_steps([4, 5, 6], random.Random(2), p_slip=1.0, p_reflect=0.0)
    first = int(slips.split()[0].split("=")[1])  # a's total
    assert first in (2, 3, 5, 6) and world.final_answer(slips, "a4 b5 c6=") != "15"
    caught = world.worked_steps([4, 5, 6], random.Random(2), p_slip=1.0, p_reflect=1.0)
    assert caught.count(" wait ") == 3 and world.is_right(caught, "a4 b5 c6=", "15") and world.corrects(caught)
    assert world.worked_steps([4, 5, 6], random.Random(2), p_slip=0.0) == "a+4=04 b+5=09 c+6=15"


def test_the_reasoning_metrics_read_the_teachers_traces():
    assert world.REFLECTION in REFLECTION_PHRASES  # counted by the default phrase list
    prompt = world.prompt_of([3, 5, 7, 2])
    caught = judge("a+3=03 b+5=08 c+7=14 wait c+7=15 d+2=17", "17", prompt=prompt)
    assert caught.reflects and caught.lenient_correct
    assert (caught.aha.first_answer, caught.aha.final_answer) == ("14", "17")
    missed = judge("a+3=03 b+5=08 c+7=14 d+2=16", "17", prompt=prompt)
    assert not missed.reflects and not missed.lenient_correct and missed.aha is None
    # a re-check that changed nothing: the library's aha reads the step's total (08) as the answer before 'wait', and
    # counts it; the demo's own count of corrections does not
    rechecked = "a+3=03 b+5=08 wait b+5=08 c+7=15 d+2=17"
    checked = judge(rechecked, "17", prompt=prompt)
    assert checked.reflects and checked.aha is not None and not world.corrects(rechecked)
    # a doubted guess, then the work: the library's aha (19 before 'wait', 17 after), and the demo's correction
    doubt = "19 wait a+3=03 b+5=08 c+7=15 d+2=17"
    doubted = judge(doubt, "17", prompt=prompt)
    assert doubted.reflects and (doubted.aha.first_answer, doubted.aha.final_answer) == ("19", "17")
    assert world.doubted(doubt) == "19" and world.corrects(doubt) and not world.rechecks(doubt)
    assert world.rechecks(rechecked) and world.doubted(rechecked) is None
    assert not world.corrects("17 wait a+3=03 b+5=08 c+7=15 d+2=17")  # a right guess confirmed: nothing changed
    direct = judge("17", "17", prompt=prompt)
    assert direct.lenient_correct and not direct.reflects and not world.has_steps("17")
    assert world.has_steps("a+3=03 b+5=08") and not world.has_steps("a3")
    assert world.is_right("a+1=01 b+2=03 c+4=07", world.prompt_of([1, 2, 4]), "7")  # two digits, one number


def test_the_reward_is_correctness_alone():
    prompts = [world.prompt_of([3, 5, 7, 2])] * 4
    completions = [
        "17",
        "a+3=03 b+5=08 c+7=15 d+2=17",
        "a+3=03 b+5=08 c+7=14 wait c+7=15 d+2=17",
        "a+3=03 b+5=08 c+7=15 d+2=16",
    ]
    assert world.correct(prompts, completions, answer=["17"] * 4) == [1.0, 1.0, 1.0, 0.0]
    assert world.correct(prompts[:2], ["a+3=03 wait", ""], answer=["17"] * 2) == [0.0, 0.0]
    assert length_penalty(prompts, completions, completion_ids=[[0] * 3, [0] * 15]) == [
        pytest.approx(-0.5 * 3 / MAX_NEW_TOKENS),
        pytest.approx(-0.5 * 15 / MAX_NEW_TOKENS),
    ]


def test_each_ablation_changes_only_its_own_part(tmp_path):
    _, rl = demo_config(tmp_path, 0, settings(quick=True))
    for name in ABLATIONS:
        cfg = ablation_config(rl, name, steps=7)
        assert cfg.train.steps == 7 and cfg.init_from == rl.init_from and cfg.train.lr == rl.train.lr
        assert (cfg.rl.loss_type, cfg.rl.scale_rewards) == {
            "grpo": ("grpo", "group"),
            "dr_grpo": ("dr_grpo", "none"),
            "length_penalty": (rl.rl.loss_type, "group"),
        }[name]
        assert len(cfg.rewards) == (2 if name == "length_penalty" else 1)


def test_quick_demo_writes_every_summary_key_and_the_report(tmp_path):
    summary = run_demo(tmp_path, seed=0, quick=True, ablations=True)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert all(k in on_disk for k in KEYS), [k for k in KEYS if k not in on_disk]
    assert on_disk["teacher_accuracy"] == summary["teacher_accuracy"] > 0.1  # (40 sums: about 0.3)
    assert on_disk["world"] == "doubt" and on_disk["teacher_doubt_rate"] > 0.05  # the default world
    assert set(on_disk["ablations"]) == set(ABLATIONS)
    assert len(on_disk["rl_series"]["length"]) == settings(quick=True)["rl_steps"]
    html = (tmp_path / "report.html").read_text()
    assert (
        "Accuracy and length over the RL run" in html
        and "Oat-Zero" in html
        and (tmp_path / "rl" / "report.html").exists()
    )


@pytest.mark.slow
def test_rl_learns_to_think_longer_as_its_accuracy_rises(tmp_path):
    """Seed 0 of the demo, its embedded defaults, against the issue's goals: RL passes the teacher by 0.25 (+0.33 on 2
    threads of the Xeon) and SFT, its completions are at least 1.5x SFT's and nearly all worked out, length and
    accuracy rise together over the run (the last quarter against the first), reflection at least doubles (the doubt:
    x3.7), and completions that reflect are right more often than those that don't. The suite
    runs it beside other tests, on 1 or 2 threads: another order of float sums, another run (docs/think.md measures
    both)."""
    s = run_demo(tmp_path, seed=0)
    assert s["rl_accuracy"] >= s["teacher_accuracy"] + 0.25 and s["rl_accuracy"] >= s["sft_accuracy"] + 0.3
    assert s["rl_length"] >= 1.5 * s["sft_length"]
    assert s["rl_steps_share"] >= 0.9 > 0.5 > s["sft_steps_share"]  # the teacher's rare habit, amplified
    curve = s["rl_series"]
    k = len(curve["length"]) // 4
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(curve["length"][-k:]) > 1.3 * mean(curve["length"][:k])
    assert mean(curve["accuracy"][-k:]) > mean(curve["accuracy"][:k]) + 0.15
    assert s["rl_reflection_rate"] >= 2 * s["sft_reflection_rate"] and s["rl_aha_rate"] > 0.3  # the doubt, amplified
    not_reflecting = s["rl_accuracy_not_reflecting"]  # None: every completion reflected
    assert not_reflecting is None or s["rl_accuracy_reflecting"] >= not_reflecting
    rl = s["scores"]["rl"]  # the steps are why it is right: RL's completions with steps beat its few without
    assert rl["accuracy_without_steps"] is None or rl["accuracy_with_steps"] > rl["accuracy_without_steps"]


def test_quick_demo_in_the_world_without_doubted_guesses_or_slips(tmp_path):
    """``--no-doubt --p-slip 0``: no doubted guess and no slip in the teacher's traces (so no "wait" at all), and the
    summary says which world it ran."""
    summary = run_demo(tmp_path, seed=1, quick=True, doubt=False, p_slip=0.0)
    teacher = [json.loads(line)["completion"] for line in (tmp_path / "teacher.jsonl").read_text().splitlines()]
    assert summary["world"] == "steps" and summary["p_slip"] == 0 and not any(world.doubted(t) for t in teacher)
    assert not any(world.REFLECTION in t or any(first_tries(t)) for t in teacher)
    assert summary["teacher_doubt_rate"] == 0 and summary["teacher_steps_share"] > 0.1


def test_the_demo_refuses_a_slip_rate_that_is_not_a_probability(capsys):
    with pytest.raises(SystemExit):
        main(["--p-slip", "1.5"])
    assert "--p-slip 1.5: a probability, between 0 and 1" in capsys.readouterr().err
