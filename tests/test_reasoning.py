"""The reasoning metrics (aha.track.reasoning) on hand-written completions, and their place in a run's metrics."""

from __future__ import annotations

import json

import pytest

from aha.track.reasoning import (
    REFLECTION_PHRASES,
    find_aha,
    judge,
    lenient_answer,
    reasoning_metrics,
    reflection_pattern,
    strict_answer,
)

PATTERN = reflection_pattern(REFLECTION_PHRASES)


@pytest.mark.parametrize(
    "text",
    [
        "Wait, that is not right.",
        "let me RECHECK the sum",
        "I should re-evaluate: 3+5",
        "Let me go over  the\nsteps once more",
        "Alternatively, add the tens first.",
        "However the units carry.",
        "to verify: 68-45 = 23",
        "I will try again.",
    ],
)
def test_reflection_detected(text):
    assert PATTERN.search(text)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 68.",
        "await the result",  # 'wait' inside a word
        "verified and done",  # another word form is not in the list
        "rechecking",
        "a waitress brought 68",
        "pre-evaluate",  # hyphenated prefix: not 're-evaluate' as a word
        "",
    ],
)
def test_reflection_not_detected(text):
    assert not PATTERN.search(text)


def test_reflection_phrases_are_configurable():
    mine = reflection_pattern(["hmm", "double check"])
    assert mine.search("Hmm, 68?") and mine.search("double   CHECK it")
    assert not mine.search("Wait, 68?")
    assert not reflection_pattern([]).search("wait recheck")


def test_answer_extraction():
    assert strict_answer("<think>23+45</think> <answer> 68 </answer>") == "68"
    assert strict_answer("<answer>1</answer> then <answer>2</answer>") == "2"  # the last block counts
    assert strict_answer("The answer is 68.") is None
    assert strict_answer("<answer>68") is None  # unclosed
    assert lenient_answer("23 + 45 = 68, final.") == "68"
    assert lenient_answer("<answer>68</answer> and 12") == "12"
    assert lenient_answer("no number") is None
    assert lenient_answer("total 1,234") == "1234"


def test_judge_strict_lenient_format():
    tagged = judge("<think>3+5=8, 2+4=6</think>\n<answer>68</answer>", "68", PATTERN, "23+45=")
    assert (tagged.format, tagged.strict_correct, tagged.lenient_correct, tagged.reflects) == (True, True, True, False)
    plain = judge("The answer is 68.", "68", PATTERN, "23+45=")
    assert (plain.format, plain.strict_correct, plain.lenient_correct) == (False, False, True)
    wrong_tag = judge("<think>x</think><answer>67</answer> or 68", "68", PATTERN)
    assert (wrong_tag.strict_correct, wrong_tag.lenient_correct) == (False, True)
    extra = judge("<think>x</think><answer>68</answer> more", "68", PATTERN)
    assert (extra.format, extra.strict_correct) == (False, True)  # right, but not the R1 shape
    no_gold = judge("<think>x</think><answer>68</answer>", None, PATTERN)
    assert no_gold.strict_correct is None and no_gold.format


# ----------------------------------------------------------------------------- the aha moment


AHA = [  # (completion, gold, prompt, answer before the reflection)
    (
        "<think>23+45 is 58. Wait, let me recheck: 3+5=8 and 2+4=6, so 68.</think> <answer>68</answer>",
        "68",
        "23+45=",
        "58",
    ),
    (
        "<think>17+25 = 32. Hmm, re-examine the units: 7+5=12, carry 1, so 42.</think><answer>42</answer>",
        "42",
        "17+25=",
        "32",
    ),
    (
        "<answer>31</answer> However, 19+12 carries: 31 is right? no, 1+1+1=3, 9+2=11 → 31. Hmm <answer>31</answer>",
        "31",
        "19+12=",
        None,
    ),  # not a correction: the same answer before and after
    ("The sum is 90. Alternatively count up: 45, 55, 65, 75, 85, 95. <answer>95</answer>", "95", "45+50=", "90"),
]


@pytest.mark.parametrize("text,gold,prompt,first", AHA)
def test_aha_moment(text, gold, prompt, first):
    moment = find_aha(text, gold, PATTERN, prompt)
    if first is None:
        assert moment is None
    else:
        assert moment is not None and moment.first_answer == first
        assert moment.final_answer == gold and PATTERN.fullmatch(moment.phrase)


@pytest.mark.parametrize(
    "text,gold,prompt,why",
    [
        (
            "23+45 = 58. Wait, let me recheck: 3+5=8, 2+4=6, so 67. <answer>67</answer>",
            "68",
            "23+45=",
            "corrected, but to a wrong answer",
        ),
        ("23+45 = 68. Let me verify: 68-45 = 23. <answer>68</answer>", "68", "23+45=", "verified, nothing changed"),
        ("Wait, 23+45: 3+5=8, 2+4=6. <answer>68</answer>", "68", "23+45=", "reflects before any answer"),
        ("23+45 = 58, so 3+5=8, then 68. <answer>68</answer>", "68", "23+45=", "no reflection phrase"),
        (
            "Let me add 23 and 45. Wait, carefully: 68. <answer>68</answer>",
            "68",
            "23+45=",
            "only the operands came before the reflection",
        ),
    ],
)
def test_not_an_aha_moment(text, gold, prompt, why):
    assert find_aha(text, gold, PATTERN, prompt) is None, why


