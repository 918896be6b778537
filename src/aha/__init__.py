"""aha: RL post-training for language models (GRPO, PPO, SFT, reward models) that you can read, run on a laptop
and watch learn.

    import aha
    summary = aha.train("recipes/arithmetic-tiny.yaml", out="runs/a")          # or a dict, reward_funcs, datasets
    aha.evaluate(summary["model"], "recipes/arithmetic-tiny.yaml")

See :mod:`aha.api` (``train``, ``evaluate``, ``load_config``) and the README's "Train on your own data".
"""

__version__ = "0.1.0"

__all__ = ["evaluate", "load_config", "train"]


def __getattr__(name: str):  # the API imports torch: only when it is used, so `import aha.config` stays light
    if name in __all__:
        from aha.threads import set_wait_policy

        set_wait_policy()  # before the API loads torch (aha.threads)
        from aha import api

        return getattr(api, name)
    raise AttributeError(f"module 'aha' has no attribute {name!r}")
