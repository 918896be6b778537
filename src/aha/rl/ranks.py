"""Data-parallel trainer ranks (``distributed.trainers: M``) on ``torch.distributed``: this process is rank 0 (it
holds the run: the policy, the optimizer, checkpoints, logs and the rollout workers); ranks 1..M−1 are Ray actors,
each with a copy of the policy and of the optimizer and its schedule, made from rank 0's when the group starts (so on
``--resume`` from the checkpoint's). All M join one process group: gloo on a CPU, NCCL on a GPU.

Every optimizer step of the update (:func:`aha.rl.optimize.update_rows`), rank ``r`` takes the ``r``-th of ``M``
contiguous shares of the minibatch's rows and computes its micro-batch losses with the *whole* minibatch's normalisers
(its sequences and tokens), so the sum of the ranks' gradients is the one-process gradient up to the order of float
additions. The passes and minibatches are drawn by rank 0 from the trainer's RNG, as in one process, and sent to the
others. The gradients and the minibatch's loss are then summed over the ranks with one ``all_reduce`` of a flattened
buffer (what DDP does, in one bucket, without its wrapper: the forward stays
:func:`~aha.rl.forward.policy_forward`), and each rank clips and steps identically: the weights stay the same
on every rank, and rank 0's are what the rollout workers load and what checkpoints hold. The statistics are summed
once at the end of the update, so the logged metrics are the one-process ones. (A model with dropout draws its masks
from each rank's own RNG: not the one process's.)

Faults: every Ray call and the process group have ``distributed.timeout_s``; while rank 0 waits in an all-reduce it
watches the other ranks, and a rank that fails stops the run with one line (no restart: ``--resume`` continues from
the last checkpoint).
"""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from aha.algos.advantages import advantage_estimator
from aha.errors import TrainingError
from aha.optim import make_optimizer
from aha.rl.optimize import OptimizerStep, UpdateSettings, update_rows


class Share:
    """One rank's part of a data-parallel update: its rows of each minibatch, and sums over the ranks. ``watch``
    (rank 0) is called while an all-reduce waits, to notice a rank that failed."""

    def __init__(self, rank: int, world: int, device: torch.device, timeout_s: float, watch=None):
        self.rank, self.world, self.device, self.timeout_s, self.watch = rank, world, device, timeout_s, watch

    def rows(self, mb_rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a minibatch's row indices (possibly empty)."""
        return mb_rows.tensor_split(self.world)[self.rank]

    def sum_gradients(self, modules: list[torch.nn.Module], loss: float) -> float:
        """Sum every trainable parameter's gradient and ``loss`` over the ranks (one all-reduce); returns the summed
        loss. A parameter keeps no gradient (None, as in one process) where no rank gave it one."""
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        grads = [
            p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
            for p in params
        ]
        seen = torch.tensor([float(p.grad is not None) for p in params] + [loss], device=self.device)
        flat = self._all_reduce(torch.cat(grads + [seen]))
        for p, g, n in zip(params, flat[: -len(seen)].split([p.numel() for p in params]), flat[-len(seen) :].tolist()):
            p.grad = g.view_as(p).to(p.dtype) if n > 0 else None
        return flat[-1].item()

    def sum_stats(self, stats: dict, same: set) -> dict:
        """The statistics summed over the ranks, except those in ``same`` (already equal on every rank)."""
        keys = [k for k in stats if k not in same]
        total = self._all_reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device))
        return stats | dict(zip(keys, total.tolist()))

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
        if self.watch is not None:  # rank 0: a rank that raised would leave this waiting until the timeout
            deadline, last = time.monotonic() + self.timeout_s, 0.0
            while not work.is_completed():
                if time.monotonic() - last > 0.05:
                    self.watch()
                    last = time.monotonic()
                if time.monotonic() > deadline:
                    raise TrainingError(
                        f"the trainer ranks did not meet within {self.timeout_s:g} s (distributed.timeout_s)"
                    )
                time.sleep(0.0002)
        try:
            work.wait()
        except RuntimeError as e:  # a rank's process died: gloo says its connection closed
            raise TrainingError(
                f"trainer rank {self.rank}: the all-reduce failed ({str(e).splitlines()[0][:200]})"
            ) from None
        return tensor


