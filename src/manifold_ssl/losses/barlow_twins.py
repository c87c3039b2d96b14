"""Barlow Twins (Zbontar et al. 2021); Matrix-SSL Sec. 3.2, Eq. 4."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive
from ._common import Terms, check_pair, float32_inside
from ._registry import register_loss

__all__ = ["BarlowTwinsLoss", "barlow_twins_loss"]

_BN_EPS = 1e-5  # nn.BatchNorm1d's eps, which the official code uses to standardise


def _standardise(x: torch.Tensor, n: int) -> torch.Tensor:
    """(x − mean)/√(var + eps) per feature over the global batch (biased var, as BatchNorm)."""
    mean = dist_utils.all_reduce_sum(x.sum(dim=0)) / n
    centred = x - mean
    var = dist_utils.all_reduce_sum((centred * centred).sum(dim=0)) / n
    return centred / torch.sqrt(var + _BN_EPS)


@float32_inside
def barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lambd: float = 0.0051,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """``Σ_i (1 − c_ii)² + λ Σ_i Σ_{j≠i} c_ij²`` (Barlow Twins Eq. 1; Matrix-SSL Eq. 4).

    ``c = z̃1ᵀ z̃2 / B`` (D, D) is the cross-correlation of the features standardised over the
    batch exactly as the official code does (affine-free BatchNorm: biased variance, eps 1e-5).

    Args:
        z1, z2: (B, D) projector outputs, B >= 2.
        lambd: off-diagonal weight λ >= 0 (official default 0.0051).

    Distributed: means, variances and ``c`` are sums over ranks (as the official code's
    SyncBatchNorm plus ``all_reduce(c)``).
    """
    z1, z2 = check_pair(z1, z2, min_batch=2)
    lambd = check_positive(lambd, "lambd", allow_zero=True)
    n = dist_utils.global_count(z1.shape[0], z1.device)
    c = dist_utils.all_reduce_sum(_standardise(z1, n).T @ _standardise(z2, n)) / n  # (D, D)
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    loss = on_diag + lambd * off_diag
    if return_terms:
        return loss, {"on_diagonal": on_diag.detach(), "off_diagonal": off_diag.detach()}
    return loss


@register_loss("barlow_twins")
class BarlowTwinsLoss(nn.Module):
    """Barlow Twins. See :func:`barlow_twins_loss`. ``forward(z1, z2)``, both (B, D).

    Example:
        >>> loss_fn = BarlowTwinsLoss(lambd=0.0051)
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(self, lambd: float = 0.0051) -> None:
        super().__init__()
        self.lambd = check_positive(lambd, "lambd", allow_zero=True)

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return barlow_twins_loss(z1, z2, self.lambd, return_terms=return_terms)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"
