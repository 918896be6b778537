"""``aha demo rlhf``: the simulated human, the gold judge, and the whole demo in its quick setting (summary + report)."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from aha.demos import rlhf_world as world
from aha.demos.rlhf import run_demo

KEYS = (
    "rm_accuracy",
    "gold_peak",
    "gold_final_unguarded",
    "gold_final_guarded",
    "proxy_final_unguarded",
    "wall_time_s",
    "guard_gold",
    "guard_ensemble",
    "gold_final_ensemble_guarded",
    "guard_support",
    "gold_final_support_guarded",
    "gold_start",
    "gold_peak_sqrt_kl",
)


def test_gold_rewards_a_little_enthusiasm_and_punishes_too_much_and_repeats():
    assert world.gold_score(" glad day!") > world.gold_score(" glad day.")
    assert world.gold_score(" glad day!!") > world.gold_score(" glad day!")
    assert world.gold_score(" glad day!!!!") < world.gold_score(" glad day!!")  # past two '!', each costs
    assert world.gold_score(" glad sun joy.") > world.gold_score(" glad glad glad.")  # a warm word counts once
    assert world.gold_score(" glad sun.") > world.gold_score(" glad sad.")
    assert world.gold([""], [" glad sun joy!"]) == [world.gold_score(" glad sun joy!")]


def test_the_simulated_human_is_noisy_near_ties_and_reliable_far_apart():
    rng = random.Random(0)
    close = [world.simulate_ranking([" sun.", " warm."], rng, 0.35)[0] == [0] for _ in range(400)]  # gold 1.0 vs 0.9
    far = [world.simulate_ranking([" glad joy!", " sad dull."], rng, 0.35)[0] == [0] for _ in range(400)]
    assert 0.45 < sum(close) / 400 < 0.75  # σ(0.1 / 0.35) ≈ 0.57
    assert sum(far) / 400 > 0.99
    ranking = world.simulate_ranking([" a.", " glad!", " a."], rng, 0.35)
    assert [0, 2] in ranking and sorted(i for tier in ranking for i in tier) == [0, 1, 2]  # identical notes tie


def test_quick_demo_writes_every_summary_key_and_the_report(tmp_path):
    summary = run_demo(tmp_path, seed=0, quick=True)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert all(k in on_disk for k in KEYS), [k for k in KEYS if k not in on_disk]
    assert on_disk["rm_accuracy"] == summary["rm_accuracy"] > 0.5  # learned the rankings better than chance
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Over-optimisation" in html
    rm = json.loads((tmp_path / "rm" / "model" / "config.json").read_text())
    assert rm["aha_reward_model"]["num_heads"] > 1  # an ensemble, so the guard can read its disagreement
    guards = {
        run: yaml.safe_load((tmp_path / f"rl-{run}" / "config.yaml").read_text())["guard"]
        for run in ("unguarded", "gold", "support", "ensemble")
    }
    assert guards["unguarded"]["gold"] is None and guards["unguarded"]["disagreement"] is None  # it only measures KL
    assert guards["gold"]["gold"] == "gold" and guards["support"]["signal"] == "support_distance"
    assert guards["ensemble"]["signal"] == "ensemble_std" and guards["ensemble"]["gold"] is None
    for run in ("rl-unguarded", "rl-gold", "rl-support", "rl-ensemble"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert all("kl" in r and "reward/gold/mean" in r for r in rows if r["step"] > 0)
        # the no-gold signals, beside the reward: the heads' disagreement and the distance from the RM's data
        assert all(
            r["reward/rm/ensemble_std"] > 0 and r["reward/rm/support_distance"] > 0 for r in rows if r["step"] > 0
        )
    # each guard's decisions follow from what it was given, step by step, whether or not it acted
    steps = yaml.safe_load((tmp_path / "rl-unguarded" / "config.yaml").read_text())["train"]["steps"]
    assert on_disk["unguarded_steps"] == steps
    for run, guard in guards.items():
        assert_guard_consistent(
            tmp_path / f"rl-{run}", guard, None if run == "unguarded" else on_disk[f"guard_{run}"], steps
        )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def assert_guard_consistent(run_dir, g: dict, stop: dict | None, steps: int) -> None:
    """Recompute, from each step's logged inputs (the proxy, gold and no-gold signal it was given), the guard's
    moving averages, baseline, best step and warning count by the rules in aha.guard's docstring, and check that it
    acted (``stop``: the summary's record of guard.json, or None) exactly where its rules say it may: a stop is the
    run's last step, after ``patience`` warnings, with a best step inside the run; no stop means the run went all
    ``steps`` with fewer warnings in a row than it takes to act."""
    rows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["step"] > 0]
    mode = "gold" if g["gold"] else ("disagreement" if g["disagreement"] else "kl")
    proxy_key = f"reward/{g['proxy']}/mean" if g["proxy"] else "reward/mean"
    window, rise = g["window"], g["disagreement_rise"]
    proxies, golds, signals = [], [], []
    best, best_score, proxy_at_best, warnings, most = None, float("-inf"), float("-inf"), 0, 0
    for n, r in enumerate(rows, 1):
        assert r["reward/proxy"] == pytest.approx(r[proxy_key], rel=1e-6)  # the guard watched the configured reward
        proxies.append(r["reward/proxy"])
        p_s = _mean(proxies[-window:])
        assert r["guard/proxy_smooth"] == pytest.approx(p_s)
        g_s = s_s = baseline = None
        if mode == "gold":
            assert r["reward/gold"] == pytest.approx(r[f"reward/{g['gold']}/mean"])
            golds.append(r["reward/gold"])
            g_s = _mean(golds[-window:])
            assert r["guard/gold_smooth"] == pytest.approx(g_s)
            score = g_s
        elif mode == "disagreement":
            signals.append(r[f"reward/{g['disagreement']}/{g['signal']}"])
            s_s = _mean(signals[-window:])
            assert r["guard/disagreement_smooth"] == pytest.approx(s_s)
            if n >= g["baseline_steps"]:
                baseline = _mean(signals[: g["baseline_steps"]])
                assert r["guard/disagreement_baseline"] == pytest.approx(baseline)
            else:
                assert "guard/disagreement_baseline" not in r
            score = p_s if baseline is None or s_s <= baseline * (1 + rise) else None  # the proxy where still trusted
        else:
            score = p_s if g["kl_budget"] is None or r["kl"] <= g["kl_budget"] else None
        if score is not None and score > best_score:
            best, best_score, proxy_at_best = r["step"], score, p_s
        assert r["guard/best_step"] == best, (run_dir.name, r["step"])
        warning = False
        if n >= max(g["min_steps"], 1) and mode == "gold":
            warning = g_s < best_score - g["gold_tolerance"] * max(abs(best_score), 1e-8) and p_s > proxy_at_best
        elif n >= max(g["min_steps"], 1) and mode == "disagreement" and baseline is not None:
            warning = s_s > baseline * (1 + rise)
        warnings = warnings + 1 if warning else 0
        most = max(most, warnings)
        assert (r["guard/warning"], r["guard/warning_steps"]) == (float(warning), warnings), (run_dir.name, r["step"])
    acted = [r for r in rows if "guard/stop_reason" in r]
    if stop is None:
        assert acted == [] and not (run_dir / "guard.json").exists()
        assert [r["step"] for r in rows] == list(range(1, steps + 1))  # it ran to the end
        if mode == "disagreement" or (mode == "gold" and not (g["gao_confirms"] and g["fit_gao"])):
            assert most < g["patience"]
        elif mode == "gold":  # a fall in gold may wait for the fitted peak, but never past 3 × patience
            assert most < 3 * g["patience"]
    else:
        last = rows[-1]
        assert acted == [last] and stop["step"] == last["step"] <= steps  # it stopped the run where it acted
        assert (
            stop["stop_reason"]
            == last["guard/stop_reason"]
            == {"gold": "gold_vs_proxy", "disagreement": "disagreement", "kl": "kl_budget"}[mode]
        )
        if mode != "kl":
            assert last["guard/warning_steps"] >= g["patience"]
        assert stop["best_step"] == last["guard/best_step"] and 1 <= stop["best_step"] <= stop["step"]
        assert stop["action"] == g["action"]


def test_the_char_tokenizer_encodes_every_text_a_tiny_policy_can_write():
    """The reward model re-encodes the policy's decoded text: a blank line ("\\n\\n") must split into characters too."""
    from aha.models import DEFAULT_ALPHABET, char_tokenizer

    tok = char_tokenizer(DEFAULT_ALPHABET)
    text = "note on sea:\n\n glad sun!\n"
    assert tok.decode(tok(text).input_ids) == text and len(tok(text).input_ids) == len(text)
