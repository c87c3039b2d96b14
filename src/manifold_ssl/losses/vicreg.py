"""VICReg (Bardes, Ponce & LeCun 2022); Matrix-SSL Sec. 3.2, Eq. 5."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive
from ._common import Terms, check_pair, float32_inside
from ._registry import register_loss

__all__ = ["VICRegLoss", "vicreg_loss"]


def _variance_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official std hinge ``mean(relu(1 − √(var + 1e-4)))`` and off-diagonal cov² sum / D."""
    n, d = x.shape
    x = x - x.mean(dim=0)
    std = torch.sqrt(x.var(dim=0) + 1e-4)  # unbiased, as torch.var and the official code
    cov = x.T @ x / (n - 1)  # (D, D)
    off = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return F.relu(1 - std).mean(), off / d


@float32_inside
def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """VICReg: ``λ·invariance + μ·variance + ν·covariance`` with the official 25/25/1.

    * invariance: ``mse(z1, z2)`` (mean over batch and features);
    * variance: ``½[mean_j relu(1 − std(z1_j)) + mean_j relu(1 − std(z2_j))]``, std with
      unbiased variance + 1e-4;
    * covariance: ``Σ_{i≠j} cov(z1)_ij² / D + Σ_{i≠j} cov(z2)_ij² / D`` after centring.

    Args:
        z1, z2: (B, D) expander outputs, B >= 2 (not normalised, as in the paper).
        sim_coeff, std_coeff, cov_coeff: the weights λ, μ, ν >= 0.

    Distributed: the embeddings are gathered with gradient (the official ``FullGatherLayer``)
    and every rank evaluates the loss of the global batch.
    """
    z1, z2 = check_pair(z1, z2, min_batch=2)
    coeffs = [
        check_positive(v, name, allow_zero=True)
        for v, name in (
            (sim_coeff, "sim_coeff"),
            (std_coeff, "std_coeff"),
            (cov_coeff, "cov_coeff"),
        )
    ]
    x, y = dist_utils.gather(z1), dist_utils.gather(z2)
    invariance = F.mse_loss(x, y)
    std_x, cov_x = _variance_covariance(x)
    std_y, cov_y = _variance_covariance(y)
    variance = (std_x + std_y) / 2
    covariance = cov_x + cov_y
    loss = coeffs[0] * invariance + coeffs[1] * variance + coeffs[2] * covariance
    if return_terms:
        terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
        return loss, {k: v.detach() for k, v in terms.items()}
    return loss


@register_loss("vicreg")
class VICRegLoss(nn.Module):
    """VICReg. See :func:`vicreg_loss`. ``forward(z1, z2)``, both (B, D).

    Example:
        >>> loss_fn = VICRegLoss()
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(
        self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
    ) -> None:
        super().__init__()
        self.sim_coeff = check_positive(sim_coeff, "sim_coeff", allow_zero=True)
        self.std_coeff = check_positive(std_coeff, "std_coeff", allow_zero=True)
        self.cov_coeff = check_positive(cov_coeff, "cov_coeff", allow_zero=True)

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return vicreg_loss(
            z1, z2, self.sim_coeff, self.std_coeff, self.cov_coeff, return_terms=return_terms
        )

    def extra_repr(self) -> str:
        return f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}"
