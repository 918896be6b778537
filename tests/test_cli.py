"""The ``aha`` command as a user meets it: mistakes end in one line naming the field, file or function
(never a traceback); a good tiny run writes the run directory DESIGN.md promises; ``aha eval`` reads it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, aha, merge, one_line_error

STEP_KEYS = {
    "reward/mean",
    "reward/std",
    "reward/accuracy/mean",
    "completions/mean_length",
    "completions/clipped_ratio",
    "frac_reward_zero_std",
    "entropy",
    "clip_ratio",
    "loss/policy",
    "grad_norm",
    "lr",
    "time/rollout_s",
    "time/train_s",
    "throughput/tokens_per_s",
    "kl",
    "train/skipped_steps",
}


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("where", ["--set", "yaml"])
def test_misspelled_field_names_it_and_lists_the_allowed_ones(tmp_path, write_config, where):
    if where == "--set":
        result = aha("train", write_config(), "-o", tmp_path / "run", "--set", "rl.betta=0.1")
    else:
        result = aha("train", write_config({"rl": {"betta": 0.1}}), "-o", tmp_path / "run")
    line = one_line_error(result)
    assert "rl.betta" in line and "unknown field" in line
    allowed = line.split("allowed:")[1]
    assert "beta" in allowed.replace(",", " ").split() and "mu" in allowed
    assert not (tmp_path / "run").exists()


def test_out_of_range_value_names_the_field(tmp_path, write_config):
    line = one_line_error(aha("train", write_config(), "-o", tmp_path / "run", "--set", "rl.mu=0"))
    assert "rl.mu" in line and "greater than or equal to 1" in line


def test_missing_model_path_names_the_path(tmp_path, write_config):
    line = one_line_error(
        aha("train", write_config(), "-o", tmp_path / "run", "--set", "model.name=/nonexistent/model")
    )
    assert "/nonexistent/model" in line and "model.name" in line


def test_jsonl_row_without_prompt_names_file_and_line(tmp_path, write_config):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": "4"}\n')
    result = aha("train", write_config({"task": {"name": "dataset", "path": str(data)}}), "-o", tmp_path / "run")
    line = one_line_error(result)
    assert f"{data}:2:" in line and "'prompt'" in line


def _jsonl(tmp_path: Path, content: bytes) -> dict:
    (tmp_path / "data.jsonl").write_bytes(content)
    return {"task": {"name": "dataset", "path": str(tmp_path / "data.jsonl")}}


GOOD_ROWS = b"".join(b'{"prompt": "%d+1=", "answer": "%d"}\n' % (i, i + 1) for i in range(10))

# (what the user got wrong, the YAML changes, --set overrides, words the one line must hold)
MISTAKES = [
    ("AdamW betas out of range", {}, ["train.adam_betas=[5, 2]"], ["train.adam_betas", "less than 1"]),
    ("an unknown device", {}, ["train.device=tpu"], ["train.device", "tpu"]),
    ("a NaN reward weight", {"rewards": [{"name": "accuracy", "weight": float("nan")}]}, [], ["weight", "finite"]),
    ("a --set value that is not YAML", {}, ["rl.beta=["], ["rl.beta=[", "not valid YAML"]),
    ("a tiny model with no heads", {}, ["model.name=tiny:heads=0"], ["heads", "at least 1"]),
    ("a chat template on a model without one", {}, ["task.template=chat"], ["task.template", "no chat template"]),
    ("a JSONL file that is not UTF-8", "latin-1", [], ["not UTF-8"]),
    ("a prompt that is a number", "number", [], ["row 1", "'prompt' must be text"]),
    ("too few rows to hold any out", "three rows", [], ["no held-out rows", "task.eval_path"]),
    ("a character the tiny model has no token for", "unknown character", [], ["cannot be tokenized", "'é'"]),
    ("an init_from that does not exist", {"init_from": "/nonexistent/ckpt"}, [], ["init_from", "/nonexistent/ckpt"]),
    (
        "trainer ranks without Ray",
        {},
        ["distributed.trainers=2"],
        ["distributed.trainers=2", "distributed.backend: ray"],
    ),
    (
        "trainer ranks with a critic",
        {"distributed": {"backend": "ray", "trainers": 2}},
        ["rl.algo=ppo"],
        ["distributed.trainers=2", "critic", "'ppo'"],
    ),
    (
        "trainer ranks with LoRA",
        {"distributed": {"backend": "ray", "trainers": 2}},
        ["model.lora.enabled=true"],
        ["distributed.trainers=2", "LoRA"],
    ),
]


@pytest.mark.parametrize("what, extra, overrides, words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_more_mistakes_end_in_one_line_that_names_them(tmp_path, write_config, what, extra, overrides, words):
    if isinstance(extra, str):  # a JSONL dataset with the mistake in it
        extra = _jsonl(
            tmp_path,
            {
                "latin-1": GOOD_ROWS + '{"prompt": "é+1="}\n'.encode("latin-1"),
                "number": b'{"prompt": 3, "answer": "4"}\n' + GOOD_ROWS,
                "three rows": b"".join(GOOD_ROWS.splitlines(keepends=True)[:3]),
                "unknown character": GOOD_ROWS + '{"prompt": "é+1=", "answer": "2"}\n'.encode(),
            }[extra],
        )
        extra["task"]["template"] = "plain"
    args = [x for o in overrides for x in ("--set", o)]
    line = one_line_error(aha("train", write_config(extra), "-o", tmp_path / "run", *args))
    assert all(w in line for w in words), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_out_path_that_is_a_file_and_a_report_of_no_run_are_one_line(tmp_path, write_config):
    (tmp_path / "file").write_text("mine")
    assert "is a file" in one_line_error(aha("train", write_config(), "-o", tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "mine"
    assert "cannot create it" in one_line_error(aha("train", write_config(), "-o", tmp_path / "file" / "run"))
    (tmp_path / "latin.yaml").write_bytes("# café\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(aha("train", tmp_path / "latin.yaml", "-o", tmp_path / "run"))
    assert "does not exist" in one_line_error(aha("report", tmp_path / "nope"))
    assert "not a directory" in one_line_error(aha("report", tmp_path / "file"))


def test_missing_config_file_names_it(tmp_path):
    line = one_line_error(aha("train", tmp_path / "nope.yaml", "-o", tmp_path / "run"))
    assert "config file not found" in line and "nope.yaml" in line


def test_resume_without_checkpoints_is_one_line(tmp_path, write_config):
    line = one_line_error(aha("train", write_config(), "-o", tmp_path / "run", "--resume"))
    assert "--resume" in line and "no complete checkpoint" in line


def test_real_entry_point_prints_no_traceback(tmp_path, write_config):
    """The installed ``aha`` script, in its own process: what a user's terminal shows."""
    exe = Path(sys.executable).with_name("aha")
    assert exe.is_file(), exe
    proc = subprocess.run(
        [str(exe), "train", str(write_config()), "-o", str(tmp_path / "run"), "--set", "rl.betta=0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "rl.betta" in lines[0], proc.stderr


def test_failing_reward_function_names_it_and_a_sample_unless_skipped(tmp_path, write_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "bad_reward.py").write_text(
        'def bad(prompts, completions, **kw):\n    raise ValueError("boom")\n'
    )
    cfg = write_config({"train": {"steps": 1}, "log": {"eval_every": 0}})
    bad = ["--set", "rewards=[{name: tmp/bad_reward.py:bad}]"]

    line = one_line_error(aha("train", cfg, "-o", tmp_path / "run", *bad))
    assert "reward function 'bad'" in line and "sample 0" in line and "completion" in line
    assert "ValueError: boom" in line

    result = aha("train", cfg, "-o", tmp_path / "run2", *bad, "--set", "rl.reward_on_error=skip")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    n = TINY["rl"]["prompts_per_step"] * TINY["rollout"]["group_size"]
    assert row["reward/skipped_samples"] == n and row["reward/mean"] == 0.0
    assert "kl" not in row  # β = 0: no reference model, no KL to log


# ----------------------------------------------------------------------------- help and config


def test_config_show_lists_fields_with_descriptions():
    result = aha("config", "show", "--set", "rl.beta=0.04")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    i = lines.index("rl.beta = 0.04")
    assert "KL coefficient" in lines[i + 1]
    assert any(line.startswith("rl.reward_on_error = ") for line in lines)


def test_train_help():
    result = aha("train", "--help")
    assert result.exit_code == 0
    assert "--set" in result.stdout and "--resume" in result.stdout and "--out" in result.stdout


# ----------------------------------------------------------------------------- a good run


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """``aha train`` for 2 steps with β overridden on the command line."""
    root = tmp_path_factory.mktemp("good")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(merge(TINY, {"log": {"save_every": 1, "samples_per_step": 3}})))
    result = aha("train", cfg, "-o", root / "run", "--set", "rl.beta=0.04")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"done: {root / 'run'}")
    return root / "run"


