"""A Ray rollout worker's process (:class:`RolloutWorker`, the Ray actor's class): a plain copy of the policy and an
:class:`~aha.rollout.hf.HFEngine` over it, and where the run rewards beside the samples, the run's rewards (and its
environment). :class:`~aha.rollout.ray.RayEngine` drives them; Ray is not imported here.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from typing import cast

import torch

from aha import sandbox
from aha.rollout import Rollouts, SamplingParams
from aha.rollout.episodes import EnvRecipe, EpisodeFormat, EpisodeStats, run_episodes
from aha.rollout.hf import HFEngine
from aha.rollout.scoring import RewardRecipe, RewardScorer, Scores, WarningsKept

_MAX_PRINTED = 1 << 16  # characters of a shard's reward prints passed to the trainer


class RolloutWorker:
    """One worker process: a plain copy of the policy and an HFEngine over it, and with a reward recipe the run's
    rewards (the Ray actor's class)."""

    def __init__(
        self, model_config, tokenizer, threads: int, fail_at: str | None = None, rewards: RewardRecipe | None = None
    ):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, threads))
        sandbox.set_default_workers(threads)  # the code reward's programs: this worker's share of the cores
        self.model = AutoModelForCausalLM.from_config(model_config).eval()
        self.engine = HFEngine(self.model, tokenizer, torch.device("cpu"), None)
        self.version = -1  # no weights yet
        self.calls, self.fail_at = 0, fail_at
        self.scorer: RewardScorer | None
        self.recipe, self.scorer, self.tokenizer = rewards, None, tokenizer
        self.episodes: EpisodeFormat | None = None  # the run's environment, where it plays episodes

    def load(self, state: dict[str, torch.Tensor], version: int) -> int:
        self.model.load_state_dict(state, strict=False)
        self.version = version
        return os.getpid()

    def prepare_rewards(self) -> int:
        """Build the run's reward functions in this process (again after a restart), and its environment where the
        run plays episodes (the environment's own reward is one of the rewards)."""
        if self.scorer is None and self.recipe is not None:
            env = cast("EnvRecipe | None", self.recipe.env)
            self.episodes = env.build(self.tokenizer) if env is not None else None
            own = self.episodes.env.reward_function() if self.episodes is not None else None
            self.scorer = self.recipe.scorer(self.tokenizer, own)
        return os.getpid()

    def play(
        self, rows: list[dict], n: int, sampling: SamplingParams, seed: int, version: int, first: int = 0
    ) -> tuple[Rollouts, Scores, list, list] | None:
        """``n`` episodes of each of the shard's ``rows`` in the run's environment, rewarded here: the rollouts, their
        scores, the transcripts and each episode's counters (:class:`~aha.rollout.episodes.EpisodeStats`)."""
        if version != self.version:
            return None  # stale weights: the engine sends the current ones and asks again
        self.calls += 1
        self._test_failure("sample")
        self.prepare_rewards()
        assert self.recipe is not None and self.recipe.env is not None and self.episodes is not None
        env = cast("EnvRecipe", self.recipe.env)
        torch.manual_seed(seed)
        seeds = torch.randint(0, 2**31 - 1, (len(rows) * n,)).tolist()
        printed = io.StringIO()
        with WarningsKept() as kept, contextlib.redirect_stdout(printed):
            played = run_episodes(
                self.engine, self.episodes, rows, n, sampling, env.max_turns, env.max_episode_tokens, seeds, env.workers
            )
            envs = [e.env for e in played.episodes]
            assert self.scorer is not None  # (prepare_rewards built it)
            scores = self.scorer(rows, played.rollouts, first, played.transcripts, envs)
        scores.warnings, scores.printed = kept.lines, printed.getvalue()[-_MAX_PRINTED:]
        return played.rollouts, scores, played.transcripts, [EpisodeStats.of(e) for e in played.episodes]

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        sampling: SamplingParams,
        seed: int,
        version: int,
        rows: list[dict] | None = None,
        first: int = 0,
    ) -> Rollouts | tuple[Rollouts, Scores] | None:
        """The shard's rollouts; with its task ``rows``, also their :class:`~aha.rollout.scoring.Scores` (``first``:
        the shard's first completion in the step's batch)."""
        if version != self.version:
            return None  # stale weights: the engine sends the current ones and asks again
        self.calls += 1
        self._test_failure("sample")
        torch.manual_seed(seed)
        roll = self.engine.generate(prompts, n, sampling)
        if rows is None:
            return roll
        self._test_failure("reward")
        self.prepare_rewards()
        printed = io.StringIO()
        with WarningsKept() as kept, contextlib.redirect_stdout(printed):
            assert self.scorer is not None  # rows come only to workers built with the rewards (generate_scored)
            scores = self.scorer(rows, roll, first)
        scores.warnings, scores.printed = kept.lines, printed.getvalue()[-_MAX_PRINTED:]
        return roll, scores

    def timed(self, method: str, *args, **kwargs) -> tuple[object, float, float] | None:
        """``method``'s result (``generate`` or ``play``) with when this worker started and ended it (``time.time()``:
        the asynchronous rollouts measure how long the workers waited between batches); None as ``method``'s."""
        start = time.time()
        out = getattr(self, method)(*args, **kwargs)
        return None if out is None else (out, start, time.time())

    def _test_failure(self, phase: str) -> None:
        """Test hook "N:MARKER" (or "N:reward:MARKER"): the process dies on its N-th call, once (MARKER says so),
        before it samples (or before it rewards)."""
        if not self.fail_at:
            return
        at, marker = self.fail_at.split(":", 1)
        when, marker = marker.split(":", 1) if marker.startswith("reward:") else ("sample", marker)
        if when == phase and self.calls == int(at) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
