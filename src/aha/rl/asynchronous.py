"""Asynchronous rollouts (``rollout.asynchronous``): the Ray rollout workers sample the next steps' batches while the
trainer updates on this one.

    step t:  take batch t (sampled from the weights after step t−1−s: staleness s ≤ rl.max_staleness)
             the workers already sample batches t+1 … t+k (k = rl.max_staleness) from the weights of step t−1
             score ─► advantages ─► update (each token's loss × min(π_old/π_behaviour, C)) ─► push weights t

A batch is started ``k`` steps before it is trained on, with the weights the trainer has then; each worker runs its
calls in order, so the weights it samples from are fixed when the call is made, not by timing: a run is
reproducible under a seed (the prompts, the workers' seeds and the weights versions are all drawn in a fixed order).
With k = 1 (verl's one-step-off) the sampler never waits for the trainer, and the trainer waits only when sampling a
batch takes longer than training on one.

A checkpoint waits for the batches under way and keeps them (their prompts and seeds were already drawn from the
data order and RNG it saves): a resumed run trains on them as the uninterrupted one would have.

Per step: ``async/staleness`` (trainer version − the batch's), ``time/trainer_idle_s`` (the trainer waiting for the
batch; also ``time/rollout_s``), ``time/sampler_idle_s`` (the workers between the end of their previous batch and the
start of this one: the mean over workers; an eval's sampling in between counts as idle), ``time/sampling_s`` (the
workers sampling it: ``throughput/tokens_per_s`` is over this time).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from aha.algos.advantages import zero_std_groups
from aha.data.templates import render_prompt
from aha.rl.batch import RolloutBatch
from aha.rollout.scoring import Scores

if TYPE_CHECKING:
    from aha.rollout.ray import Pending, RayEngine


@dataclass
class InFlight:
    """One step's batch, started on the workers (``pending``) or already gathered (``batch``, ``scores``)."""

    step: int
    version: int  # the trainer's weights it samples from: those after step ``version``
    rows: list[dict]
    pending: Pending | None = None
    batch: RolloutBatch | None = None
    scores: Scores | None = None
    spans: dict | None = None  # worker → (start, end) of its shard


