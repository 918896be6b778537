"""aha.rl.parts: an RL run is built once into narrow parts, each from its own sections of the config; the phases,
rewards, eval and reasoning metrics never receive the whole RunConfig; ``aha config show --parts`` shows the
config as the parts see it."""

from __future__ import annotations

import ast
import inspect

import pytest
import yaml
from typer.testing import CliRunner

import aha.critic
import aha.evaluation
import aha.rl.optimize
import aha.rl.phases
import aha.rl.ranks
import aha.rollout.scoring
import aha.track.reasoning
from aha.cli import app
from aha.config import TrainConfig, load_config
from aha.rl.parts import describe_parts

# the classmethods that turn the whole config into a part's settings: the builder's one look at it
BUILDERS = {"of"}


@pytest.mark.parametrize(
    "module",
    [
        aha.rl.phases,
        aha.rl.optimize,
        aha.rl.ranks,
        aha.rollout.scoring,
        aha.evaluation,
        aha.track.reasoning,
        aha.critic,
    ],
)
def test_below_the_builder_no_function_takes_the_whole_config(module):
    tree = ast.parse(inspect.getsource(module))
    takes_cfg = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name not in BUILDERS
        and any(
            a.arg == "cfg" or (a.annotation is not None and "RunConfig" in ast.unparse(a.annotation))
            for a in node.args.args + node.args.kwonlyargs
        )
    ]
    assert takes_cfg == [], f"{module.__name__}: {takes_cfg} take the whole RunConfig"


def test_imitation_takes_its_sections_not_the_config():
    from aha.sft import imitate_answers

    params = inspect.signature(imitate_answers).parameters
    assert "cfg" not in params and {"sft", "train"} <= set(params)


def test_config_show_parts_prints_what_each_part_reads(tmp_path):
    result = CliRunner().invoke(
        app, ["config", "show", "--parts", "--set", "rl.algo=ppo", "--set", "rl.mu=3", "--set", "guard.enabled=true"]
    )
    assert result.exit_code == 0, result.output
    parts = yaml.safe_load(result.output)
    assert list(parts) == ["policy", "experience", "optimizer_step", "guard", "evaluation"]
    assert parts["optimizer_step"]["update"]["rl"]["mu"] == 3
    assert parts["optimizer_step"]["critic"]["kind"] == load_config(None, []).critic.kind  # PPO: a critic
    assert parts["guard"]["enabled"] is True
    assert parts["experience"]["group_size"] == parts["experience"]["scoring"]["group_size"]
    grpo = describe_parts(load_config(None, []))
    assert grpo["optimizer_step"]["critic"] is None and grpo["guard"] is None  # what a part does not have is None
    assert grpo["experience"]["env"] is None
    env = describe_parts(load_config(None, ["env.factory=guess_number", "env.max_turns=5"]))["experience"]
    assert env["env"]["factory"] == "guess_number" and env["max_turns"] == 5 and env["rewards"][0]["name"] == "env"


def test_config_show_parts_refuses_a_stage_without_rl_parts(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n')
    result = CliRunner().invoke(app, ["config", "show", "--parts", "--set", "stage=sft", "--set", f"sft.path={data}"])
    assert result.exit_code != 0 and "stage is 'sft'" in result.output


def test_train_batch_size_is_what_the_imitation_steps_read_in_an_rl_run():
    # one meaning in every stage: examples per supervised step (RL's own batch is prompts_per_step × group_size)
    assert describe_parts(load_config(None, ["train.batch_size=32"]))["optimizer_step"]["imitation"] is None
    shown = describe_parts(load_config(None, ["train.batch_size=32", "sft.imitation_steps=2"]))
    assert shown["optimizer_step"]["imitation"]["batch_size"] == 32
    assert "prompts_per_step" in TrainConfig.model_fields["batch_size"].description
