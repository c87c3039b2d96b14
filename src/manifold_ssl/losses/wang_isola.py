"""Alignment and uniformity on the hypersphere (Wang & Isola, ICML 2020, Sec. 4.1)."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive, check_tensor
from ._common import Terms, check_pair, float32_inside, halves, unit
from ._registry import register_loss

__all__ = ["AlignmentLoss", "UniformityLoss", "alignment_loss", "uniformity_loss"]


@float32_inside
def alignment_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """``L_align = E ‖f(x) − f(y)‖^α`` over positive pairs, rows of ``x``, ``y`` (B, D).

    Rows are L2-normalised here. Distributed: the mean is over the global batch.
    """
    x, y = check_pair(x, y, ("x", "y"))
    alpha = check_positive(alpha, "alpha")
    diff = unit(x) - unit(y)
    dist_sq = (diff * diff).sum(dim=1)
    # ‖·‖^α as (‖·‖²)^(α/2); clamp keeps the gradient finite at identical rows for α < 2
    per_pair = dist_sq.clamp_min(1e-30).pow(alpha / 2) if alpha != 2 else dist_sq
    return dist_utils.global_mean(per_pair.sum(), x.shape[0])


@float32_inside
def uniformity_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``L_uniform = log E_{i≠j} exp(−t ‖f(x_i) − f(x_j)‖²)`` over rows of ``x`` (B, D), B >= 2.

    Rows are L2-normalised here. Distributed: rows are gathered and the mean is over all
    ordered pairs of the global batch.
    """
    x = check_tensor(x, "x", 2, "(B, D)", min_sizes={0: 2, 1: 1})
    t = check_positive(t, "t")
    xn = unit(x)
    keys, start = dist_utils.gather_with_offset(xn)
    sq = (2 - 2 * xn @ keys.T).clamp_min(0)  # (B, B_global) squared distances on the sphere
    rows = torch.arange(x.shape[0], device=x.device)
    kernel = torch.exp(-t * sq)
    kernel = kernel.index_put((rows, rows + start), torch.zeros_like(rows, dtype=kernel.dtype))
    n = keys.shape[0]
    return torch.log(dist_utils.all_reduce_sum(kernel.sum()) / (n * (n - 1)))


@register_loss("alignment")
class AlignmentLoss(nn.Module):
    """Wang–Isola alignment of the two views. ``forward(z1, z2)``, both (B, D).

    Example:
        >>> loss_fn = AlignmentLoss()
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        loss = alignment_loss(z1, z2, self.alpha)
        return (loss, {}) if return_terms else loss


@register_loss("uniformity")
class UniformityLoss(nn.Module):
    """Wang–Isola uniformity averaged over the two views (their Eq. 5 with weights ½, ½).

    Example:
        >>> loss_fn = UniformityLoss()
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(self, t: float = 2.0) -> None:
        super().__init__()
        self.t = check_positive(t, "t")

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        check_pair(z1, z2)
        return halves(uniformity_loss(z1, self.t), uniformity_loss(z2, self.t), return_terms)
