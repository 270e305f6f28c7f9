"""Process-group helpers: rank, world size and gathers that keep the autograd graph.

Every function is a no-op (or the identity) when ``torch.distributed`` is not initialised or
runs a single process, so the same method code runs on a laptop and on many GPUs.

Why gather *with* gradient: in SimCLR / MoCo v3 every local query is contrasted against the keys
of all processes. The loss therefore depends on the remote keys, and their gradient must flow
back to the process that produced them. ``torch.distributed.all_gather`` returns tensors cut off
from the graph; a model trained with it silently gets only the local part of the gradient (a bug
peers have shipped more than once). :func:`gather` returns the concatenation with a backward that
sums the incoming gradients across processes and hands each process the slice of its own rows.
Combined with DDP's gradient averaging this gives exactly the gradient of the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.batch = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather(x: Tensor, *, grad: bool = True) -> Tensor:
    """Concatenate ``x`` (B, ...) from all processes along dim 0 -> (world_size * B, ...).

    Rows are ordered by rank, so process ``r``'s rows start at ``r * B``. Every process must pass
    the same batch size. With ``grad=True`` (default) gradients flow back to the process that
    owns each row; with ``grad=False`` the result is detached (MoCo keys, queue contents).
    Identity on a single process.
    """
    if not is_distributed():
        return x
    if grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum of ``x`` over all processes (identity on one process)."""
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """In-place broadcast from ``src`` (no gradient); identity on one process."""
    if is_distributed():
        dist.broadcast(x, src)
    return x
