"""Autograd-aware collectives: how a batch-coupled objective sees the global batch.

Convention used by every loss in :mod:`manifold_ssl.losses` under an initialised
``torch.distributed`` process group with world size W > 1: each rank returns the loss of the
*global* batch (the concatenation of all ranks' batches, in rank order), and the backward pass of
each collective sums the incoming gradients over ranks. The gradient that reaches a rank's local
embeddings is therefore ``W * dL/dz_local``, and DDP's gradient *averaging* over ranks yields
exactly the single-process parameter gradient ``dL/dtheta`` on the global batch. No hidden
``1/W`` factor (the bug of gathering without autograd) and no extra ``W`` factor.

Written by hand rather than with ``torch.distributed.nn`` because the backward of its
``all_reduce`` has changed semantics across releases; the two functions below are small and
tested against one process in ``tests/test_distributed.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

_LOCAL = threading.local()


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside, every helper here (and so every loss and synchronised BatchNorm) acts as on one
    process: for work one rank does alone, such as the training probes, which must meet no
    collective the other ranks are not in."""
    previous = getattr(_LOCAL, "on", False)
    _LOCAL.on = True
    try:
        yield
    finally:
        _LOCAL.on = previous


@contextlib.contextmanager
def fixed_batch_sizes() -> Iterator[None]:
    """Inside, every rank's batch sizes are the same at every call (the training loop's global
    batch, split the same way at every step): the sizes that :func:`gather` and
    :func:`global_count` exchange are exchanged once and remembered, so that later steps read
    nothing back from the device (each exchange is a collective and a host read)."""
    previous = getattr(_LOCAL, "sizes", None)
    _LOCAL.sizes = {}
    try:
        yield
    finally:
        _LOCAL.sizes = previous


def _remembered(key: tuple[Any, ...], exchange: Any) -> Any:
    cache = getattr(_LOCAL, "sizes", None)
    if cache is None:
        return exchange()
    if key not in cache:
        cache[key] = exchange()
    return cache[key]


def world_size() -> int:
    """The number of processes of the default group, 1 when not distributed or inside
    :func:`local_only`."""
    if getattr(_LOCAL, "on", False):
        return 1
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def is_distributed() -> bool:
    return world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _sizes(n_local: int, device: torch.device) -> list[int]:
    """Every rank's ``n_local``, in rank order (remembered in :func:`fixed_batch_sizes`)."""

    def exchange() -> list[int]:
        size = torch.tensor([n_local], device=device, dtype=torch.long)
        sizes = [torch.zeros_like(size) for _ in range(world_size())]
        dist.all_gather(sizes, size)
        return [int(s.item()) for s in sizes]

    result: list[int] = _remembered(("sizes", n_local, str(device)), exchange)
    return result


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        x = x.contiguous()
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.start = sum(sizes[: dist.get_rank()])
        ctx.stop = ctx.start + x.shape[0]
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """A new tensor holding ``x`` summed over ranks; ``x`` itself on one process. Not
    differentiated: for the inside of an autograd function that does its own backward."""
    if not is_distributed():
        return x
    out = x.detach().contiguous().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks; identity on one process. Differentiable (backward sums too)."""
    if not is_distributed():
        return x
    out: torch.Tensor = _AllReduceSum.apply(x)
    return out


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n_rank, ...) over ranks along dim 0, in rank order; sizes may differ.

    Identity on one process. Differentiable: the backward sums the gradient over ranks and
    returns this rank's slice.
    """
    return gather_with_offset(x)[0]


def gather_with_offset(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(gather(x), start)`` where ``start`` is the index of this rank's first row in it."""
    if not is_distributed():
        return x, 0
    sizes = _sizes(x.shape[0], x.device)
    out: torch.Tensor = _AllGather.apply(x, sizes)
    return out, sum(sizes[: dist.get_rank()])


def global_mean(local_sum: torch.Tensor, local_count: int) -> torch.Tensor:
    """Mean over the global batch of per-sample terms whose local sum is ``local_sum``."""
    if not is_distributed():
        return local_sum / local_count
    count = torch.tensor(float(local_count), device=local_sum.device, dtype=local_sum.dtype)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return all_reduce_sum(local_sum) / count


def global_count(local_count: int, device: torch.device) -> int:
    """The global batch size given this rank's ``local_count`` (remembered in
    :func:`fixed_batch_sizes`)."""
    if not is_distributed():
        return local_count

    def exchange() -> int:
        count = torch.tensor(local_count, device=device, dtype=torch.long)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        return int(count.item())

    result: int = _remembered(("count", local_count, str(device)), exchange)
    return result
