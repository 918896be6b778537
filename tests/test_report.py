"""The run report: a self-contained HTML page with plots, samples (escaped) and the summary."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from browser import headless_page

from aha.track.report import load_metrics, pick_samples, write_report

STEPS = 30
TRICKY = "<think>3 & 4</think> so <answer>7</answer>"
# plots expected for the keys make_run writes: reward, eval/accuracy, completions/mean_length,
# kl, entropy, clip_ratio, plus the "other metrics" grid
EXPECTED_PLOTS = 7


def make_run(run_dir: Path) -> Path:
    """A synthetic 30-step GRPO run: eval every 10 steps, a killed process's half-written last line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(
        "model: tiny:llama-2l\ntask: arithmetic\nrl:\n  algo: grpo\n  beta: 0.04\n  group_size: 8\n"
        '  note: "<b>not bold</b>"\n'
    )
    lines = []
    for step in range(1, STEPS + 1):
        reward = 0.2 + 0.6 * step / STEPS
        row = {
            "step": step,
            "reward/mean": reward,
            "reward/std": 0.3 - 0.005 * step,
            "reward/accuracy/mean": reward - 0.1,
            "reward/format/mean": min(1.0, 0.5 + step / 40),
            "completions/mean_length": 60 - step,
            "completions/clipped_ratio": 0.1 / step,
            "kl": 0.001 * step,
            "entropy": 1.5 - 0.02 * step,
            "clip_ratio": 0.02 * math.sin(step) ** 2,
            "loss/policy": 0.1 * math.cos(step),
            "grad_norm": 1.0 / math.sqrt(step),
            "lr": 1e-5,
            "time/rollout_s": 2.0,
            "time/train_s": 1.0,
            "throughput/tokens_per_s": 900 + step,
            "frac_reward_zero_std": 0.5 - step / 100,
        }
        lines.append(json.dumps(row))
        if step % 10 == 0:
            lines.append(json.dumps({"step": step, "eval/accuracy": reward - 0.15}))
    lines.append('{"step": 31, "reward/mean": 0.9, "k')  # truncated: the process was killed mid-write
    (run_dir / "metrics.jsonl").write_text("\n".join(lines))

    samples = []
    for step in (1, 8, 15, 22, 30):
        for i, completion in enumerate([f"step {step}: the answer is {step}", TRICKY if step == 1 else "no idea"]):
            reward = 1.0 - i
            samples.append(
                {
                    "step": step,
                    "prompt": f"What is {step} + 0? Use <answer></answer>.",
                    "completion": completion,
                    "reward": reward,
                    "rewards": {"accuracy": reward, "format": None},
                    "answer": str(step),
                }
            )
    (run_dir / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "teacher_accuracy": 0.91,
                "sft_accuracy": 0.42,
                "rl_accuracy": 0.77,
                "rl_accuracy_by_class": {"easy": 0.95, "hard": 0.5},
                "wall_time_s": 312.5,
            }
        )
    )
    return run_dir


@pytest.fixture
def report(tmp_path) -> Path:
    return write_report(make_run(tmp_path / "run-grpo"))


def test_metrics_skip_truncated_line_and_keep_sparse_eval(tmp_path):
    metrics = load_metrics(make_run(tmp_path / "run"))
    assert metrics["reward/mean"][0] == list(range(1, STEPS + 1))  # step 31 was half-written
    assert metrics["eval/accuracy"][0] == [10, 20, 30]
    assert metrics["eval/accuracy"][1][0] == pytest.approx(0.2 + 0.6 * 10 / 30 - 0.15)


def test_samples_spread_over_the_run():
    samples = [{"step": s, "reward": r, "completion": f"{s}/{r}"} for s in range(0, 100, 5) for r in (0.0, 0.5, 1.0)]
    picked = pick_samples(samples)
    assert [step for step, _ in picked] == [0, 30, 65, 95]  # first, two middle, last
    assert [s["reward"] for s in picked[0][1]] == [1.0, 0.0]  # best and worst at each step


def test_report_is_self_contained_and_escaped(report):
    html = report.read_text()
    assert report.name == "report.html"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external resource"
    assert "http://" not in html and "https://" not in html
    assert "&lt;think&gt;3 &amp; 4&lt;/think&gt;" in html
    assert "<think>" not in html and "<b>not bold</b>" not in html  # config is escaped too
    assert html.count("data:image/png;base64,") == EXPECTED_PLOTS
    assert "run-grpo" in html and "rl_accuracy" in html


def test_report_tolerates_missing_files(tmp_path):
    run_dir = tmp_path / "empty-run"
    run_dir.mkdir()
    out = write_report(run_dir, tmp_path / "elsewhere" / "r.html")
    html = out.read_text()
    assert out.exists() and "No metrics.jsonl" in html and "No samples.jsonl" in html
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_sft_run_plots_only_what_it_logged(tmp_path):
    run_dir = tmp_path / "sft"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps({"step": s, "loss/sft": 2.0 / s, "lr": 1e-4, "eval/accuracy": 0.1 * s}) for s in range(1, 6)
        )
    )
    html = write_report(run_dir).read_text()
    assert html.count("data:image/png;base64,") == 2  # eval/accuracy + other metrics (loss/sft, lr)
    assert "alt='Reward'" not in html


@pytest.mark.browser
def test_report_renders_in_chromium(report):
    with headless_page(block_network=True) as page:
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({alt: e.alt, w: e.naturalWidth, shown: e.getBoundingClientRect().width}))"
        )
        assert len(images) >= EXPECTED_PLOTS
        for img in images:
            assert img["w"] > 0, f"plot {img['alt']} did not decode"
            assert img["shown"] >= 400, f"plot {img['alt']} squashed to {img['shown']}px"

        samples = page.inner_text("table.samples")
        assert "<think>3 & 4</think>" in samples  # shown literally, not parsed as tags
        assert page.locator("table.samples think").count() == 0
        summary = page.inner_text("table.summary")
        assert "rl_accuracy" in summary and "0.77" in summary
        assert "group_size: 8" in page.inner_text("pre.config")

        page.screenshot(path="/tmp/report.png", full_page=True)
        assert page.errors == []
