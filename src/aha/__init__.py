"""aha: RL post-training for language models (GRPO, PPO, SFT) that you can read, run on a laptop and watch learn."""

__version__ = "0.1.0"
