"""Process-group setup for ``torchrun``, its teardown, and the device of this rank.

The library creates a process group only when ``torchrun`` describes one in the environment
and none exists, and then destroys it itself, on every rank, after a barrier. A rank that
exits with a live group, or while another rank still tears down a group whose rendezvous
store it hosts, aborts in C++ ("terminate called without an active exception"); and
rank-0-only work after training (evaluation, fine-tuning) must find no group, or a
synchronised layer would wait for ranks that have returned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "resolve_device", "setup_distributed", "teardown_distributed"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this library created the group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N, mps)"
        ) from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("the device asks for MPS, but no MPS device is available")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"the device {name!r} asks for CUDA, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"the device {name!r} does not exist: {torch.cuda.device_count()} CUDA devices"
            )
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def setup_distributed(device_name: str) -> DistContext:
    """Join the process group that exists, or the one ``torchrun`` describes in the
    environment, if any (``owns_group`` tells whether this call created it)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():  # the caller's group: not ours to end
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    use_nccl = device_name != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_nccl else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def teardown_distributed(ctx: DistContext | None = None, *, synchronise: bool = True) -> None:
    """Destroy the group :func:`setup_distributed` created (``ctx``), or any group when ``ctx``
    is None (a command line ending a caller's group before rank-0-only work): first a barrier
    (``synchronise``), so that no rank leaves while another still uses the group, then on
    every rank."""
    if ctx is not None and not ctx.owns_group:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    if synchronise:
        dist.barrier()
    dist.destroy_process_group()
