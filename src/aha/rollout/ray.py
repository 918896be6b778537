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
- Asynchronous rollouts (:mod:`aha.rl.asynchronous`): every sampling call is ``start_*`` (the workers begin; this
  returns at once with a :class:`Pending`) then :meth:`RayEngine.finish` (wait, gather, retry a failed shard);
  ``generate`` and the others are the two back to back. Each worker runs its calls in the order they were made, so
  a call started before a ``sync`` samples from the weights before it, whenever it runs.

Ray is imported here only: the single-process path never imports it.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from aha.errors import AhaError, TrainingError
from aha.rewards import RewardError
from aha.rollout import Rollouts, SamplingParams
from aha.rollout.ray_worker import RolloutWorker
from aha.rollout.scoring import RewardRecipe, Scores, merge_scores
from aha.rollout.scoring import log as reward_log


def plain_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a worker's plain model loads: LoRA adapters merged into a copy (peft), else the state dict."""
    if hasattr(policy, "merge_and_unload"):
        policy = cast(Any, copy.deepcopy(policy)).merge_and_unload()  # (peft)
    return {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}


@dataclass
class Pending:
    """A sampling call the workers are running (:meth:`RayEngine.start_generate` and the others), for
    :meth:`RayEngine.finish` to gather."""

    kind: str  # 'generate' (rollouts), 'scored' (rollouts and scores) or 'play' (episodes)
    prompts: list[list[int]]
    n: int
    sampling: SamplingParams
    rows: list[dict] | None
    seed: int  # drawn from the trainer's RNG; worker i samples with seed + i
    shards: list[list[int]]  # each worker's prompt indices
    weights_version: int  # the weights it samples from (a shard sampled again after a fault: newer ones)
    timed: bool = False  # each worker also says when it started and ended (asynchronous rollouts' idle time)
    calls: dict[int, Any] = field(default_factory=dict)  # worker → ObjectRef
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)  # worker → (start, end), time.time()


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
        self.defer_loads = False  # asynchronous rollouts: sync returns at once (see sync)
        self.rewards = rewards is not None
        if self.rewards:
            self._wait([w.prepare_rewards.remote() for w in self.workers], "build the rewards")

    # ----------------------------------------------------------------------------- the Engine contract

    def sync(self, policy: torch.nn.Module) -> int:
        """Send ``policy``'s weights to every worker (one copy in the object store); returns the new version. With
        ``defer_loads`` (asynchronous rollouts) this returns at once: each worker loads the weights after the calls
        already started on it. (A load that fails leaves the worker on older weights: its next call answers None
        and is sent the current ones, or fails and is restarted with them, as in ``finish``.)"""
        self.weights_version += 1
        self._state_ref = self.ray.put(plain_state(policy))
        loads = [w.load.remote(self._state_ref, self.weights_version) for w in self.workers]
        if not self.defer_loads:
            self._wait(loads, "load weights")
        return self.weights_version

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts:
        return self.finish(self.start_generate(prompt_token_ids, n, sampling))

    def generate_scored(
        self, prompt_token_ids: list[list[int]], rows: list[dict], n: int, sampling: SamplingParams
    ) -> tuple[Rollouts, Scores]:
        """``generate``, and the workers reward their completions (``rows``: the task row of each prompt); what the
        rewards logged is logged here too."""
        return self.finish(self.start_scored(prompt_token_ids, rows, n, sampling))

    def play_scored(self, rows: list[dict], n: int, sampling: SamplingParams):
        """``n`` episodes of each row, played and rewarded by the workers (each worker builds the run's environment
        in its own process): ``(rollouts, scores, transcripts, episode counters)`` in order."""
        return self.finish(self.start_play(rows, n, sampling))

    # ----------------------------------------------------------------------------- started now, gathered later

    def start_generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams, timed: bool = False
    ) -> Pending:
        """The workers begin sampling; :meth:`finish` gathers the :class:`Rollouts`."""
        return self._start("generate", prompt_token_ids, n, sampling, None, timed)

    def start_scored(
        self, prompt_token_ids: list[list[int]], rows: list[dict], n: int, sampling: SamplingParams, timed: bool = False
    ) -> Pending:
        """The workers begin sampling and rewarding; :meth:`finish` gathers ``(rollouts, scores)``."""
        if not self.rewards:
            raise TrainingError("these Ray rollout workers were built without the run's rewards (RayEngine(rewards=))")
        return self._start("scored", prompt_token_ids, n, sampling, rows, timed)

    def start_play(self, rows: list[dict], n: int, sampling: SamplingParams, timed: bool = False) -> Pending:
        """The workers begin playing episodes; :meth:`finish` gathers ``(rollouts, scores, transcripts, counters)``."""
        if not self.rewards:
            raise TrainingError("these Ray rollout workers were built without the run's rewards (RayEngine(rewards=))")
        prompts = [[0] for _ in rows]  # (the workers render the prompts with the environment's observations)
        return self._start("play", prompts, n, sampling, rows, timed)

    def finish(self, pending: Pending):
        """Wait for a started call and join its shards in order (see the ``start_*`` methods for what it returns);
        a shard whose worker failed is sampled again from the current weights."""
        parts = self._gather(pending)
        expected = len(pending.prompts) * pending.n
        if pending.kind == "generate":
            return _join_rollouts(parts, expected)
        parts = [p for p in parts if p is not None]
        joined = _join_rollouts([p[0] for p in parts], expected)
        scores = merge_scores([p[1] for p in parts])
        for line in scores.warnings:
            reward_log.warning("%s", line)
        if scores.printed:
            sys.stdout.write(scores.printed)
            sys.stdout.flush()
        if pending.kind == "scored":
            return joined, scores
        return joined, scores, [t for p in parts for t in p[2]], [e for p in parts for e in p[3]]

    def _start(
        self,
        kind: str,
        prompts: list[list[int]],
        n: int,
        sampling: SamplingParams,
        rows: list[dict] | None,
        timed: bool,
    ) -> Pending:
        """Each worker begins its contiguous shard of the prompts (seeded from the trainer's RNG)."""
        if self._state_ref is None:
            raise TrainingError("the Ray rollout workers have no weights yet: call sync(policy) first")
        seed = int(torch.randint(2**31 - 1, (1,)).item())  # from the trainer's RNG: reproducible runs
        shards = [s.tolist() for s in torch.arange(len(prompts)).tensor_split(len(self.workers))]
        pending = Pending(kind, prompts, n, sampling, rows, seed, shards, self.weights_version, timed)
        pending.calls = self._call(pending, [i for i, shard in enumerate(shards) if shard])
        return pending

    def _call(self, p: Pending, todo: list[int]) -> dict[int, Any]:
        """Ask the workers ``todo`` for their shards of ``p``, from the current weights: ``{worker: ObjectRef}``."""
        calls = {}
        for i in todo:
            shard, worker, version, first = p.shards[i], self.workers[i], self.weights_version, p.shards[i][0] * p.n
            rows = None if p.rows is None else [p.rows[j] for j in shard]
            args: tuple
            if p.kind == "play":
                method, args = "play", (rows, p.n, p.sampling, p.seed + i, version, first)
            else:
                method, args = (
                    "generate",
                    ([p.prompts[j] for j in shard], p.n, p.sampling, p.seed + i, version, rows, first),
                )
            calls[i] = worker.timed.remote(method, *args) if p.timed else getattr(worker, method).remote(*args)
        return calls

    def _gather(self, p: Pending) -> list:
        """Each worker's result for its shard of ``p`` (None for an empty shard), in order; with ``p.timed`` each
        worker's (start, end) go to ``p.spans``."""
        parts: list[Any] = [None] * len(self.workers)
        failed: list[Exception] = []
        calls = p.calls
        for attempt in range(self.max_restarts + 1):
            if attempt > 0:
                todo = [i for i, part in enumerate(parts) if part is None and p.shards[i]]
                if not todo or failed:
                    break
                calls = self._call(p, todo)
            for i, ref in calls.items():
                try:
                    got = self.ray.get(ref, timeout=self.timeout_s)
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
                if got is not None and p.timed:
                    got, p.spans[i] = got[0], (got[1], got[2])
                parts[i] = got
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
