"""Projector / predictor MLPs from a spec string, and the EMA momentum encoder."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..schedules import cosine

__all__ = ["MomentumEncoder", "cosine_momentum", "embedding_dim", "mlp_from_spec"]


def embedding_dim(spec: str, default: int) -> int:
    """The output width of the MLP ``spec`` (``"2048-512-128"`` → 128); ``default`` (the
    input width) for ``""``, no MLP."""
    return int(spec.split("-")[-1]) if spec else default


def mlp_from_spec(in_dim: int, spec: str, last_bn: bool = False) -> nn.Module:
    """MLP ``in_dim → a → b → … → out`` from ``spec = "a-b-…-out"``, e.g. ``"2048-512-128"``.

    Hidden layers are Linear → BatchNorm1d → ReLU (SimCLR/BYOL/Barlow Twins style); the last
    layer is a plain Linear. ``last_bn`` adds an affine-free BatchNorm after it, and drops that
    Linear's bias, which the BatchNorm would subtract again (SimSiam and MEC freeze it for the
    same reason). An empty spec returns the identity.
    """
    if not spec:
        return nn.Identity()
    try:
        dims = [int(v) for v in spec.split("-")]
    except ValueError:
        raise ValueError(f"head spec must look like '2048-512-128', got {spec!r}") from None
    if any(d < 1 for d in dims):
        raise ValueError(f"head spec dimensions must be positive, got {spec!r}")
    layers: list[nn.Module] = []
    prev = in_dim
    for d in dims[:-1]:
        layers += [nn.Linear(prev, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True)]
        prev = d
    layers.append(nn.Linear(prev, dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL's schedule: τ = 1 − (1 − τ_base)(cos(π·step/total) + 1)/2, rising from τ_base to 1."""
    if total <= 0:
        return base
    return cosine(step / total, base, 1.0)


class MomentumEncoder(nn.Module):
    """An exponential moving average of ``online``: θ_m ← τ θ_m + (1 − τ) θ_o; never trained.

    Buffers (BatchNorm statistics) are copied from the online network at each update.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(online)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, tau: float | torch.Tensor) -> None:
        """The EMA step; ``tau`` a float, or a 0-dim device tensor (a compiled step's, where
        a float would be a constant of the graph; checked where it is computed)."""
        if not isinstance(tau, torch.Tensor) and not 0 <= tau <= 1:
            raise ValueError(f"momentum tau must be in [0, 1], got {tau}")
        mine: list[torch.Tensor] = list(self.module.parameters())
        theirs: list[torch.Tensor] = [p.detach() for p in online.parameters()]
        torch._foreach_mul_(mine, tau)
        if isinstance(tau, torch.Tensor):
            torch._foreach_add_(mine, torch._foreach_mul(theirs, 1 - tau))
        else:
            torch._foreach_add_(mine, theirs, alpha=1 - tau)
        for b_m, b_o in zip(self.module.buffers(), online.buffers(), strict=True):
            b_m.copy_(b_o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = self.module(x)
        return out