class TrainerRank:
    """Rank 1..M−1 (the Ray actor's class): joins the group, takes rank 0's policy and optimizer, updates with it."""

    def __init__(self, threads: int):
        torch.set_num_threads(max(1, threads))
        self.opt: OptimizerStep | None = None

    def join(self, init_method: str, rank: int, world: int, backend: str, timeout_s: float) -> int:
        dist.init_process_group(
            backend, init_method=init_method, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
        self.share = Share(rank, world, torch.device("cpu"), timeout_s)
        return os.getpid()

    def load(self, settings: UpdateSettings, train, blob: bytes, amp: torch.dtype | None, cuda: bool) -> None:
        """Rank 0's policy (pickled whole: its attention and checkpointing settings too), optimizer and schedule;
        ``settings`` and ``train`` (the config's train section) as rank 0's."""

        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=False)
        policy = state["policy"]
        optimizer, scheduler = make_optimizer(policy, train, train.steps * settings.updates)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        estimator = advantage_estimator(settings.rl.algo)
        self.opt = OptimizerStep(settings, policy, optimizer, scheduler, estimator, device, amp)
        self.share.device = device

    def update(self, work: tuple):
        """``work``: (the batch's tensors, the passes' minibatches), as :meth:`TrainerGroup.update` sends them."""

        batch, plan = work
        assert self.opt is not None  # load() came first (TrainerGroup)
        dev = self.opt.device
        batch = replace(
            batch,
            tensors={k: v.to(dev) for k, v in batch.tensors.items()},
            **{
                k: getattr(batch, k).to(dev)
                for k in ("old_logp", "ref_logp", "advantages")
                if getattr(batch, k) is not None
            },
        )
        return update_rows(self.opt, batch, [[rows.to(dev) for rows in p] for p in plan], self.share)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class TrainerGroup:
    """Rank 0's handle on the group: starts ranks 1..M−1, shares each update with them, stops them."""

    def __init__(self, opt: OptimizerStep, dcfg, train):
        """``opt``: rank 0's optimizer step; ``dcfg``, ``train``: the config's distributed and train sections."""
        import ray

        self.opt, self.ray = opt, ray
        self.world, self.timeout_s = dcfg.trainers, dcfg.timeout_s
        self.calls: list = []
        if dist.is_initialized():
            raise TrainingError("distributed.trainers > 1: this process already belongs to a torch.distributed group")
        cuda = opt.device.type == "cuda"
        local = dcfg.address is None  # a local Ray instance: the group meets on the loopback interface
        host = "127.0.0.1" if local else ray.util.get_node_ip_address()
        with socket.socket() as s:  # a free port for the group's rendezvous
            s.bind((host, 0))
            port = s.getsockname()[1]
        threads = max(1, (os.cpu_count() or 1) // self.world) if local else torch.get_num_threads()
        actor = ray.remote(
            num_cpus=0,
            num_gpus=1 if cuda else 0,
            max_restarts=0,
            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
        )(TrainerRank)
        self.ranks: list[Any] = [actor.remote(threads) for _ in range(1, self.world)]  # Ray actor handles
        backend, init = ("nccl" if cuda else "gloo"), f"tcp://{host}:{port}"
        joined = [a.join.remote(init, r, self.world, backend, self.timeout_s) for r, a in enumerate(self.ranks, 1)]
        dist.init_process_group(
            backend, init_method=init, rank=0, world_size=self.world, timeout=timedelta(seconds=self.timeout_s)
        )
        self._get(joined, "join the process group")
        blob = io.BytesIO()
        torch.save(
            {"policy": opt.policy, "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict()},
            blob,
        )
        ref = ray.put(blob.getvalue())
        loads = [a.load.remote(opt.settings, train, ref, opt.amp, cuda) for a in self.ranks]
        self._get(loads, "load the policy")
        self.share = Share(0, self.world, opt.device, self.timeout_s, watch=self._watch)

    def update(self, batch, plan: list[list[torch.Tensor]]) -> tuple[dict, str | None]:
        """:func:`~aha.rl.optimize.update_rows` on every rank at once; returns rank 0's (summed) statistics."""

        cpu = {
            k: getattr(batch, k).cpu() for k in ("old_logp", "ref_logp", "advantages") if getattr(batch, k) is not None
        }
        slim = replace(
            batch,
            rows=[],
            rollouts=None,
            texts=[],
            rewards=[],
            per_fn={},
            kl=None,
            judgements=None,
            tensors={k: batch.tensors[k].cpu() for k in ("input_ids", "attention_mask", "mask")},
            **cpu,
        )
        ref = self.ray.put((slim, [[rows.cpu() for rows in p] for p in plan]))
        self.calls = [a.update.remote(ref) for a in self.ranks]
        out = update_rows(self.opt, batch, plan, self.share)
        self._get(self.calls, "update")
        self.calls = []
        return out

    def close(self) -> None:
        for a in self.ranks:
            self.ray.kill(a)
        self.ranks = []
        if dist.is_initialized():
            dist.destroy_process_group()

    def _watch(self) -> None:
        """Raise if a rank's update call already failed (it would never join the all-reduce rank 0 waits in)."""
        ready, _ = self.ray.wait(self.calls, num_returns=len(self.calls), timeout=0)
        self._get(ready, "update")

    def _get(self, refs: list, what: str):
        try:
            return self.ray.get(refs, timeout=self.timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise TrainingError(
                f"the trainer ranks could not {what} within {self.timeout_s:g} s (distributed.timeout_s)"
            ) from None
        except self.ray.exceptions.RayError as e:
            cause = str(e).strip().splitlines()[-1][:300]
            raise TrainingError(f"a trainer rank failed to {what}: {cause}") from None


def start_trainers(opt: OptimizerStep, dcfg, train, run) -> TrainerGroup:
    """Ranks 1..M−1 started from the optimizer step's current weights and state (after a resume: the
    checkpoint's), stopped when ``run`` finishes."""
    group = TrainerGroup(opt, dcfg, train)
    run.on_finish.insert(0, group.close)  # before the rollout workers' close shuts Ray down
    return group
