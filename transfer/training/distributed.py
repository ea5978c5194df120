"""The training side of several processes: the whole batch's rows gathered with their gradients, and the
student under DistributedDataParallel. The generic process-group plumbing (joining the job, collectives,
lost peers, shard rules) is ``zoo.processes``, which extraction shares; its names are re-exported here
for the trainer and the launch worker.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zoo.processes import (  # noqa: F401 - the trainer's and the launch worker's names
    DEFAULT_TIMEOUT, TIMEOUT_VARIABLE, Context, DistributedError, JobStopped, any_rank, backend, backend_reason,
    broadcast, current, environment, init, lost_peer, on_main, session, shard, shard_sizes, shielded, shutdown,
    sum_over_ranks, timeout,
)


class _GatherRows(torch.autograd.Function):
    """Every rank's rows in rank order, differentiable.

    Every rank computes the same loss on the gathered rows, so the gradient reaching one rank's rows is
    the sum of what every rank's loss sends them: the backward pass is an all-reduce of the gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        ctx.sizes = sizes
        padded = F.pad(x, (0, 0, 0, max(sizes) - x.shape[0])).contiguous()  # all_gather needs equal shapes
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:dist.get_rank()])
        return grad[start:start + ctx.sizes[dist.get_rank()]], None


def gather_rows(x: torch.Tensor, total: int) -> torch.Tensor:
    """The ``(total, d)`` rows of a global batch from each rank's ``shard`` of them, with gradients."""
    ctx = current()
    if not ctx.active:
        return x
    sizes = tuple(shard_sizes(total, ctx.world_size))
    if x.shape[0] != sizes[ctx.rank]:
        raise ValueError(f"rank {ctx.rank} holds {x.shape[0]} rows of a batch of {total}; expected {sizes[ctx.rank]}")
    return _GatherRows.apply(x, sizes)


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` under DistributedDataParallel (gradients averaged over the ranks at each backward pass)."""
    ctx = current()
    if not ctx.active:
        return module
    ids = [ctx.local_rank] if backend() == "nccl" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
