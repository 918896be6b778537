"""``aha demo rlhf``: the simulated human, the gold judge, and the whole demo in its quick setting (summary + report)."""

from __future__ import annotations

import json
import random

from aha.demos import rlhf_world as world
from aha.demos.rlhf import run_demo

KEYS = ("rm_accuracy", "gold_peak", "gold_final_unguarded", "gold_final_guarded", "proxy_final_unguarded",
        "wall_time_s", "guard_gold", "guard_ensemble", "gold_final_ensemble_guarded", "guard_support",
        "gold_final_support_guarded", "gold_start", "gold_peak_sqrt_kl")


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
    import yaml

    guards = {run: yaml.safe_load((tmp_path / f"rl-{run}" / "config.yaml").read_text())["guard"]
              for run in ("unguarded", "gold", "support", "ensemble")}
    assert guards["unguarded"]["gold"] is None and guards["unguarded"]["disagreement"] is None  # it only measures KL
    assert guards["gold"]["gold"] == "gold" and guards["support"]["signal"] == "support_distance"
    assert guards["ensemble"]["signal"] == "ensemble_std" and guards["ensemble"]["gold"] is None
    for run in ("rl-unguarded", "rl-gold", "rl-support", "rl-ensemble"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert all("kl" in r and "reward/gold/mean" in r for r in rows if r["step"] > 0)
        # the no-gold signals, beside the reward: the heads' disagreement and the distance from the RM's data
        assert all(r["reward/rm/ensemble_std"] > 0 and r["reward/rm/support_distance"] > 0 for r in rows if r["step"] > 0)


def test_the_char_tokenizer_encodes_every_text_a_tiny_policy_can_write():
    """The reward model re-encodes the policy's decoded text: a blank line ("\\n\\n") must split into characters too."""
    from aha.models import DEFAULT_ALPHABET, char_tokenizer

    tok = char_tokenizer(DEFAULT_ALPHABET)
    text = "note on sea:\n\n glad sun!\n"
    assert tok.decode(tok(text).input_ids) == text and len(tok(text).input_ids) == len(text)
