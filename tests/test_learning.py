"""Learning tests: RL raises held-out accuracy and the reward, each claim read from runs made once per module and
shared by the tests that read them (marked slow: about three minutes in all on 2 cores).

- the demo (teacher → SFT → GRPO, its defaults): RL goes past the teacher, SFT does not;
- PPO (separate critic, GAE, as in recipes/arithmetic-tiny-ppo.yaml) from the demo's SFT checkpoint, on the demo's RL
  settings: it goes past the teacher too, and its critic learns;
- recipes/arithmetic-tiny.yaml (GRPO after its own imitation steps), shortened to 150 steps: the
  held-out accuracy and the reward rise, with μ = 2 clipping engaged on the way.
"""

import json

import pytest
from conftest import merge

from aha.config import RunConfig, load_config
from aha.demos.alphago import demo_config, run_demo
from aha.rl import train_rl

pytestmark = pytest.mark.slow


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _evals(rows) -> list[tuple[int, float]]:
    return [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]


def _mean(rows, key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values)


# ----------------------------------------------------------------------------- the demo, and PPO from its SFT model


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``(out, summary)`` of ``aha demo`` at its defaults (seed 0)."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, seed=0)


def test_demo_rl_surpasses_the_teacher_sft_does_not(demo):
    """The AlphaGo lesson: SFT lands near the teacher (not above it), RL goes well past it."""
    out, s = demo
    assert s["rl_accuracy"] >= s["teacher_accuracy"] + 0.25
    assert s["teacher_accuracy"] - 0.20 <= s["sft_accuracy"] <= s["teacher_accuracy"] + 0.05
    # the teacher's blind spot is where RL wins: SFT copies the dropped carry, RL fixes it
    assert s["per_class"]["sft"]["carry into hundreds"] < 0.2 < 0.8 < s["per_class"]["rl"]["carry into hundreds"]
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()


# PPO's sections of recipes/arithmetic-tiny-ppo.yaml: a separate critic initialised from the policy, GAE(γ = 1, λ = 0.95)
PPO = {
    "rl": {"algo": "ppo", "num_minibatches": 1, "gamma": 1.0, "lam": 0.95, "epsilon_high": 0.28},
    "critic": {"kind": "separate", "init_from": "policy", "vf_coef": 0.5, "clip_range": 0.2},
    "train": {"steps": 30},
    "log": {"eval_every": 10},
}


@pytest.fixture(scope="module")
def ppo_after_sft(demo):
    """``(summary of the demo, metrics rows)`` of PPO run on the demo's RL settings from the demo's SFT checkpoint."""
    out, summary = demo
    _, grpo = demo_config(out, seed=0)  # what the demo's RL ran: init_from its SFT checkpoint, task, batch, lr
    cfg = RunConfig.model_validate(merge(grpo.model_dump(mode="json", exclude_unset=True), PPO))
    assert cfg.init_from == out / "sft" / "checkpoints" / "step-600" / "model" and cfg.rl.algo == "ppo"
    train_rl(cfg, out / "ppo")
    return summary, _rows(out / "ppo")


def test_ppo_from_the_sft_model_goes_past_the_teacher_too(ppo_after_sft):
    summary, rows = ppo_after_sft
    evals = _evals(rows)
    (first, start), (last, end) = evals[0], evals[-1]
    assert (first, last) == (0, 30)
    assert start == pytest.approx(summary["sft_accuracy"], abs=0.01)  # step 0 is the SFT model, greedy, same rows
    assert end >= start + 0.30, f"eval/accuracy went {evals}"
    assert end >= summary["teacher_accuracy"] + 0.25, f"eval/accuracy went {evals}"


def test_ppo_critic_learns_the_value_of_the_rising_reward(ppo_after_sft):
    """The value loss falls, and the value estimates follow the reward up (they start from a fresh value head)."""
    _, rows = ppo_after_sft
    steps = [r for r in rows if "loss/value" in r]
    first, late = steps[:5], steps[-10:]
    assert _mean(late, "reward/mean") > _mean(first, "reward/mean") + 0.2  # the reward the critic must follow rose
    assert _mean(late, "loss/value") < _mean(first, "loss/value") / 2
    assert _mean(late, "value/mean") > _mean(first, "value/mean") + 0.3
    assert _mean(late, "value/explained_variance") > _mean(first, "value/explained_variance")


# ----------------------------------------------------------------------------- the GRPO recipe after its imitation steps

GRPO_STEPS = 150  # of the recipe's 500 (its cosine schedule then decays over 150)


@pytest.fixture(scope="module")
def grpo_recipe(tmp_path_factory) -> list[dict]:
    """The metrics rows of recipes/arithmetic-tiny.yaml run for GRPO_STEPS steps."""
    out = tmp_path_factory.mktemp("grpo")
    cfg = load_config(
        "recipes/arithmetic-tiny.yaml",
        ["log.progress=false", "log.tensorboard=false", "log.save_every=0", "train.precision=fp32"]
        + [f"train.steps={GRPO_STEPS}"],
    )
    train_rl(cfg, out)
    return _rows(out)


def test_grpo_recipe_raises_held_out_accuracy(grpo_recipe):
    """The held-out greedy accuracy over the last 50 steps (5 evals) stands ≥ 12 points above the first 50's (from
    the model after the recipe's imitation steps). Where the imitation lands depends on the CPU's float rounding (its
    180 steps amplify it): 0.445 at step 0 on an AVX2 EPYC (then +0.31), 0.60 on an AVX-512 Xeon (then +0.17, nearer
    the ceiling this many steps reach). A mean of 5 evals on each side, not the one at step 0, keeps one eval's noise
    (±0.03 on 200 prompts) out of the comparison."""
    evals = _evals(grpo_recipe)
    assert evals[0][0] == 0 and evals[-1][0] == GRPO_STEPS
    early, late = [acc for _, acc in evals[:5]], [acc for _, acc in evals[-5:]]
    assert sum(late) / len(late) >= sum(early) / len(early) + 0.12, f"eval/accuracy went {evals}"


def test_grpo_recipe_raises_the_reward_clipping_on_the_way(grpo_recipe):
    steps = [r for r in grpo_recipe if "reward/mean" in r]
    assert _mean(steps[-20:], "reward/mean") > _mean(steps[:20], "reward/mean") + 0.12
    assert any(r["clip_ratio"] > 0 for r in steps), "μ = 2 should engage the clip on the second pass"
