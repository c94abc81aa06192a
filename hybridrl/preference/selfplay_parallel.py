"""The processes of a self-play run: one, or several data-parallel ones under a distributed launcher.

Self-play runs on one process, or on several started by ``accelerate launch --multi_gpu`` or
``torchrun`` (each process holds the whole policy and reference: data-parallel only, FSDP and
DeepSpeed are refused). The loop shards work and then agrees on one result:

- each iteration's prompts are split into contiguous shards: a process samples and judges its own
  shard, and every process then holds the gathered answers and judgments (the main process persists
  them), so the judge is asked each question once over all processes;
- the anchor log-probs are computed shard by shard and gathered the same way;
- every process builds the same global batches of pairs; each computes the loss summed over its
  part of a batch, divided by the batch's global size, and the gradients are summed over the
  processes before clipping. The step's gradient is then exactly the one-process gradient of that
  global batch (up to the order of floating-point sums), every process takes the same step, and the
  weights, AdamW moments and extragradient backups stay equal everywhere.

Why not ``accelerate.Accelerator`` and a DDP wrapper: its state is process-wide with one mixed
precision (self-play owns its autocast and loss scaling), and DDP's backward hooks need every
process to run the same number of forwards, which uneven shards of a batch do not. One coalesced
all-reduce of the gradients per step does the same sum. With one process nothing here is used: no
process group, no accelerate import, the same numbers as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from hybridrl.preference.models import check_data_parallel, launch_device, launched_processes

T = TypeVar("T")
S = TypeVar("S", Tensor, list)

BUCKET_ELEMENTS = 1 << 25
"""Gradient elements per all-reduce (128 MiB in float32): few collectives, bounded extra memory."""


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: its device, rank and the number of processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """The process that writes files (metrics, checkpoints, samples, the model)."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """``[start, end)`` of this process's contiguous share of ``n`` items (shares differ by one at
        most; some are empty when there are fewer items than processes)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def part(self, items: S) -> S:
        """This process's contiguous share of a list or tensor (all of it with one process)."""
        start, end = self.bounds(len(items))
        return items[start:end]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, value: T) -> list[T]:
        """Every process's ``value`` (picklable; tensors on the CPU), in rank order."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def from_main(self, value: T) -> T:
        """The main process's ``value`` on every process."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, make: Callable[[], T]) -> T:
        """``make()`` on the main process, then on the others; an error on the main one is raised on all.

        For what reads files the main process may write as it starts (a run directory's record).
        """
        if self.world == 1:
            return make()
        if not self.is_main:
            failure = self.from_main(None)
            if failure is not None:
                raise failure
            return make()
        try:
            result = make()
        except Exception as err:
            self.from_main(err)  # the others raise it too instead of waiting for the main process
            raise
        self.from_main(None)
        return result

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the processes (a new tensor; the input itself with one process)."""
        if self.world == 1:
            return tensor
        total = tensor.detach().clone()
        torch.distributed.all_reduce(total)
        return total

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``parameters`` over the processes, in place, in coalesced buckets.

        A parameter this process sent no gradient to (an empty shard) contributes zeros, so every
        process reduces the same buckets and ends with the same gradients.
        """
        if self.world == 1:
            return
        grads: dict[torch.dtype, list[Tensor]] = {}
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.setdefault(p.grad.dtype, []).append(p.grad)
        for same_dtype in grads.values():
            bucket: list[Tensor] = []
            size = 0
            for grad in [*same_dtype, None]:
                if grad is not None:
                    bucket.append(grad)
                    size += grad.numel()
                if bucket and (grad is None or size >= BUCKET_ELEMENTS):
                    flat = torch.cat([g.reshape(-1) for g in bucket])
                    torch.distributed.all_reduce(flat)
                    for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                        g.copy_(part.view_as(g))
                    bucket, size = [], 0


def make_processes(device: str | None) -> Processes:
    """This process's :class:`Processes`: one on ``device`` when run directly, else its launcher's rank.

    Under a launcher (``WORLD_SIZE > 1``) each process takes its own GPU (or the CPU, with gloo);
    ``device`` may then name the kind only (``cpu``, ``cuda`` or None), not one GPU for all.
    """
    # accelerate's launcher marks sharded configs in the environment, whatever the process count
    for name in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true":
            check_data_parallel(name)
    kind = launch_device(device)
    if launched_processes() == 1:
        return Processes(kind)
    from accelerate import PartialState

    state = PartialState(cpu=kind.type == "cpu")  # the process group (gloo on the CPU, NCCL on GPUs)
    check_data_parallel(state.distributed_type)
    if state.num_processes == 1:  # a launcher's variables without a process group: run alone
        return Processes(kind)
    mine = state.device if state.device.type != "cpu" else torch.device("cpu")
    return Processes(mine, state.process_index, state.num_processes)


def join_shards(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' shards of one result (dicts alike: lists, tensors split on dim 0, or None), joined
    in rank order."""
    joined: dict[str, Any] = {}
    for key, first in pieces[0].items():
        values = [piece[key] for piece in pieces]
        if first is None:
            joined[key] = None
        elif isinstance(first, Tensor):
            joined[key] = torch.cat(values)
        else:
            joined[key] = [item for value in values for item in value]
    return joined
