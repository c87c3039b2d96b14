"""Matrix-SSL: matrix information-theoretic uniformity and alignment.

*Matrix Information Theory for Self-Supervised Learning* (Zhang, Tan, Yang, Yuan et al.):
Matrix-KL-Uniformity (Eq. 20), Matrix-KL-Alignment (Eq. 21), Matrix-SSL (Eq. 22), the
Taylor-expanded matrix logarithm (App. F.1).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_order, check_positive
from ..geometry._precision import full_precision, to_float64
from ..geometry.matrix_info import matrix_cross_entropy, matrix_kl
from ._common import Terms, check_pair, unit
from ._registry import register_loss

__all__ = ["MatrixSSLLoss", "global_covariances", "matrix_ssl_loss"]


def global_covariances(
    z1: torch.Tensor, z2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``C(Z1,Z2), C(Z1,Z1), C(Z2,Z2)`` with ``C(A,B) = Aᵀ H_B B / (B − 1)`` over the global batch.

    ``z1``, ``z2`` are (B, d); computed in float64 from sums (``Σ aᵢbᵢᵀ − B·ā b̄ᵀ``), which are
    summed over ranks when distributed (d×d numbers travel, whatever the batch size).
    """
    n = dist_utils.global_count(z1.shape[0], z1.device)
    a, b = to_float64(z1), to_float64(z2)
    sa = dist_utils.all_reduce_sum(a.sum(dim=0))  # (d,)
    sb = dist_utils.all_reduce_sum(b.sum(dim=0))

    def cov(x: torch.Tensor, y: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        return (dist_utils.all_reduce_sum(x.transpose(0, 1) @ y) - torch.outer(sx, sy) / n) / (
            n - 1
        )

    return cov(a, b, sa, sb), cov(a, a, sa, sa), cov(b, b, sb, sb)


def matrix_ssl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    order: int | None = 4,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """Matrix-SSL loss (Eq. 22) for the ordered pair ``(z1, z2)``.

    ``MCE(I_d/d, C(Z1,Z2) + λI) + γ · MKL(C(Z1,Z1) + λI ‖ C(Z2,Z2) + λI)``: the
    Matrix-KL-Uniformity of Eq. 20 on the λ-regularised cross-covariance, plus γ times the
    Matrix-KL-Alignment of Eq. 21 on the regularised auto-covariances.

    Args:
        z1, z2: (B, d) projector outputs of the two branches, B >= 2; L2-normalised here.
            ``C(Z1,Z2) = Z1ᵀ H_B Z2 / (B − 1)`` with the centring matrix ``H_B``.
        gamma: alignment weight γ >= 0 (App. F.1: 1 is best).
        lam: ridge λ >= 0 added to every covariance to keep it non-singular.
        order: Taylor order of the matrix log around ``I`` (App. F.1: 4), or ``None`` for the
            exact log of the symmetrised matrices by eigendecomposition.
        return_terms: also return ``uniformity`` and ``alignment``.

    The function does not symmetrise over the two orders; the training method may average
    ``matrix_ssl_loss(z1, z2)`` and ``matrix_ssl_loss(z2, z1)``. Computed in float64 with
    autocast off; returned in ``z1``'s dtype. Distributed: covariances are sums over ranks.
    """
    z1, z2 = check_pair(z1, z2, min_batch=2)
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    lam = check_positive(lam, "lam", allow_zero=True)
    order = check_order(order)
    d = z1.shape[1]
    with full_precision(z1):
        c12, c11, c22 = global_covariances(unit(to_float64(z1)), unit(to_float64(z2)))
        ridge = lam * torch.eye(d, dtype=c12.dtype, device=c12.device)
        target = torch.eye(d, dtype=c12.dtype, device=c12.device) / d
        uniformity = matrix_cross_entropy(target, c12 + ridge, order)
        alignment = matrix_kl(c11 + ridge, c22 + ridge, order)
        loss = uniformity + gamma * alignment
    out = loss.to(z1.dtype)
    if return_terms:
        return out, {"uniformity": uniformity.detach(), "alignment": alignment.detach()}
    return out


@register_loss("matrix_ssl")
class MatrixSSLLoss(nn.Module):
    """Matrix-SSL (Eq. 22). See :func:`matrix_ssl_loss`. ``forward(z1, z2)``, both (B, d)."""

    inputs = "pair"

    def __init__(self, gamma: float = 1.0, lam: float = 1.0, order: int | None = 4) -> None:
        super().__init__()
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.lam = check_positive(lam, "lam", allow_zero=True)
        self.order = check_order(order)

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return matrix_ssl_loss(z1, z2, self.gamma, self.lam, self.order, return_terms=return_terms)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, lam={self.lam}, order={self.order}"
