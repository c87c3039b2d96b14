"""Small helpers shared by the objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_same_shape, check_tensor

Terms = dict[str, torch.Tensor]


def check_views(z: torch.Tensor, name: str = "z", min_views: int = 2) -> torch.Tensor:
    """``z`` must be a finite (B, K, D) tensor with B >= 1 and K >= ``min_views``."""
    z = check_tensor(z, name, 3, "(B, K, D)", min_sizes={0: 1, 2: 1})
    if z.shape[1] < min_views:
        raise ValueError(
            f"{name} must hold K >= {min_views} views along dim 1 of (B, K, D), got K = "
            f"{z.shape[1]} (shape {tuple(z.shape)})"
        )
    return z


def check_pair(
    z1: torch.Tensor, z2: torch.Tensor, names: tuple[str, str] = ("z1", "z2"), min_batch: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two finite (B, D) tensors of the same shape with B >= ``min_batch``."""
    z1 = check_tensor(z1, names[0], 2, "(B, D)", min_sizes={0: min_batch, 1: 1})
    z2 = check_tensor(z2, names[1], 2, "(B, D)", min_sizes={0: min_batch, 1: 1})
    check_same_shape(z1, z2, *names)
    return z1, z2


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last dim (safe at zero vectors)."""
    return F.normalize(x, dim=-1, eps=1e-12)


def safe_norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-24) -> torch.Tensor:
    """Euclidean norm with a finite gradient at zero (``√(‖x‖² + 0)`` clamped inside)."""
    return torch.sqrt((x * x).sum(dim=dim).clamp_min(eps))


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Promote half/bfloat16 (autocast outputs) to float32; leave float32/64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
