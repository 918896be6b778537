"""Rollout workers on Ray: an :class:`~aha.rollout.Engine` whose ``generate`` runs in ``N`` Ray actors, each with
its own copy of the policy (an in-process :class:`~aha.rollout.hf.HFEngine` inside).

- ``generate``: the prompts are split into ``N`` contiguous shards, one per worker; each worker samples its shard
  with a seed drawn from the trainer's RNG (so a run is reproducible for a given worker count), and the shards are
  joined in order.
- ``generate_scored`` (``distributed.rewards: workers``): the same, and each worker also rewards its shard beside the
  completions, with the run's reward functions it built itself (:class:`~aha.rollout.scoring.RewardRecipe`); the
  shards' :class:`~aha.rollout.scoring.Scores` are joined in order (:func:`~aha.rollout.scoring.merge_scores`).
- ``sync(policy)``: the trainer's weights go into Ray's object store once (``ray.put``) and every worker loads them;
  each call to a worker names the weights version it must sample from, and a worker that holds another version
  (a restarted one) is sent the current weights first.
- Faults: every remote call has a timeout (``distributed.timeout_s``). A worker that dies or times out is killed and
  restarted by Ray (its actor restarts), given the current weights, and its shard is sampled (and rewarded) again;
  after ``distributed.max_restarts`` failures in one call the run stops with one line naming the worker and the cause.
  A user's error raised in a worker (a reward that fails, a reward spec that cannot be built) reaches the user as
  the same one line as in one process; where several shards fail in different rewards, the line names each.
- A worker's rewards run ``threads`` sandboxed programs at once (its share of the cores, not the machine's), and
  what they print reaches the trainer's output, as it would in one process.

Ray is imported here only: the single-process path never imports it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import time
from typing import Any, cast

import torch

from aha import sandbox
from aha.errors import AhaError, TrainingError
from aha.rewards import RewardError
from aha.rollout import Rollouts, SamplingParams
from aha.rollout.episodes import EnvRecipe, EpisodeFormat, EpisodeStats, run_episodes
from aha.rollout.hf import HFEngine
from aha.rollout.scoring import RewardRecipe, RewardScorer, Scores, WarningsKept, merge_scores
from aha.rollout.scoring import log as reward_log


def plain_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a worker's plain model loads: LoRA adapters merged into a copy (peft), else the state dict."""
    if hasattr(policy, "merge_and_unload"):
        policy = cast(Any, copy.deepcopy(policy)).merge_and_unload()  # (peft)
    return {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}


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


