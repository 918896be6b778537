"""pass@k of held-out evaluation where the answer is known in advance: a scripted engine whose greedy and sampled
completions are written by hand (aha.evaluation.evaluate), and ``aha eval --k`` with rewards that decide the verdict
without looking at what the random tiny model wrote."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from aha.cli import app
from aha.config import load_config
from aha.evaluation import evaluate
from aha.models import char_tokenizer
from aha.rollout import Rollouts
from aha.tasks import build_task

ROWS = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in (1, 2, 3, 4)]
GREEDY = {"1+1=": "2", "2+2=": "5", "3+3=": "7", "4+4=": "9"}  # right on the first row only
SAMPLES = {  # k = 4 samples per row
    "1+1=": ["3", "3", "3", "3"],  # greedy right, every sample wrong
    "2+2=": ["1", "2", "3", "4"],  # right at the last sample
    "3+3=": ["6", "0", "0", "0"],  # right at the first
    "4+4=": ["1", "1", "1", "1"],  # never
}


class ScriptedEngine:
    """Answers from :data:`GREEDY` / :data:`SAMPLES` by prompt, and records what it was asked for."""

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def generate(self, prompt_token_ids, n, sampling):
        self.calls.append((len(prompt_token_ids), n, sampling.greedy, sampling.temperature))
        texts = []
        for ids in prompt_token_ids:
            prompt = self.tok.decode(ids)
            texts += [GREEDY[prompt]] * n if sampling.greedy else SAMPLES[prompt][:n]
        comp = [self.tok(t).input_ids + [self.tok.eos_token_id] for t in texts]
        prompts = [ids for ids in prompt_token_ids for _ in range(n)]
        return Rollouts(prompts, comp, [[0.0] * len(c) for c in comp], ["stop"] * len(comp))


@pytest.mark.parametrize("batch_size", [256, 4, 5])
def test_pass_at_k_counts_a_row_right_when_any_of_its_k_samples_is(batch_size):
    tok = char_tokenizer("0123456789+=")
    engine = ScriptedEngine(tok)
    task = SimpleNamespace(name="sums", verifier="accuracy")
    out = evaluate(engine, tok, task, ROWS, "plain", max_new_tokens=3, k=4, temperature=0.7, batch_size=batch_size)
    assert out["correct"] == [True, False, False, False] and out["accuracy"] == 0.25  # greedy
    assert out["completions"] == ["2", "5", "7", "9"]
    assert out["pass@4"] == 0.5  # rows 2 and 3, not row 1 (its samples are all wrong)
    sampled = [c for c in engine.calls if not c[2]]
    assert sum(rows for rows, *_ in sampled) == len(ROWS)  # each row sampled once, in chunks of batch_size // k rows
    assert all(n == 4 and temperature == 0.7 for _, n, _, temperature in sampled)
    assert all(rows <= max(1, batch_size // 4) for rows, *_ in sampled)


def test_pass_at_k_needs_the_right_sample_among_the_first_k_and_k_1_reports_none():
    tok = char_tokenizer("0123456789+=")
    out = evaluate(ScriptedEngine(tok), tok, SimpleNamespace(name="sums"), ROWS, "plain", 3, k=3)
    assert out["pass@3"] == 0.25 and "pass@4" not in out  # "2+2=" is right only at its 4th sample
    plain = evaluate(ScriptedEngine(tok), tok, SimpleNamespace(name="sums"), ROWS, "plain", 3, k=1)
    assert not any(key.startswith("pass@") for key in plain) and plain["accuracy"] == 0.25


# ----------------------------------------------------------------------------- aha eval --k

BY_ANSWER = "def even(prompts, completions, answer, **kw):\n    return [float(int(a) % 2 == 0) for a in answer]\n"
# right for the 2nd..kth copy of a prompt: eval groups each row's samples, and held-out prompts are unique, so the
# greedy pass (each row once) is never right and every group of k >= 2 samples is
REPEATS = (
    "def repeats(prompts, completions, **kw):\n"
    "    return [float(i > 0 and prompts[i] == prompts[i - 1]) for i in range(len(prompts))]\n"
)


@pytest.fixture
def eval_cli(tmp_path, write_config):
    cfg = write_config({"task": {"digits": 1, "num_eval": 20}})

    def run(reward_source: str, name: str, *args: str) -> dict:
        (tmp_path / f"{name}.py").write_text(reward_source)
        result = CliRunner().invoke(
            app,
            [
                "eval",
                "tiny:layers=1,hidden=32,heads=2,ff=64",
                "-c",
                str(cfg),
                "--reward",
                f"{tmp_path / name}.py:{name}",
                "--limit",
                "10",
                *args,
            ],
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    run.rows = build_task(load_config(cfg).task).eval[:10]
    return run


def test_aha_eval_pass_at_k_equals_greedy_accuracy_when_the_verdict_depends_only_on_the_row(eval_cli):
    evens = sum(int(r["answer"]) % 2 == 0 for r in eval_cli.rows) / 10
    assert 0 < evens < 1  # (the check below tells the two apart)
    out = eval_cli(BY_ANSWER, "even", "--k", "4")
    assert out["n"] == 10 and out["accuracy"] == evens and out["pass@4"] == evens and out["reward_mean"] == evens


def test_aha_eval_pass_at_k_is_one_where_only_repeated_samples_are_right(eval_cli):
    assert len({r["prompt"] for r in eval_cli.rows}) == 10  # unique held-out prompts
    out = eval_cli(REPEATS, "repeats", "--k", "4", "--temperature", "0.5")
    assert out["accuracy"] == 0.0 and out["pass@4"] == 1.0
    once = eval_cli(REPEATS, "repeats")  # k = 1: greedy only, no pass@k
    assert once["accuracy"] == 0.0 and not any(key.startswith("pass@") for key in once)