def test_batch_metrics_by_hand():
    texts = [
        "<think>2+2</think> <answer>4</answer>",  # format, right, no reflection: 5 tokens
        "<think>2+2=5. Wait, no: 4</think> <answer>4</answer>",  # format, right, reflects, aha: 11 tokens
        "Wait, it is 5",  # wrong, reflects, lenient wrong: 4 tokens
        "it is 4",  # strict wrong, lenient right: 2 tokens
    ]
    js = [judge(t, "4", PATTERN, "2+2=") for t in texts]
    m = reasoning_metrics(js, [5, 11, 4, 2])
    assert m["reasoning/format"] == 0.5
    assert m["reasoning/accuracy_strict"] == 0.5 and m["reasoning/accuracy_lenient"] == 0.75
    assert m["reasoning/reflection_rate"] == 0.5
    assert m["reasoning/accuracy_reflecting"] == 0.5 and m["reasoning/accuracy_not_reflecting"] == 0.5
    assert m["reasoning/length_correct"] == 8.0 and m["reasoning/length_wrong"] == 3.0
    assert m["reasoning/aha_rate"] == 0.25
    none_reflect = reasoning_metrics([js[0]], [5])
    assert none_reflect["reasoning/accuracy_reflecting"] is None  # a mean over nothing is not 0


# ----------------------------------------------------------------------------- in a run


def test_reasoning_metrics_every_step_of_a_run(tmp_path, write_config):
    """A 2-step run with the switch on: every step's metrics.jsonl line has the reasoning keys, eval has its own.
    (The same run checks task.response_prefix: the logged completions start with it.)"""
    from typer.testing import CliRunner

    from aha.cli import app

    cfg = write_config(
        {"log": {"reasoning_metrics": True, "eval_every": 2, "samples_per_step": 16}, "task": {"response_prefix": "="}}
    )  # 16: every completion of a step (4 prompts × 4)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["completion"].startswith("=") for s in samples)
    for r in steps:
        # a 1-digit-sum tiny model writes no tags: strict accuracy is 0, lenient is its accuracy
        assert r["reasoning/accuracy_strict"] == 0.0 and r["reasoning/format"] == 0.0
        assert (r["reasoning/length_correct"] is None) and r["reasoning/length_wrong"] > 0
        # its alphabet is digits, '+' and '=': no reflection phrase can be written, so no aha moment either
        assert r["reasoning/reflection_rate"] == 0.0 and r["reasoning/aha_rate"] == 0.0
        # lenient: the last number the model wrote outside a copy of the prompt is the sum, over the step's 16
        done = [s for s in samples if s["step"] == r["step"]]
        assert len(done) == 16
        right = [
            lenient_answer(s["completion"], s["prompt"]) == str(sum(map(int, s["prompt"].rstrip("=").split("+"))))
            for s in done
        ]
        assert r["reasoning/accuracy_lenient"] == pytest.approx(sum(right) / 16)
    evals = [r for r in rows if "eval/accuracy" in r]
    assert evals and all("eval/reasoning/accuracy_lenient" in r and "eval/reasoning/format" in r for r in evals)
    # aha eval reports the same metrics for the checkpoint (the run's config.yaml has the switch on)
    ev = CliRunner().invoke(app, ["eval", str(out / "checkpoints" / "step-2" / "model"), "--limit", "5"])
    assert ev.exit_code == 0, ev.output
    shown = json.loads(ev.output.strip().splitlines()[-1])
    assert shown["n"] == 5 and {"reasoning/accuracy_strict", "reasoning/reflection_rate"} <= set(shown)
    assert "lengths" not in shown and "completions" not in shown


def test_reasoning_metrics_off_by_default_for_plain_runs(tmp_path, write_config):
    from typer.testing import CliRunner

    from aha.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(write_config()), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not any(
        k.startswith("reasoning/")
        for line in (out / "metrics.jsonl").read_text().splitlines()
        for k in json.loads(line)
    )


# ----------------------------------------------------------------------------- report and demo


