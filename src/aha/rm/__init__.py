"""Reward-model training (``stage: reward_model``): an LM trunk with a scalar head, from rankings or pairs.

The saved model is a plain HF sequence-classification model (``num_labels = 1``, ``pad_token_id`` set), so
``AutoModelForSequenceClassification.from_pretrained(DIR)`` loads it and scores a text as
``model(**tok(text, return_tensors="pt")).logits[0, 0]`` — the text being :func:`render_text` of the prompt and
completion (the chat template's user and assistant turns, or the two texts joined; the choice is saved in
``config.aha_reward_model``).

**Ensembles** (``reward_model.num_heads = N > 1``): N linear heads on one trunk, initialised differently, each
trained on its own Poisson(1) bootstrap weighting of every batch (an online bootstrap, as in Coste et al. 2023's
ensembles, at the cost of one trunk). The heads are linear and bias-free on the same pooled hidden state, so the
mean of their scores *is* the score of their mean head: the saved ``score.weight`` is that mean head, and plain
transformers (and ``critic.init_from``) returns the ensemble mean. The N heads themselves are saved beside it in
``aha_ensemble.json``; :class:`RewardModel` (and the ``rm:`` reward) reads them for the per-head scores, their
disagreement (std) and the conservative reward mean − λ·std.

The package: :mod:`aha.rewards.learned` (the text a reward model scores, loading one for scoring), :mod:`aha.rm.stage` (the
backbone and its ensemble heads, the data split, publishing), :mod:`aha.rm.train` (the training loop, on the shared
run skeleton :class:`aha.run.Run`).

Layout: ``RUN_DIR/checkpoints/step-N/model`` (resumable, as for the other stages) and ``RUN_DIR/model``, the final
reward model — the directory to give ``rm:`` or ``critic.init_from``.
"""

from aha.rewards.learned import (
    CONFIG_KEY,
    ENSEMBLE_FILE,
    RewardModel,
    RewardModelError,
    encode_for_rm,
    load_reward_model,
    render_text,
    rm_template,
)
from aha.rm.stage import build_reward_backbone, reward_model_dir, split_preferences
from aha.rm.train import train_reward_model

__all__ = [
    "CONFIG_KEY",
    "ENSEMBLE_FILE",
    "RewardModel",
    "RewardModelError",
    "build_reward_backbone",
    "encode_for_rm",
    "load_reward_model",
    "render_text",
    "reward_model_dir",
    "rm_template",
    "split_preferences",
    "train_reward_model",
]
