"""Run configuration: pydantic models, one per stage, loaded from YAML plus ``--set a.b=c`` overrides.

Every field carries a description; ``aha config show`` prints them, so the config is the documentation.
A wrong field ends in one line naming it and what is allowed (:class:`ConfigError`), never a traceback.

- :mod:`aha.config.sections` — model, task, rewards, rollout, train, sft
- :mod:`aha.config.objective` — rl, critic
- :mod:`aha.config.run` — reward_model, guard, log, distributed and :class:`RunConfig`
- :mod:`aha.config.load` — :func:`load_config`, overrides, :func:`save_config`, :func:`describe`
"""

from aha.config.load import (
    RENAMED,
    YAML_ERRORS,
    apply_overrides,
    describe,
    load_config,
    parse_override,
    relative_to,
    save_config,
)
from aha.config.objective import CriticConfig, RLConfig
from aha.config.run import (
    DistributedConfig,
    EnvConfig,
    GuardConfig,
    LogConfig,
    RewardModelConfig,
    RunConfig,
)
from aha.config.sections import (
    ConfigError,
    LoraConfig,
    ModelConfig,
    RewardSpec,
    RolloutConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "RENAMED",
    "YAML_ERRORS",
    "ConfigError",
    "CriticConfig",
    "DistributedConfig",
    "EnvConfig",
    "GuardConfig",
    "LogConfig",
    "LoraConfig",
    "ModelConfig",
    "RLConfig",
    "RewardModelConfig",
    "RewardSpec",
    "RolloutConfig",
    "RunConfig",
    "SFTConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "describe",
    "load_config",
    "parse_override",
    "relative_to",
    "save_config",
]