def test_good_run_writes_resolved_config(good_run):
    cfg = yaml.safe_load((good_run / "config.yaml").read_text())
    assert cfg["rl"]["beta"] == 0.04  # the --set override
    assert cfg["task"]["digits"] == 1  # the YAML
    assert cfg["rl"]["loss_type"] == "dapo"  # a default, resolved


def test_good_run_metrics_have_the_design_keys(good_run):
    rows = [json.loads(line) for line in (good_run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in row for row in rows)
    assert [row["step"] for row in rows] == [0, 1, 2]
    # step 0 is the starting model, evaluated before any update: what aha.evaluate says of that model
    import aha

    start = aha.evaluate(TINY["model"]["name"], good_run / "config.yaml")
    assert start["n"] == TINY["task"]["num_eval"] and rows[0]["eval/accuracy"] == start["accuracy"]
    assert not STEP_KEYS & rows[0].keys()  # and nothing was trained at step 0
    for row in rows[1:]:
        assert STEP_KEYS <= row.keys(), STEP_KEYS - row.keys()
        assert row["lr"] == TINY["train"]["lr"]
    assert "eval/accuracy" in rows[2]  # the last step is always evaluated


def test_good_run_samples(good_run):
    rows = [json.loads(line) for line in (good_run / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3
    for row in rows:
        assert {"prompt", "completion", "reward", "rewards", "step"} <= row.keys()
        assert row["prompt"].endswith("=") and set(row["rewards"]) == {"accuracy"}
    assert [row["step"] for row in rows] == [1, 1, 1, 2, 2, 2]


def test_checkpoint_loads_with_plain_transformers_and_generates(good_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = good_run / "checkpoints" / "step-2" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("3+4=", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "3+4="
    out = model.generate(
        ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert out.shape[1] > ids.shape[1]
    # the same greedy completion aha's own sampler writes from these weights (the run's max_new_tokens is 3 too)
    import aha

    ours = aha.evaluate(model_dir, dataset=[{"prompt": "3+4=", "answer": "7"}])["completions"]
    assert [tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)] == ours


def test_eval_finds_the_runs_config(good_run):
    model_dir = good_run / "checkpoints" / "step-2" / "model"
    result = aha("eval", model_dir)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # n = 20 is the run's task.num_eval (the default is 200): the run's config.yaml was found
    assert report["task"] == "arithmetic" and report["n"] == TINY["task"]["num_eval"]
    # greedy, same weights, same held-out rows: the accuracy the run logged at step 2
    last = json.loads((good_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["accuracy"] == last["eval/accuracy"]


# ----------------------------------------------------------------------------- an existing run directory


def test_a_run_directory_that_holds_a_run_is_not_overwritten_unless_asked(tmp_path, write_config):
    """Training again into --out without --resume would delete the earlier run's metrics and mix its checkpoints
    with the new ones: it stops with one line and the earlier run stays byte for byte; --overwrite starts afresh
    and leaves nothing of the earlier run behind."""
    out = tmp_path / "run"
    first = aha("train", write_config(), "-o", out, "--set", "train.steps=2", "--set", "log.save_every=1")
    assert first.exit_code == 0, first.output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("checkpoints/step-2/trainer_state.pt") in before and Path("metrics.jsonl") in before

    line = one_line_error(aha("train", write_config(), "-o", out, "--set", "train.steps=1"))
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert "choose one" in one_line_error(aha("train", write_config(), "-o", out, "--resume", "--overwrite"))

    again = aha(
        "train", write_config(), "-o", out, "--set", "train.steps=1", "--set", "log.save_every=1", "--overwrite"
    )
    assert again.exit_code == 0, again.output
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]  # the earlier run's step-2 is gone
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


@pytest.mark.parametrize("damage", ["truncated state", "empty state", "truncated weights"])
def test_resuming_past_a_damaged_checkpoint_says_so_and_keeps_it_aside(tmp_path, write_config, damage):
    """A checkpoint damaged after it was written is named in one line, set aside (not deleted), and the run resumes
    from the newest intact one (every kind of damage and the manifest: tests/test_faults.py)."""
    out = tmp_path / "run"
    assert aha("train", write_config(), "-o", out, "--set", "log.save_every=1").exit_code == 0
    newest = out / "checkpoints" / "step-2"
    path = newest / ("model/model.safetensors" if damage == "truncated weights" else "trainer_state.pt")
    damaged = b"" if damage == "empty state" else path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(damaged)
    result = aha("train", write_config(), "-o", out, "--resume")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    said = [line for line in result.output.splitlines() if "is damaged" in line]
    assert len(said) == 1 and str(newest) in said[0] and "resuming from step-1" in said[0], result.output
    aside = out / "checkpoints" / "damaged-step-2"
    assert (aside / path.relative_to(newest)).read_bytes() == damaged  # kept as it was, for a look
    assert (out / "checkpoints" / "step-2" / "manifest.json").is_file()  # step 2 trained again and saved whole


def test_resuming_from_a_foreign_checkpoint_is_one_line_and_changes_nothing(tmp_path, write_config):
    out = tmp_path / "run"
    assert aha("train", write_config(), "-o", out, "--set", "log.save_every=1").exit_code == 0
    newest = out / "checkpoints" / "step-2"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_line_error(
        aha("train", write_config(), "-o", out, "--resume", "--set", "model.name=tiny:layers=1,hidden=16,heads=2,ff=32")
    )
    assert str(newest) in line and "aside" in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_damaged_weights_in_model_name_and_bad_eval_options_are_one_line(good_run, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(good_run / "checkpoints" / "step-2" / "model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = one_line_error(aha("eval", model))
    assert "could not load model" in line and str(model) in line
    for option, value in (("--k", "0"), ("--limit", "-3"), ("--temperature", "0")):
        result = aha("eval", good_run / "checkpoints" / "step-2" / "model", option, value)
        assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output, result.output
