"""CLAMP: contrastive learning as neural manifold packing.

Zhang, Heeger & Martiniani, *Contrastive Self-Supervised Learning As Neural Manifold Packing*:
Sec. 3.1, Eq. 1, and Algorithm 1 (App. A), which this module follows line by line.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive
from ..geometry._precision import full_precision
from ._common import Terms, at_least_float32, check_views, unit
from ._registry import register_loss

__all__ = ["NO_OVERLAP_LOSS", "CLAMPLoss", "clamp_loss"]

_FLOOR = float(torch.finfo(torch.float32).tiny)
#: The loss returned when no two sub-manifolds overlap: ``log`` of the smallest normal float32.
NO_OVERLAP_LOSS = math.log(_FLOOR)

_COVARIANCE = {"paper": 0, "unbiased": 1}


def clamp_loss(
    z: torch.Tensor,
    r_s: float = 7.0,
    covariance: str = "paper",
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """CLAMP packing loss (Algorithm 1 of App. A; Eq. 1).

    With ``z`` (b, m, D) the projector outputs of m views of b images:

    1. global centring ``c = (1/(mb)) Σ_i Σ_k z_i^k`` and unit normalisation
       ``z̃_i^k = (z_i^k − c)/‖z_i^k − c‖``;
    2. centroids ``q_i = (1/m) Σ_k z̃_i^k`` and covariances
       ``Λ_i = (1/m) Σ_k (z̃_i^k − q_i)ᵀ(z̃_i^k − q_i)``;
    3. radii ``r_i = r_s √(Tr Λ_i / m)``;
    4. ``L = log Σ_{i≠j} (1 − ‖q_i − q_j‖/(r_i + r_j))²`` over the ordered pairs that overlap,
       ``‖q_i − q_j‖ < r_i + r_j``.

    When no pair overlaps the sum is 0 and its log is −∞ (the "absorbing state" of the packing
    picture). We then return the finite value :data:`NO_OVERLAP_LOSS` = log(1.18e−38) ≈ −87.34
    with a zero gradient, and ``n_overlapping_pairs = 0`` among the terms: the step leaves the
    embeddings alone, as the paper's dynamics would. The same floor applies to any positive sum
    below it, so the loss is continuous.

    Args:
        z: (b, m, D) raw projector outputs, m >= 2 views.
        r_s: the size scale r_s > 0 (the paper uses 7 on CIFAR-10, App. D, Table 5).
        covariance: ``"paper"`` (1/m, Algorithm 1, the default) or ``"unbiased"`` (1/(m − 1),
            as in the published code).
        return_terms: also return ``overlap`` (the sum), ``n_overlapping_pairs``,
            ``mean_radius`` and ``mean_centroid_distance`` for logging.

    Distributed: ``c`` is a global mean (a D-vector summed over ranks); the centroids and radii
    are gathered so each rank sums its own rows of the global pair matrix, and the row sums are
    added over ranks.
    """
    z = check_views(z, "z", min_views=2)
    r_s = check_positive(r_s, "r_s")
    if covariance not in _COVARIANCE:
        raise ValueError(f"covariance must be one of {sorted(_COVARIANCE)}, got {covariance!r}")
    with full_precision(z):
        return _clamp(at_least_float32(z), r_s, _COVARIANCE[covariance], return_terms)


def _clamp(
    z: torch.Tensor, r_s: float, ddof: int, return_terms: bool
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    b, m, _ = z.shape
    n_views = dist_utils.global_count(b * m, z.device)
    c = dist_utils.all_reduce_sum(z.sum(dim=(0, 1))) / n_views  # (D,) global centre
    zt = unit(z - c)  # (b, m, D)
    q = zt.mean(dim=1)  # (b, D) sub-manifold centres
    trace = ((zt - q.unsqueeze(1)) ** 2).sum(dim=(1, 2)) / (m - ddof)  # Tr Λ_i
    r = r_s * torch.sqrt((trace / m).clamp_min(1e-30))  # (b,) radii

    q_all, start = dist_utils.gather_with_offset(q)  # (b_global, D)
    r_all = dist_utils.gather(r)  # (b_global,)
    # ‖q_i − q_j‖ from the Gram matrix: no (b, b_global, D) tensor of differences
    sq = (q * q).sum(1, keepdim=True) + (q_all * q_all).sum(1) - 2 * q @ q_all.T
    dist_ij = torch.sqrt(sq.clamp_min(1e-24))  # (b, b_global), finite gradient at 0
    reach = r.unsqueeze(1) + r_all.unsqueeze(0)  # (b, b_global)
    not_self = torch.ones_like(dist_ij, dtype=torch.bool)
    rows = torch.arange(b, device=z.device)
    not_self[rows, rows + start] = False
    overlapping = (dist_ij < reach) & not_self
    energy = torch.where(overlapping, (1 - dist_ij / reach) ** 2, torch.zeros_like(dist_ij))
    overlap = dist_utils.all_reduce_sum(energy.sum())
    loss = torch.log(overlap.clamp_min(_FLOOR))
    if not return_terms:
        return loss
    with torch.no_grad():
        n_pairs = dist_utils.all_reduce_sum(overlapping.sum().to(z.dtype))
        pair_dist = dist_utils.all_reduce_sum(torch.where(not_self, dist_ij, 0.0).sum())
        n_global = q_all.shape[0]
        terms: Terms = {
            "overlap": overlap.detach(),
            "n_overlapping_pairs": n_pairs,
            "mean_radius": dist_utils.all_reduce_sum(r.detach().sum()) / n_global,
            "mean_centroid_distance": pair_dist / max(n_global * (n_global - 1), 1),
        }
    return loss, terms


@register_loss("clamp")
class CLAMPLoss(nn.Module):
    """CLAMP packing loss (Zhang et al., Algorithm 1). See :func:`clamp_loss`.

    ``forward(z)`` with ``z`` (b, m, D).
    """

    inputs = "views"

    def __init__(self, r_s: float = 7.0, covariance: str = "paper") -> None:
        super().__init__()
        self.r_s = check_positive(r_s, "r_s")
        if covariance not in _COVARIANCE:
            raise ValueError(f"covariance must be one of {sorted(_COVARIANCE)}, got {covariance!r}")
        self.covariance = covariance

    def forward(
        self, z: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return clamp_loss(z, self.r_s, self.covariance, return_terms=return_terms)

    def extra_repr(self) -> str:
        return f"r_s={self.r_s}, covariance={self.covariance!r}"
