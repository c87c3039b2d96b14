"""Total coding rate (TCR, MCR²/EMP-SSL) and maximal entropy coding (MEC).

Matrix-SSL Sec. 3.2, Eq. 6 (TCR) and Eq. 8 (MEC); Thm 4.4 relates TCR to the uniformity MCE
(see :func:`tcr_loss` for the corrected constant).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_order, check_positive, check_tensor
from ..geometry._precision import full_precision, to_float64
from ..geometry.matrix_info import taylor_log
from ._common import Terms, check_pair, halves, result_dtype, unit
from ._registry import register_loss

__all__ = ["MECLoss", "TCRLoss", "mec_loss", "tcr_loss"]


def tcr_loss(z: torch.Tensor, eps: float = 0.5) -> torch.Tensor:
    """``L_TCR = −½ log det(I_d + d/(B ε²) ZᵀZ)`` of L2-normalised rows ``z`` (B, d) (Eq. 6).

    Relation to the uniformity losses (Matrix-SSL Thm 4.4), derived here because the printed
    theorem drops a factor 1/d on the TCR term. With ``Q = ZZᵀ/B + λI`` (trace ``1 + dλ`` for
    unit rows) and ``λ = ε²/d``:
    ``tr log Q = d log λ + log det(I + d/(Bε²) ZZᵀ) = d log λ − 2 L_TCR``, so

    * ``L_UMCE = MCE((1/d + λ)I, Q) = (1 + dλ)(−log λ + 1 + (2/d) L_TCR)``,
    * ``L_UMKL = MKL((1/d + λ)I ‖ Q) = (1 + dλ)(log((1 + dλ)/(dλ)) + (2/d) L_TCR)``,

    not ``2 L_TCR`` as printed. ``tests/geometry/test_spectral.py`` checks both.

    Distributed: ``ZᵀZ`` (d×d) is summed over ranks and B is the global batch size.
    """
    z = check_tensor(z, "z", 2, "(B, D)", min_sizes={0: 1, 1: 1})
    eps = check_positive(eps, "eps")
    with full_precision(z):
        zn = unit(to_float64(z))
        n = dist_utils.global_count(z.shape[0], z.device)
        d = z.shape[1]
        gram = dist_utils.all_reduce_sum(zn.T @ zn)  # (d, d)
        eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
        chol = torch.linalg.cholesky(eye + (d / (n * eps**2)) * gram)
        logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    return (-0.5 * logdet).to(result_dtype(z))


@register_loss("tcr")
class TCRLoss(nn.Module):
    """TCR of each of the two views, averaged: ``(L_TCR(z1) + L_TCR(z2)) / 2``.

    Example:
        >>> loss_fn = TCRLoss()
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(self, eps: float = 0.5) -> None:
        super().__init__()
        self.eps = check_positive(eps, "eps")

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        check_pair(z1, z2)
        return halves(tcr_loss(z1, self.eps), tcr_loss(z2, self.eps), return_terms)


def mec_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    eps: float = 0.5,
    mu: float | None = None,
    order: int | None = 4,
) -> torch.Tensor:
    """MEC: ``−μ log det(I_d + d/(B ε²) Z1ᵀZ2) = −μ tr log(I_d + d/(B ε²) Z1ᵀZ2)`` (Eq. 8).

    Args:
        z1, z2: (B, d) outputs of the two branches; L2-normalised here.
        eps: ε > 0 of the distortion ``λ = d/(B ε²)``.
        mu: scale μ > 0; ``None`` uses MEC's ``(B + d)/2`` with the global B.
        order: Taylor order of ``tr log`` around ``I`` (MEC optimises the truncated series;
            4 by default), or ``None`` for the exact ``log |det|`` by LU (``slogdet``).

    Distributed: ``Z1ᵀZ2`` (d×d) is summed over ranks.
    """
    z1, z2 = check_pair(z1, z2)
    eps = check_positive(eps, "eps")
    order = check_order(order)
    with full_precision(z1):
        a, b = unit(to_float64(z1)), unit(to_float64(z2))
        n = dist_utils.global_count(z1.shape[0], z1.device)
        d = z1.shape[1]
        scale = (n + d) / 2 if mu is None else check_positive(mu, "mu")
        cross = dist_utils.all_reduce_sum(a.T @ b)  # (d, d)
        m = torch.eye(d, dtype=cross.dtype, device=cross.device) + (d / (n * eps**2)) * cross
        if order is None:
            trace_log = torch.linalg.slogdet(m).logabsdet
        else:
            trace_log = torch.diagonal(taylor_log(m, order)).sum()
    return (-scale * trace_log).to(result_dtype(z1))


@register_loss("mec")
class MECLoss(nn.Module):
    """MEC (Eq. 8), symmetrised over the two orders. ``forward(z1, z2)``, both (B, d).

    Example:
        >>> loss_fn = MECLoss()
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(self, eps: float = 0.5, mu: float | None = None, order: int | None = 4) -> None:
        super().__init__()
        self.eps = check_positive(eps, "eps")
        self.mu = None if mu is None else check_positive(mu, "mu")
        self.order = check_order(order)

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return halves(
            mec_loss(z1, z2, self.eps, self.mu, self.order),
            mec_loss(z2, z1, self.eps, self.mu, self.order),
            return_terms,
        )
