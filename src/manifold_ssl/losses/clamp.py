"""CLAMP: contrastive learning as neural manifold packing.

Zhang, Heeger & Martiniani, *Contrastive Self-Supervised Learning As Neural Manifold Packing*:
Sec. 3.1, Eq. 1, and Algorithm 1 (App. A); by default in the form of the authors' published
training loss (see :func:`clamp_loss` for both forms and where they differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_choice, check_positive
from ..geometry._precision import full_precision, to_float64
from ._common import Terms, check_views, result_dtype, unit
from ._registry import register_loss

__all__ = ["NO_OVERLAP_LOSS", "CLAMPLoss", "clamp_loss"]

_FLOOR = float(torch.finfo(torch.float32).tiny)
#: The paper form's loss when no two sub-manifolds overlap: ``log`` of the smallest normal float32.
NO_OVERLAP_LOSS = math.log(_FLOOR)

FORMS = ("official", "paper")
_COVARIANCE = {"paper": 0, "unbiased": 1}


@dataclass(frozen=True)
class _Form:
    """The constants in which the two forms differ (see :func:`clamp_loss`)."""

    ddof: int  # Tr Λ_i divides by m − ddof
    rank_by_dim: bool  # r_i divides Tr Λ_i by min(D, m) (True) or by m
    tiny: float  # added under the square roots of radii and distances
    pair_eps: float  # added to r_i + r_j
    max_reach: float  # cap on r_i + r_j (inf: none)
    min_distance: float  # pairs closer than this are skipped
    scale: float  # factor of the pair sum
    log_eps: float  # log(sum + log_eps); 0: the floored log of the paper form


_OFFICIAL = _Form(1, True, 1e-12, 1e-6, 1.5, 1e-3, 0.5, 1e-6)


def clamp_loss(
    z: torch.Tensor,
    r_s: float = 7.0,
    covariance: str | None = None,
    *,
    form: str = "official",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """CLAMP packing loss (Eq. 1, Algorithm 1 of App. A), in the authors' or the paper's form.

    With ``z`` (b, m, D) the projector outputs of m views of b images, both forms compute:

    1. global centring ``c = (1/(mb)) Σ_i Σ_k z_i^k`` and unit normalisation
       ``z̃_i^k = (z_i^k − c)/‖z_i^k − c‖``;
    2. centroids ``q_i = (1/m) Σ_k z̃_i^k`` and ``Tr Λ_i = Σ_k ‖z̃_i^k − q_i‖² / n_Λ``;
    3. radii ``r_i = r_s √(Tr Λ_i / n_r)``;
    4. ``L = log Σ_{i≠j} (1 − ‖q_i − q_j‖/(r_i + r_j))²`` over the ordered pairs that overlap.

    ``form="official"`` (default: what trained the paper's numbers) is the published
    ``LogRepulsiveEllipsoidPackingLossUnitNorm`` of guanming-zhang/clamp (``model/loss_module.py``
    at 1a7eb9a) with its CIFAR settings (``lw0 = 0``, ``lw1 = 1``, ``pot_pow = 2``): n_Λ = m − 1,
    n_r = min(D, m); ``r_i + r_j + 10⁻⁶`` capped at 1.5 (binding at initialisation for r_s = 7,
    where radii are ≈ 1); pairs closer than 10⁻³ skipped; ``L = log(½ Σ … + 10⁻⁶)``, and
    ``10⁻¹²`` under the square roots of radii and distances. The cap bounds every overlap
    term, and a pair of coincident centroids contributes nothing instead of its maximum.

    ``form="paper"`` is Algorithm 1 literally: n_Λ = m (``covariance="paper"``, the default)
    or m − 1 (``covariance="unbiased"``), n_r = m, no cap, no margin, and the plain ``log``.
    When no pair overlaps the sum is 0 and its log −∞ (the "absorbing state" of the packing
    picture); this form then returns :data:`NO_OVERLAP_LOSS` = log(1.18e−38) ≈ −87.34 with a
    zero gradient (the same floor applies to any positive sum below it, so the loss is
    continuous). The official form's ``+10⁻⁶`` gives log(10⁻⁶) ≈ −13.8 there, also with a
    zero gradient.

    Optima: the paper form's infimum is reached exactly when no two sub-manifolds overlap
    (``‖q_i − q_j‖ >= r_i + r_j`` for all pairs). The official form reaches its minimum
    log(10⁻⁶) when every pair is either that far apart (with the reach capped at 1.5) *or*
    closer than 10⁻³: fully coincident centroids (a collapse) also minimise it. From a spread
    start its gradient only pushes overlapping pairs apart, so training does not go there, but
    the margin is part of the published objective.

    Args:
        z: (b, m, D) raw projector outputs, m >= 2 views.
        r_s: the size scale r_s > 0 (7 on CIFAR-10, App. D, Table 5).
        covariance: paper form only: ``"paper"`` (1/m, default) or ``"unbiased"`` (1/(m − 1)).
        form: ``"official"`` (default) or ``"paper"``.
        return_terms: also return ``overlap`` (the pair sum inside the log),
            ``n_overlapping_pairs``, ``mean_radius`` and ``mean_centroid_distance``.

    Precision: computed in float64 with autocast off, returned in float32 (float64 for float64
    input). Sub-manifolds packed closer than their radii sit at centroid distances of 10⁻³ and
    below, where float32 loses them twice: the unit normalisation rounds each centroid by
    ~10⁻⁷, and the Gram form ``‖q_i‖² + ‖q_j‖² − 2 q_iᵀq_j`` of the squared distances cancels
    to an error of ~10⁻³ in the distance at 10⁻² (measured: clusters 10⁻³ apart, b = 128,
    m = 16, D = 64 gave distance errors up to 0.26 and moved 12–14 pairs across the 10⁻³
    margin in float32). In float64 the same Gram form is exact to ~10⁻¹³ there, and the
    (b, b) pair matrix and the (b, m, D) views cost little next to the backbone.

    Distributed: ``c`` is a global mean (a D-vector summed over ranks); the centroids and radii
    are gathered so each rank sums its own rows of the global pair matrix, and the row sums are
    added over ranks, so gradients equal one process's. (The published code gathers without
    gradient and lets DDP average, which scales its multi-GPU gradient by 1/world_size.)
    """
    z = check_views(z, "z", min_views=2)
    r_s = check_positive(r_s, "r_s")
    spec = _form(form, covariance)
    with full_precision(z):
        out = _clamp(to_float64(z), r_s, spec, return_terms)
    loss, terms = out if isinstance(out, tuple) else (out, None)
    loss = loss.to(result_dtype(z))
    return (loss, terms) if terms is not None else loss


def _form(form: str, covariance: str | None) -> _Form:
    check_choice(form, "form", FORMS)
    if form == "official":
        if covariance is not None:
            raise ValueError(
                "covariance selects the paper form's Tr Λ normalisation; form='official' "
                f"always divides by m − 1 (got covariance={covariance!r})"
            )
        return _OFFICIAL
    ddof = _COVARIANCE[check_choice(covariance or "paper", "covariance", tuple(_COVARIANCE))]
    return _Form(ddof, False, 0.0, 0.0, math.inf, 0.0, 1.0, 0.0)


def _clamp(
    z: torch.Tensor, r_s: float, spec: _Form, return_terms: bool
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    b, m, dim = z.shape
    n_views = dist_utils.global_count(b * m, z.device)
    c = dist_utils.all_reduce_sum(z.sum(dim=(0, 1))) / n_views  # (D,) global centre
    zt = unit(z - c)  # (b, m, D)
    q = zt.mean(dim=1)  # (b, D) sub-manifold centres
    trace = ((zt - q.unsqueeze(1)) ** 2).sum(dim=(1, 2)) / (m - spec.ddof)  # Tr Λ_i
    n_r = min(dim, m) if spec.rank_by_dim else m
    r = r_s * torch.sqrt((trace / n_r + spec.tiny).clamp_min(1e-30))  # (b,) radii

    q_all, start = dist_utils.gather_with_offset(q)  # (b_global, D)
    r_all = dist_utils.gather(r)  # (b_global,)
    # ‖q_i − q_j‖ from the Gram matrix: no (b, b_global, D) tensor of differences
    sq = (q * q).sum(1, keepdim=True) + (q_all * q_all).sum(1) - 2 * q @ q_all.T
    dist_ij = torch.sqrt(sq.clamp_min(1e-24) + spec.tiny)  # (b, b_global), finite gradient at 0
    reach = (r.unsqueeze(1) + r_all.unsqueeze(0) + spec.pair_eps).clamp_max(spec.max_reach)
    not_self = torch.ones_like(dist_ij, dtype=torch.bool)
    rows = torch.arange(b, device=z.device)
    not_self[rows, rows + start] = False
    overlapping = (dist_ij < reach) & (dist_ij > spec.min_distance) & not_self
    energy = torch.where(overlapping, (1 - dist_ij / reach) ** 2, torch.zeros_like(dist_ij))
    overlap = spec.scale * dist_utils.all_reduce_sum(energy.sum())
    if spec.log_eps:
        loss = torch.log(overlap + spec.log_eps)
    else:
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

    Example:
        >>> loss_fn = CLAMPLoss(r_s=7.0)
        >>> z = torch.randn(8, 4, 16, requires_grad=True)  # (b, m, D)
        >>> loss = loss_fn(z)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "views"

    def __init__(
        self, r_s: float = 7.0, covariance: str | None = None, form: str = "official"
    ) -> None:
        super().__init__()
        self.r_s = check_positive(r_s, "r_s")
        _form(form, covariance)
        self.covariance, self.form = covariance, form

    def forward(
        self, z: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return clamp_loss(z, self.r_s, self.covariance, form=self.form, return_terms=return_terms)

    def extra_repr(self) -> str:
        cov = f", covariance={self.covariance!r}" if self.covariance else ""
        return f"r_s={self.r_s}, form={self.form!r}{cov}"
