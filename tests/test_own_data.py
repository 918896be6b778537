"""A user's own data and rewards, as a TRL user brings them: every format through one loader, every column under
its own name, conversational completions for chat prompts, TRL's own reward functions unchanged, and an answer
check that is right outside mathematics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import aha, one_line_error

from aha.data.load import DataError, load_rows
from aha.rewards import compute_rewards
from aha.rewards.builtin import accuracy

ROWS = [
    {"prompt": f"reverse {w}:", "solution": w[::-1], "level": i}
    for i, w in enumerate(["abc", "pots", "stop", "level", "drawer", "lived", "parts", "smart"])
]

# a chat template for the tiny model (it has none): every character is in its tokenizer's alphabet
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def write_formats(folder: Path, rows: list[dict]) -> dict[str, Path]:
    """The same rows as JSONL, JSON, CSV, Parquet and a save_to_disk directory."""
    from datasets import Dataset

    paths = {
        "jsonl": folder / "d.jsonl",
        "json": folder / "d.json",
        "csv": folder / "d.csv",
        "parquet": folder / "d.parquet",
        "save_to_disk": folder / "d_dir",
    }
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["json"].write_text(json.dumps(rows))
    ds = Dataset.from_list(rows)
    ds.to_csv(str(paths["csv"]), index=False)
    ds.to_parquet(str(paths["parquet"]))
    ds.save_to_disk(str(paths["save_to_disk"]))
    return paths


# ----------------------------------------------------------------------------- the answer check


def test_accuracy_is_right_outside_mathematics():
    # math-verify reads letters as commuting symbols: 'cba' == 'abc' and 'ab' == 'ba' to it; auto compares text
    assert accuracy(["p"], ["cba"], answer=["abc"]) == [0.0]
    assert accuracy(["p", "p"], ["ba", "ab"], answer=["ab", "ab"]) == [0.0, 1.0]
    assert accuracy(["p"], ["Paris"], answer=["paris"]) == [0.0]  # case counts in an exact match
    assert accuracy(["p"], ["  two   words "], answer=["two words"]) == [1.0]  # whitespace does not
    # where the reference reads as mathematics, equal values still match
    assert accuracy(["p", "p", "p"], ["0.5", "1/2", "007"], answer=["\\frac{1}{2}", "0.5", "7"]) == [1.0, 1.0, 1.0]
    assert accuracy(["p"], ["3"], answer=["4"]) == [0.0]
    # forced either way
    assert accuracy(["p"], ["1/2"], answer=["0.5"], match="exact") == [0.0]
    assert accuracy(["p"], ["x+1"], answer=["1+x"], match="math") == [1.0]


def test_answer_match_from_the_config_decides_eval_accuracy(tmp_path, write_config):
    data = tmp_path / "rev.jsonl"
    # held-out rows whose reversed answers a random model cannot produce; what matters is the check's wiring
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = write_config(
        {
            "task": {
                "name": "dataset",
                "path": str(data),
                "answer_column": "solution",
                "answer_match": "exact",
                "num_eval": 2,
            },
            "rewards": [{"name": "accuracy"}],
        }
    )
    from aha.config import load_config
    from aha.rewards import build_rewards
    from aha.tasks import build_task

    loaded = load_config(cfg)
    ((_, fn, _),) = build_rewards(loaded.rewards, build_task(loaded.task), loaded.task.answer_match)
    assert fn(["p"], ["1/2"], answer=["0.5"]) == [0.0]  # exact, from task.answer_match
    assert fn(["p"], ["cba"], answer=["cba"]) == [1.0]


# ----------------------------------------------------------------------------- one loader, every format


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "save_to_disk"])
def test_every_format_loads_the_same_rows(tmp_path, fmt):
    path = write_formats(tmp_path, ROWS)[fmt]
    rows = load_rows(path, ("prompt",))
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    assert [r["solution"] for r in rows] == [r["solution"] for r in ROWS]
    assert [int(r["level"]) for r in rows] == [r["level"] for r in ROWS]


def test_in_memory_datasets_load_too():
    from datasets import Dataset

    assert load_rows(Dataset.from_list(ROWS)) == ROWS
    assert load_rows(ROWS) == ROWS


@pytest.mark.parametrize("case", ["parquet_named_jsonl", "plain_directory", "unknown_suffix", "missing", "bad_json"])
def test_a_wrong_data_file_is_one_line_naming_it_and_the_formats(tmp_path, case):
    paths = write_formats(tmp_path, ROWS)
    if case == "parquet_named_jsonl":
        bad = tmp_path / "x.jsonl"
        bad.write_bytes(paths["parquet"].read_bytes())
        words = ["not UTF-8", "must be named .parquet"]
    elif case == "plain_directory":
        bad = tmp_path / "plain"
        bad.mkdir()
        (bad / "a.txt").write_text("hi")
        words = ["not one written by datasets' save_to_disk", ".jsonl", ".parquet"]
    elif case == "unknown_suffix":
        bad = tmp_path / "x.xlsx"
        bad.write_text("hi")
        words = ["cannot read .xlsx", ".csv", "save_to_disk"]
    elif case == "missing":
        bad, words = tmp_path / "nope.jsonl", ["not found", "nope.jsonl"]
    else:
        bad = tmp_path / "x.jsonl"
        bad.write_text('{"prompt": "a"}\n{"prompt": \n')
        words = ["x.jsonl:2", "not valid JSON"]
    with pytest.raises(DataError) as e:
        load_rows(bad, ("prompt",))
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_dataset_task_trains_from_parquet_and_reports_its_held_out_split(tmp_path, write_config, capsys):
    path = write_formats(tmp_path, ROWS * 3)["parquet"]
    cfg = write_config(
        {
            "task": {"name": "dataset", "path": str(path), "answer_column": "solution", "num_eval": 3},
            "rewards": [{"name": "accuracy"}],
            "rollout": {"max_new_tokens": 4},
        }
    )
    result = aha("train", cfg, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "21 rows to train on, the last 3 held out" in result.output


# ----------------------------------------------------------------------------- TRL's reward signature, unchanged


def test_columns_reach_rewards_under_their_own_names_and_chat_prompts_get_conversational_completions():
    seen = {}

    def reward(prompts, completions, solution, level, **kw):
        seen.update(completions=completions, solution=solution, level=level)
        return [1.0] * len(completions)

    from aha.rewards import as_completions

    prompts = [[{"role": "user", "content": "reverse abc"}], "reverse pots:"]
    completions = as_completions(prompts, ["cba", "stop"])
    compute_rewards([("r", reward, 1.0)], prompts, completions, {"solution": ["cba", "stop"], "level": [0, 1]})
    assert seen["completions"] == [[{"role": "assistant", "content": "cba"}], "stop"]
    assert seen["solution"] == ["cba", "stop"] and seen["level"] == [0, 1]


def test_trls_own_reward_functions_score_and_train_unchanged(tmp_path, write_config):
    trl_rewards = pytest.importorskip("trl.rewards")  # the bench and dev extras install TRL
    prompts = [[{"role": "user", "content": "half of one?"}]] * 2
    completions = [
        [{"role": "assistant", "content": "<think>\nhalf\n</think>\n<answer>\\boxed{\\frac{1}{2}}</answer>"}],
        [{"role": "assistant", "content": "the answer is \\boxed{3}"}],
    ]
    totals, per_fn, _ = compute_rewards(
        [("think", trl_rewards.think_format_reward, 1.0), ("acc", trl_rewards.accuracy_reward, 1.0)],
        prompts,
        completions,
        {"solution": ["\\frac{1}{2}", "\\frac{1}{2}"]},
    )
    assert per_fn == {"think": [1.0, 0.0], "acc": [1.0, 0.0]} and totals == [2.0, 0.0]

    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}], "solution": r["solution"]}) + "\n"
            for r in ROWS
        )
    )
    cfg = write_config(
        {
            "model": {"chat_template": CHAT_TEMPLATE},
            "task": {"name": "dataset", "path": str(data), "num_eval": 1, "answer_column": "solution"},
            "rewards": [{"name": "trl.rewards:think_format_reward"}, {"name": "trl.rewards:accuracy_reward"}],
            "rollout": {"max_new_tokens": 6},
            "log": {"samples_per_step": 2},
        }
    )
    result = aha("train", cfg, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"][0]["role"] == "user"  # chat prompts are stored as messages, not a Python repr
    assert set(samples[0]["rewards"]) == {"think_format_reward", "accuracy_reward"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and "reward/think_format_reward/mean" in rows[-1]


# ----------------------------------------------------------------------------- eval by any reward


def test_eval_can_be_judged_by_any_reward(tmp_path, write_config):
    data = tmp_path / "rev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    judge = tmp_path / "judge.py"
    judge.write_text("def nonempty(prompts, completions, **kw):\n    return [1.0 for c in completions]\n")
    cfg = write_config(
        {
            "task": {
                "name": "dataset",
                "path": str(data),
                "answer_column": "solution",
                "num_eval": 2,
                "eval_reward": f"{judge}:nonempty",
            },
            "rewards": [{"name": "accuracy"}],
        }
    )
    result = aha("train", cfg, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/accuracy"] == 1.0  # every completion scores 1 with this judge, 0 with exact accuracy
    model = tmp_path / "run" / "checkpoints" / "step-2" / "model"
    by_task = json.loads(aha("eval", model).stdout)
    by_judge = json.loads(aha("eval", model, "--reward", "accuracy").stdout)
    assert by_task["accuracy"] == 1.0 and by_judge["accuracy"] == 0.0 and by_judge["n"] == 1


# ----------------------------------------------------------------------------- the smaller mistakes


def test_chat_prompts_on_a_model_without_a_chat_template_is_one_line(tmp_path, write_config):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "answer": "x"}) + "\n" for _ in range(6))
    )
    cfg = write_config({"task": {"name": "dataset", "path": str(data)}})
    assert "no chat template" in one_line_error(aha("train", cfg, "-o", tmp_path / "run"))


def test_eval_without_the_answer_column_is_one_line_that_names_the_fixes(tmp_path, write_config):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(10)))
    cfg = write_config({"task": {"name": "dataset", "path": str(data)}, "rewards": [{"name": "think_format"}]})
    line = one_line_error(aha("train", cfg, "-o", tmp_path / "run"))
    assert "task.answer_column" in line and "task.eval_reward" in line and "log.eval_every=0" in line


def test_wandb_without_wandb_is_one_line(tmp_path, write_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError, installed or not
    line = one_line_error(aha("train", write_config({"log": {"wandb": True}}), "-o", tmp_path / "run"))
    assert "pip install wandb" in line and "log.wandb=false" in line


def test_sft_data_a_tiny_model_cannot_spell_says_how_to_fix_it(tmp_path, write_config):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["solution"]}) + "\n" for r in ROWS))
    cfg = write_config({"stage": "sft", "sft": {"path": str(data)}})
    line = one_line_error(aha("train", cfg, "-o", tmp_path / "run"))
    assert "task.name=dataset" in line and "task.path" in line


def test_paths_in_a_config_are_found_next_to_it(tmp_path, write_config, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "rev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (project / "my_reward.py").write_text(
        "def exact(prompts, completions, solution, **kw):\n"
        "    return [float(c.strip() == s) for c, s in zip(completions, solution)]\n"
    )
    cfg = write_config(
        {
            "task": {"name": "dataset", "path": "rev.jsonl", "answer_column": "solution", "num_eval": 2},
            "rewards": [{"name": "my_reward.py:exact"}],
        },
        name="project/cfg.yaml",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = aha("train", cfg, "-o", "run")
    assert result.exit_code == 0, result.output
    assert (elsewhere / "run" / "metrics.jsonl").exists()


def test_lora_checkpoints_hold_peft_adapters_beside_the_merged_weights(tmp_path, write_config, digits_reward):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from aha.config import load_config
    from aha.models import build_tiny
    from aha.tasks import build_task

    cfg = write_config(
        {
            "model": {"lora": {"enabled": True, "r": 2, "alpha": 4}},
            "train": {"lr": 5e-2},
            "rewards": [{"name": digits_reward}],
        }
    )
    assert aha("train", cfg, "-o", tmp_path / "run").exit_code == 0
    model_dir = tmp_path / "run" / "checkpoints" / "step-2" / "model"
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(model_dir)
    loaded = load_config(cfg)  # the base the adapters were trained on: the same tiny model, same seed
    base, _ = build_tiny(loaded.model.name, build_task(loaded.task).alphabet, loaded.train.seed)
    with_adapter = PeftModel.from_pretrained(base, model_dir / "adapter")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        with with_adapter.disable_adapter():
            untrained = with_adapter(ids).logits
        trained = with_adapter(ids).logits
        assert not torch.allclose(untrained, merged(ids).logits, atol=1e-4)  # training moved the adapters
        torch.testing.assert_close(trained, merged(ids).logits, atol=1e-5, rtol=1e-4)


def test_a_resumed_run_leaves_tensorboard_one_value_per_step(tmp_path, write_config, digits_reward):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = write_config(
        {"rewards": [{"name": digits_reward}], "train": {"steps": 4}, "log": {"tensorboard": True, "save_every": 2}}
    )
    run = tmp_path / "run"
    assert aha("train", cfg, "-o", run).exit_code == 0
    shutil.rmtree(run / "checkpoints" / "step-4")  # as if killed after logging steps 3 and 4, before saving 4
    assert aha("train", cfg, "-o", run, "--resume", "--set", "train.steps=5").exit_code == 0
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("reward/mean")]
    assert steps == [1, 2, 3, 4, 5], steps


def test_aha_list_shows_rewards_tasks_and_models():
    result = aha("list")
    assert result.exit_code == 0, result.output
    from aha.rewards.specs import BUILTIN_REWARDS

    lines = result.stdout.splitlines()
    for name in [*BUILTIN_REWARDS, "dataset", "arithmetic", "smollm2-135m", "guess_number", "calculator", "python"]:
        line = next((ln for ln in lines if ln.strip().startswith(name)), None)
        assert line is not None and len(line.split()) > 2, (name, result.stdout)
    assert aha("list", "rewards").stdout.count("\n") == len(BUILTIN_REWARDS) + 3


def test_sft_takes_trls_messages_format(tmp_path, write_config):
    data = tmp_path / "chat_sft.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["solution"]},
                    ],
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "solution": r["solution"],
                }
            )
            + "\n"
            for r in ROWS
        )
    )
    cfg = write_config(
        {
            "stage": "sft",
            "sft": {"path": str(data)},
            "model": {"chat_template": CHAT_TEMPLATE},
            "task": {"name": "dataset", "path": str(data), "answer_column": "solution", "num_eval": 1},
            "train": {"steps": 3, "batch_size": 4},
        }
    )
    result = aha("train", cfg, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    losses = [
        json.loads(line).get("loss/sft") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [x for x in losses if x is not None][-1] < [x for x in losses if x is not None][0]  # it imitates them
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    line = one_line_error(aha("train", cfg, "-o", tmp_path / "run2", "--set", f"sft.path={bad}"))
    assert "bad.jsonl:1" in line and "assistant message" in line