class RayEngine:
    """Samples with ``workers`` Ray actors; see the module docstring."""

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer,
        workers: int = 2,
        address: str | None = None,
        timeout_s: float = 600.0,
        max_restarts: int = 3,
        threads_per_worker: int | None = None,
        exact: bool = True,
        rewards: RewardRecipe | None = None,
    ):
        """``exact``: the trainer computes in fp32 on a CPU, as the workers sample, so their logprobs are the
        trainer's (else ``rl.old_logprobs: auto`` recomputes them). ``rewards``: each worker builds the run's
        rewards from it now (an error is one line) and ``generate_scored`` rewards beside the completions."""
        self.exact_logprobs = exact
        try:
            import ray
        except ImportError:
            raise TrainingError(
                "distributed.backend=ray needs Ray: pip install 'aha[ray]' (or pip install ray)"
            ) from None
        self.ray, self.timeout_s, self.max_restarts = ray, timeout_s, max_restarts
        self.started_ray = not ray.is_initialized()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time: Ray sends no usage stats
        if self.started_ray:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")  # type: ignore[arg-type]  # ray types it int, but its own default is the str "info" (logging takes names)
            except Exception as e:  # ConnectionError for an address with no cluster behind it
                raise TrainingError(
                    f"distributed.address={address!r}: cannot reach a Ray cluster ({e}); start one "
                    "with `ray start --head`, or leave distributed.address unset for a local one"
                ) from None
        base = cast(Any, policy).get_base_model() if hasattr(policy, "get_base_model") else policy  # (peft)
        threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        fail = os.environ.get("AHA_TEST_WORKER_FAIL_AT")  # test hook "N:MARKER": worker 0 dies on its N-th call
        # workers idle while the trainer trains: their OpenMP threads must sleep, not spin, or they slow it down
        actor = ray.remote(
            num_cpus=0,
            max_restarts=max_restarts,
            max_task_retries=0,
            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
        )(RolloutWorker)
        self.workers: list[Any] = [  # Ray actor handles (ray's types lose the actor's methods)
            actor.remote(base.config, tokenizer, threads, fail if i == 0 else None, rewards) for i in range(workers)
        ]
        self.weights_version, self.restarts = 0, 0
        self._state_ref: Any = None  # the weights' ObjectRef
        self.rewards = rewards is not None
        if self.rewards:
            self._wait([w.prepare_rewards.remote() for w in self.workers], "build the rewards")

    # ----------------------------------------------------------------------------- the Engine contract

    def sync(self, policy: torch.nn.Module) -> int:
        """Send ``policy``'s weights to every worker (one copy in the object store); returns the new version."""
        self.weights_version += 1
        self._state_ref = self.ray.put(plain_state(policy))
        self._wait([w.load.remote(self._state_ref, self.weights_version) for w in self.workers], "load weights")
        return self.weights_version

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts:
        return _join_rollouts(self._shards(prompt_token_ids, n, sampling), len(prompt_token_ids) * n)

    def generate_scored(
        self, prompt_token_ids: list[list[int]], rows: list[dict], n: int, sampling: SamplingParams
    ) -> tuple[Rollouts, Scores]:
        """``generate``, and the workers reward their completions (``rows``: the task row of each prompt); what the
        rewards logged is logged here too."""
        if not self.rewards:
            raise TrainingError("these Ray rollout workers were built without the run's rewards (RayEngine(rewards=))")
        parts = [p for p in self._shards(prompt_token_ids, n, sampling, rows) if p is not None]
        joined = _join_rollouts([r for r, _ in parts], len(prompt_token_ids) * n)
        scores = merge_scores([s for _, s in parts])
        for line in scores.warnings:
            reward_log.warning("%s", line)
        if scores.printed:
            sys.stdout.write(scores.printed)
            sys.stdout.flush()
        return joined, scores

    def play_scored(self, rows: list[dict], n: int, sampling: SamplingParams):
        """``n`` episodes of each row, played and rewarded by the workers (each worker builds the run's environment
        in its own process): ``(rollouts, scores, transcripts, episode counters)`` in order."""
        if not self.rewards:
            raise TrainingError("these Ray rollout workers were built without the run's rewards (RayEngine(rewards=))")
        prompts = [[0] for _ in rows]  # (the workers render the prompts with the environment's observations)
        parts = [p for p in self._shards(prompts, n, sampling, rows, play=True) if p is not None]
        joined = _join_rollouts([p[0] for p in parts], len(rows) * n)
        scores = merge_scores([p[1] for p in parts])
        for line in scores.warnings:
            reward_log.warning("%s", line)
        if scores.printed:
            sys.stdout.write(scores.printed)
            sys.stdout.flush()
        return joined, scores, [t for p in parts for t in p[2]], [e for p in parts for e in p[3]]

    def _shards(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        sampling: SamplingParams,
        rows: list[dict] | None = None,
        play: bool = False,
    ) -> list:
        """Each worker's result for its contiguous shard of the prompts (None for an empty shard), in order."""
        if self._state_ref is None:
            raise TrainingError("the Ray rollout workers have no weights yet: call sync(policy) first")
        seed = int(torch.randint(2**31 - 1, (1,)).item())  # from the trainer's RNG: reproducible runs
        shards = [s.tolist() for s in torch.arange(len(prompt_token_ids)).tensor_split(len(self.workers))]
        parts: list[Rollouts | None] = [None] * len(self.workers)
        failed: list[Exception] = []
        for attempt in range(self.max_restarts + 1):
            todo = [i for i, p in enumerate(parts) if p is None and shards[i]]
            if not todo or failed:
                break
            calls = {
                i: self.workers[i].play.remote(
                    [cast(list, rows)[j] for j in shards[i]],
                    n,
                    sampling,
                    seed + i,
                    self.weights_version,
                    shards[i][0] * n,
                )
                if play
                else self.workers[i].generate.remote(
                    [prompt_token_ids[j] for j in shards[i]],
                    n,
                    sampling,
                    seed + i,
                    self.weights_version,
                    None if rows is None else [rows[j] for j in shards[i]],
                    shards[i][0] * n,
                )
                for i in todo
            }
            for i, ref in calls.items():
                try:
                    parts[i] = self.ray.get(ref, timeout=self.timeout_s)
                except self.ray.exceptions.RayTaskError as e:  # every shard's, so the line names each reward
                    failed.append(_user_error(e))
                    continue
                except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError) as e:
                    if attempt == self.max_restarts:
                        raise TrainingError(
                            f"Ray rollout worker {i} failed {attempt + 1} times in one call "
                            f"({type(e).__name__}); see the Ray logs under /tmp/ray"
                        ) from None
                    self._restart(i, e)
                    continue
                if parts[i] is None:  # it held other weights (a restarted actor): send the current ones
                    self._wait([self.workers[i].load.remote(self._state_ref, self.weights_version)], "load weights")
        if failed:
            raise shards_error(failed) from None
        return parts

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
        if self.started_ray:
            self.ray.shutdown()

    # ----------------------------------------------------------------------------- faults

    def _restart(self, i: int, error: Exception) -> None:
        """Kill worker ``i`` where it hangs (Ray restarts a dead actor by itself), then give it the current weights."""
        self.restarts += 1
        if isinstance(error, self.ray.exceptions.GetTimeoutError):
            self.ray.kill(self.workers[i], no_restart=False)
        self._wait([self.workers[i].load.remote(self._state_ref, self.weights_version)], "reload weights", i)

    def _wait(self, refs: list, what: str, worker: int | None = None):
        """``ray.get(refs)`` within ``distributed.timeout_s``; an actor that is still restarting is asked again."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self.ray.get(refs, timeout=max(0.1, deadline - time.monotonic()))
            except self.ray.exceptions.ActorUnavailableError:  # restarting: ask again until the deadline
                if time.monotonic() > deadline or worker is None:
                    raise TrainingError(
                        f"Ray rollout workers could not {what}: a worker stayed unavailable "
                        f"for {self.timeout_s:g} s (distributed.timeout_s)"
                    ) from None
                time.sleep(0.5)
                refs = [self.workers[worker].load.remote(self._state_ref, self.weights_version)]
            except self.ray.exceptions.RayTaskError as e:
                raise _user_error(e) from None
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError) as e:
                raise TrainingError(
                    f"Ray rollout workers could not {what} ({type(e).__name__}) within "
                    f"{self.timeout_s:g} s (distributed.timeout_s)"
                ) from None


def _join_rollouts(parts: list[Rollouts | None], expected: int) -> Rollouts:
    joined = Rollouts([], [], [], [])
    for part in parts:
        if part is not None:
            joined = joined.concat(part)
    if len(joined) != expected:
        raise TrainingError(
            f"Ray rollout workers returned {len(joined)} completions for {expected}: a worker kept failing"
        )
    return joined


def shards_error(errors: list[Exception]) -> Exception:
    """One error for the shards that failed: the first shard's, naming every other reward that failed elsewhere."""
    first, named = errors[0], {getattr(errors[0], "reward", None)}
    others = []
    for error in errors[1:]:
        reward = getattr(error, "reward", None)
        if isinstance(error, RewardError) and reward not in named:
            named.add(reward)
            others.append(str(error).split(" (prompt ")[0].removeprefix("reward function "))
    if not others or not isinstance(first, RewardError):
        return first
    combined = RewardError(f"{first}; also failing: {'; '.join(others)}")
    combined.reward = getattr(first, "reward", None)
    return combined


def _user_error(error: Exception) -> Exception:
    """What a worker raised, as the trainer would have raised it: a user's error (a reward that fails, a reward spec
    that cannot be built) is its own one line; anything else stays Ray's error, with the worker's traceback."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, AhaError) else error