class AsyncRollouts:
    """The batches under way: :meth:`collect` takes step t's and keeps steps t+1 … t+k started."""

    def __init__(self, exp: Any, max_staleness: int, last_step: int):
        """``exp``: the run's :class:`aha.rl.parts.Experience` (its engine a :class:`~aha.rollout.ray.RayEngine`;
        not imported here, as parts builds this class: no import cycle)."""
        self.exp, self.depth, self.last_step = exp, max_staleness, last_step
        self.engine = cast("RayEngine", exp.engine)
        self.engine.defer_loads = True  # sync returns at once: the workers load the weights after what they sample
        self.queue: deque[InFlight] = deque()
        self.next_step = 0  # the next step to start (0: none started yet)
        self.last_end: dict[int, float] = {}  # each worker's end of its last batch (time.time())

    def collect(self, step: int) -> tuple[RolloutBatch, dict]:
        """Step ``step``'s batch of rewarded completions and its info (as :func:`aha.rl.phases.collect`'s, with the
        asynchronous metrics under ``info['async']``); first starts the batches of the next ``rl.max_staleness``
        steps from the current weights (those after step ``step − 1``)."""
        self.next_step = max(self.next_step, step)
        while self.next_step <= min(step + self.depth, self.last_step):
            self.queue.append(self.start(self.next_step, version=step - 1))
            self.next_step += 1
        flight = self.queue.popleft()
        assert flight.step == step, (flight.step, step)  # (started in step order)
        t0 = time.perf_counter()
        self.receive(flight)
        waited = time.perf_counter() - t0
        batch, scores = cast(RolloutBatch, flight.batch), cast(Scores, flight.scores)
        zero = zero_std_groups(torch.tensor(batch.rewards, dtype=torch.float32), batch.group_size)
        info: dict[str, Any] = {
            "rounds": 1,
            "skipped": scores.skipped,
            "reward_metrics": scores.metrics,
            "zero_std_frac": zero.float().mean().item(),
            "last_reward_mean": float(torch.tensor(batch.rewards).mean()),
            "sampling_s": sampling_time(flight.spans or {}),
            "async": {
                "async/staleness": step - 1 - flight.version,
                "time/trainer_idle_s": waited,
                "time/sampler_idle_s": self.sampler_idle(flight.spans or {}),
                "time/sampling_s": sampling_time(flight.spans or {}),
            },
        }
        return batch, info

    def start(self, step: int, version: int) -> InFlight:
        """Draw step ``step``'s prompts and start sampling them (and rewarding them, where the workers reward)."""
        exp, G = self.exp, self.exp.group_size
        rows = [exp.rows[i] for i in exp.sampler.take(exp.prompts_per_step)]
        if exp.env is not None:  # the workers play the episodes (env with Ray: distributed.rewards is workers)
            pending = self.engine.start_play(rows, G, exp.sampling, timed=True)
        else:
            prompts = [render_prompt(r["prompt"], exp.tokenizer, exp.template, exp.response_prefix) for r in rows]
            if exp.scorer is None:  # the workers reward beside the samples
                pending = self.engine.start_scored(prompts, rows, G, exp.sampling, timed=True)
            else:
                pending = self.engine.start_generate(prompts, G, exp.sampling, timed=True)
        return InFlight(step, version, rows, pending)

    def receive(self, flight: InFlight) -> None:
        """Wait for ``flight``'s batch (a no-op once received) and reward it here where the workers do not."""
        if flight.pending is None:
            return
        exp, G, rows = self.exp, self.exp.group_size, flight.rows
        got = self.engine.finish(flight.pending)
        if flight.pending.kind == "play":
            roll, scores, transcripts, stats = got
            batch = RolloutBatch(G, rows, roll, scores.texts, scores.rewards, scores.per_fn, stats, transcripts)
        else:
            roll, scores = got if flight.pending.kind == "scored" else (got, cast(Any, exp.scorer)(rows, got))
            batch = RolloutBatch(G, rows, roll, scores.texts, scores.rewards, scores.per_fn)
        flight.batch, flight.scores, flight.spans, flight.pending = batch, scores, dict(flight.pending.spans), None

    def sampler_idle(self, spans: dict[int, tuple[float, float]]) -> float:
        """The workers' mean wait between the end of their previous batch and the start of this one's shard."""
        gaps = [max(0.0, start - self.last_end[i]) for i, (start, _) in spans.items() if i in self.last_end]
        self.last_end.update({i: end for i, (_, end) in spans.items()})
        return sum(gaps) / len(gaps) if gaps else 0.0

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """The batches under way, waited for and kept whole (their prompts and seeds are behind the data position and
        RNG state the checkpoint saves), and the next step to start."""
        for flight in self.queue:
            self.receive(flight)
        return {
            "next_step": self.next_step,
            "batches": [
                {"step": f.step, "version": f.version, "rows": f.rows, "batch": f.batch, "scores": f.scores}
                for f in self.queue
            ],
        }

    def load_state_dict(self, state: dict | None) -> None:
        """Take up a checkpoint's batches under way (None: one written without asynchronous rollouts)."""
        self.queue.clear()
        if state is None:
            return
        self.next_step = state["next_step"]
        for b in state["batches"]:
            self.queue.append(InFlight(b["step"], b["version"], b["rows"], None, b["batch"], b["scores"], {}))


def sampling_time(spans: dict[int, tuple[float, float]]) -> float:
    """How long the workers took to sample (and reward) a batch: the mean of their shards' times (0: not timed, a
    batch kept in a checkpoint)."""
    return sum(end - start for start, end in spans.values()) / len(spans) if spans else 0.0