def test_report_draws_reasoning_and_lists_aha_moments_in_step_order(tmp_path):
    from aha.track.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "reward/mean": 0.1 * s,
                    "reasoning/format": 0.2 * s,
                    "reasoning/accuracy_strict": 0.1 * s,
                    "reasoning/reflection_rate": 0.05,
                    "reasoning/length_correct": 20 + s,
                }
            )
            + "\n"
            for s in range(1, 5)
        )
    )
    moment = {"phrase": "Wait", "first_answer": "58", "final_answer": "68"}
    samples = [
        {"step": 3, "prompt": "23+45=", "completion": "<think>58. Wait <b>68</b></think>", "aha": moment},
        {"step": 1, "prompt": "1+1=", "completion": "2"},
        {"step": 2, "prompt": "17+25=", "completion": "32. However 42", "aha": {**moment, "final_answer": "42"}},
    ]
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    html = write_report(run).read_text()
    assert "<h2>Reasoning</h2>" in html and "<h2>Aha moments</h2>" in html
    section = html.split("<h2>Aha moments</h2>")[1].split("<h2>")[0]
    assert section.index("17+25=") < section.index("23+45=")  # step 2 before step 3
    assert "58</b> → 68" not in section and "&lt;b&gt;68&lt;/b&gt;" in section  # escaped
    assert "The first 2 of 2 logged aha moments" in section


def test_report_without_reasoning_metrics_has_no_reasoning_section(tmp_path):
    from aha.track.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.5}) + "\n")
    assert "Aha moments" not in write_report(run).read_text()


def test_recipe_is_the_demo_config():
    from pathlib import Path

    from aha.config import load_config
    from aha.demos.r1 import demo_config

    recipe = load_config(Path(__file__).parent.parent / "recipes" / "r1-zero-smollm2.yaml")
    assert recipe.model_dump() == demo_config(0).model_dump()


def test_demo_writes_base_and_trained_metrics(tmp_path, write_config):
    """The demo's flow on a tiny model (the R1 prompt needs SmolLM2's vocabulary; here the switch turns the metrics
    on for a plain template): both evals, the summary and a report with the reasoning section."""
    from aha.config import load_config
    from aha.demos.r1 import run_demo

    cfg = load_config(write_config({"log": {"reasoning_metrics": True, "eval_every": 2}}))
    summary = run_demo(tmp_path / "demo", 0, cfg)
    rows = [json.loads(line) for line in (tmp_path / "demo" / "rl" / "metrics.jsonl").read_text().splitlines()]
    evals = {"base": rows[0], "trained": rows[-1]}  # step 0 (the base model) and the last step (the trained one)
    assert [rows[0]["step"], rows[-1]["step"]] == [0, 2]
    for when in ("base", "trained"):
        assert set(summary[when]) >= {"accuracy_strict", "accuracy_lenient", "format", "reflection_rate"}
        # greedy, the same weights and held-out rows: what the run's own eval logged for that model
        assert summary[when]["accuracy"] == evals[when]["eval/accuracy"]
        assert summary[when]["accuracy_lenient"] == evals[when]["eval/reasoning/accuracy_lenient"]
        assert summary[when]["format"] == evals[when]["eval/reasoning/format"]
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["steps"] == 2
    assert "<h2>Reasoning</h2>" in (tmp_path / "demo" / "report.html").read_text()


class _CharTokenizer:  # enough of a tokenizer for render_prompt: one id per character, no chat template
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_r1_plain_template_is_the_r1_zero_text_prompt():
    from aha.data.templates import render_prompt, resolve_template

    tok = _CharTokenizer()
    assert resolve_template("r1_plain", tok) == "r1_plain"  # no chat template needed
    text = "".join(map(chr, render_prompt("23+45=", tok, "r1_plain")))
    assert (
        text.startswith("A conversation between User and Assistant.")
        and "<think> reasoning process here </think>" in text
    )
    assert text.endswith("User: 23+45=\nAssistant:")
    chat = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "23+45="}]
    assert "".join(map(chr, render_prompt(chat, tok, "r1_plain"))) == text
    assert "".join(map(chr, render_prompt("23+45=", tok, "r1_plain", "<think>"))) == text + "<think>"


def test_reasoning_switch():
    from aha.tasks import Task
    from aha.track.reasoning import reasoning_meter

    task = Task("t", [], [])
    assert reasoning_meter(*_meter_args(["task.template=r1"]), task) is not None
    assert reasoning_meter(*_meter_args(["task.template=r1_plain"]), task) is not None
    assert reasoning_meter(*_meter_args(["task.template=chat"]), task) is None
    assert reasoning_meter(*_meter_args(["task.template=r1", "log.reasoning_metrics=false"]), task) is None
    meter = reasoning_meter(*_meter_args(["log.reasoning_metrics=true", "task.reflection_phrases=[hmm]"]), task)
    assert [j.reflects for j in meter.judge(["p", "p"], ["Hmm, 4", "Wait, 4"], ["4", "4"])] == [True, False]
    countdown = reasoning_meter(*_meter_args(["task.template=r1"]), Task("c", [], [], verifier="countdown"))
    assert countdown.judge(["p"], ["<think>x</think><answer>5</answer>"], ["5"])[0].strict_correct is None


def _meter_args(overrides: list[str]) -> tuple:
    """What a run hands :func:`aha.track.reasoning.reasoning_meter`: ``log.reasoning_metrics`` and the task section."""
    from aha.config import load_config

    cfg = load_config(None, overrides)
    return cfg.log.reasoning_metrics, cfg.task
