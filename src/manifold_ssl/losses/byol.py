"""BYOL and SimSiam regression losses; Matrix-SSL Sec. 3.2, Eqs. 2–3.

Per ordered pair ``(p, z)``. The training step combines the two view pairings as the
authors' code does: BYOL *sums* them (``loss = loss_one + loss_two``, Grill et al.), SimSiam
averages them (``−(D(p1, z2) + D(p2, z1)) / 2``, Chen & He); see ``methods/method.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from ._common import Terms, check_pair, float32_inside
from ._registry import register_loss

__all__ = ["BYOLLoss", "SimSiamLoss", "byol_loss", "simsiam_loss"]


def _cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
    p, z = check_pair(p, z, ("p", "z"))
    return F.cosine_similarity(p, z.detach() if stop_gradient else z, dim=-1, eps=1e-12)


def _result(
    values: torch.Tensor, cos: torch.Tensor, return_terms: bool
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    loss = dist_utils.global_mean(values.sum(), cos.shape[0])
    if not return_terms:
        return loss
    return loss, {"cosine": dist_utils.global_mean(cos.detach().sum(), cos.shape[0])}


@float32_inside
def byol_loss(
    p: torch.Tensor, z: torch.Tensor, *, stop_gradient: bool = True, return_terms: bool = False
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """BYOL: ``mean_i ‖p̄_i − z̄_i‖² = mean_i (2 − 2 cos(p_i, z_i))`` (Matrix-SSL Eq. 3, / B).

    ``p`` (B, D) are the online predictions, ``z`` (B, D) the target projections; the target
    is detached (``stop_gradient``) as in BYOL and SimSiam. ``return_terms`` adds the mean
    ``cosine``. Distributed: the mean is over the global batch.
    """
    cos = _cosine(p, z, stop_gradient)
    return _result(2 - 2 * cos, cos, return_terms)


@float32_inside
def simsiam_loss(
    p: torch.Tensor, z: torch.Tensor, *, stop_gradient: bool = True, return_terms: bool = False
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """SimSiam: ``−mean_i cos(p_i, stopgrad(z_i))`` (Matrix-SSL Eq. 2, / B)."""
    cos = _cosine(p, z, stop_gradient)
    return _result(-cos, cos, return_terms)


@register_loss("byol")
class BYOLLoss(nn.Module):
    """BYOL's normalised MSE. ``forward(p, z)``, both (B, D). See :func:`byol_loss`.

    Example:
        >>> loss_fn = BYOLLoss()
        >>> p, z = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(p, z)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def forward(
        self, p: torch.Tensor, z: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return byol_loss(p, z, return_terms=return_terms)


@register_loss("simsiam")
class SimSiamLoss(nn.Module):
    """SimSiam's negative cosine. ``forward(p, z)``, both (B, D). See :func:`simsiam_loss`.

    Example:
        >>> loss_fn = SimSiamLoss()
        >>> p, z = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(p, z)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def forward(
        self, p: torch.Tensor, z: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return simsiam_loss(p, z, return_terms=return_terms)
