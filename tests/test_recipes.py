"""Every recipe in recipes/ loads with :func:`aha.config.load_config`, declares the stage, model and task the README
promises, and loses none of its YAML on the way: every value written in the file is the loaded config's value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aha.config import load_config

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

# file → (stage, model.name, task.name, rl.algo, the rewards it names); the task of a reward-model recipe is unused
DECLARED = {
    "arithmetic-tiny.yaml": ("rl", "tiny:layers=2,hidden=128,heads=4,ff=512", "arithmetic", "grpo", ["accuracy"]),
    "arithmetic-tiny-ppo.yaml": ("rl", "tiny:layers=2,hidden=128,heads=4,ff=512", "arithmetic", "ppo", ["accuracy"]),
    "code-smollm2.yaml": ("rl", "smollm2-135m", "code", "grpo", ["code"]),
    "r1-zero-smollm2.yaml": ("rl", "smollm2-135m", "arithmetic", "grpo", ["accuracy", "think_format", "tag_count"]),
    "r1-zero-sums-smollm2.yaml": (
        "rl",
        "smollm2-135m",
        "arithmetic",
        "grpo",
        ["accuracy", "think_format", "tag_count"],
    ),
    "smollm2-countdown.yaml": (
        "rl",
        "smollm2-135m",
        "countdown",
        "grpo",
        ["countdown", "think_format", "tag_count", "overlong"],
    ),
    "tools-smollm2.yaml": ("rl", "smollm2-135m", "arithmetic", "grpo", ["accuracy"]),
    "rm-tiny.yaml": ("reward_model", "tiny:layers=2,hidden=64,heads=4,ff=256", None, None, None),
    "rm-smollm2.yaml": ("reward_model", "smollm2-135m", None, None, None),
}


def test_the_table_names_every_recipe():
    """A new recipe gets a row here (and so a check); a removed one is noticed."""
    assert sorted(p.name for p in RECIPES) == sorted(DECLARED)


def leaves(data, prefix=()):
    """``(path, value)`` for every scalar in a YAML tree (lists of mappings by index)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, prefix + (key,))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            yield from leaves(value, prefix + (i,))
    else:
        yield prefix, data


def lookup(tree, path):
    for part in path:
        tree = tree[part]
    return tree


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_declares_its_stage_model_and_task(recipe):
    stage, model, task, algo, rewards = DECLARED[recipe.name]
    cfg = load_config(recipe)
    assert (cfg.stage, cfg.model.name) == (stage, model)
    if stage == "rl":
        assert (cfg.task.name, cfg.rl.algo) == (task, algo)
        assert [r.name for r in cfg.rewards] == rewards
    else:  # a reward-model recipe trains on rankings: the file it names ships with the repository
        assert (REPO / cfg.reward_model.path).is_file(), cfg.reward_model.path
    dumped = cfg.model_dump(mode="json")
    raw = yaml.safe_load(recipe.read_text())
    for path, value in leaves(raw):
        loaded = lookup(dumped, path)
        if isinstance(value, list):  # e.g. adam_betas: a tuple in the config, a list in the YAML
            loaded = list(loaded)
        where = ".".join(map(str, path))
        if path[-1] == "path" and isinstance(value, str):  # a data file: found next to the recipe, then kept absolute
            value = str((recipe.parent / value).resolve())
        assert loaded == value, f"{recipe.name}: {where} is {loaded!r} after loading, {value!r} in the file"
