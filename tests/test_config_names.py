"""Settings live in the section they belong to, and the names from before 0.1 answer with where they went: one line
each, never a silent alias. And a setting another section's choice rules out is refused as it is loaded."""

from __future__ import annotations

import pytest
import yaml

from aha.config import ConfigError, load_config


@pytest.mark.parametrize(
    "old, line",
    [
        ({"log": {"eval_reward": "accuracy"}}, "log.eval_reward was renamed to task.eval_reward"),
        ({"log": {"reflection_phrases": ["hmm"]}}, "log.reflection_phrases was renamed to task.reflection_phrases"),
        ({"stage": "grpo"}, "stage: 'grpo' was renamed to 'rl'"),
        ({"task": {"name": "jsonl", "path": "rows.jsonl"}}, "task.name: 'jsonl' was renamed to 'dataset'"),
        ({"sft": {"warmup_steps": 5}}, "sft.warmup_steps was renamed to sft.imitation_steps"),
    ],
)
def test_an_old_name_is_one_line_naming_the_new_one(tmp_path, old, line):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert line in str(err.value) and "\n" not in str(err.value)


def test_the_task_holds_what_judges_and_reads_its_answers(tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump({"task": {"eval_reward": "accuracy", "reflection_phrases": ["hmm", "wait"]}}))
    cfg = load_config(path)
    assert (cfg.task.eval_reward, cfg.task.reflection_phrases) == ("accuracy", ["hmm", "wait"])
    assert "eval_reward" not in type(cfg.log).model_fields and "reflection_phrases" not in type(cfg.log).model_fields


def test_no_pre_release_aliases_left():
    import aha.rl

    assert not hasattr(aha.rl, "train_grpo")


def test_grpo_with_one_sample_per_prompt_is_refused(write_config):
    with pytest.raises(ConfigError, match="group_size ≥ 2"):
        load_config(write_config({"rollout": {"group_size": 1}}))
    load_config(write_config({"rollout": {"group_size": 1}, "rl": {"algo": "reinforce++"}}))  # no baseline needed
