"""Singular-value quantities: nuclear norm, its bound, percent error, effective rank, PR.

The nuclear norm is the centre of MMCR, so it gets a custom autograd function:

* forward: the eigenvalues of the Gram matrix of the *smaller* side (``X Xᵀ`` or ``Xᵀ X``,
  size ``min(m, n)``), ``‖X‖* = Σ √λ``, formed and decomposed in float64 whatever the input
  precision (see :mod:`manifold_ssl.geometry._precision` for why a float32 Gram loses the
  weakest directions' gradient). Eigenvalues below ``λ_max·n·ε`` count as zero, with ``ε``
  float64's epsilon, or that of the precision a distributed Gram was summed in. This is
  cheaper than an SVD and far cheaper than a full SVD with singular vectors.
* backward: ``∂‖X‖*/∂X = U Vᵀ`` restricted to the singular values above a tolerance, written as
  ``X V Σ⁻¹ Vᵀ`` (or ``U Σ⁻¹ Uᵀ X``). It has no ``1/(σᵢ² − σⱼ²)`` terms, so it is exact at
  repeated singular values, and at zero singular values it returns the minimum-norm element of
  the subdifferential (the ``W = 0`` member of ``U Vᵀ + W``). The autograd gradient of a plain
  ``eigh`` is infinite or NaN in both cases.

Why by hand: ``torch.linalg.svdvals`` computes full singular vectors whenever a gradient is
needed (it is an SVD in disguise), and ``torch.linalg.eigh``'s backward divides by eigenvalue
gaps. Benchmarked in ``benchmarks/losses.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_tensor
from ._precision import full_precision, to_float64

__all__ = [
    "effective_rank",
    "nuclear_norm",
    "nuclear_norm_bound",
    "nuclear_norm_from_gram",
    "participation_ratio",
    "percent_error",
    "singular_values",
]


def _rank_tolerance(eigvals: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    """Eigenvalues of a Gram matrix below this are zero (numerical rank, as ``matrix_rank``)."""
    top = eigvals.amax(dim=-1, keepdim=True).clamp_min(0)
    return top * n * eps


def _sqrt_spectrum(gram: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors V and ``√λ`` of a PSD Gram matrix, eigenvalues below tolerance set to 0."""
    eigvals, eigvecs = torch.linalg.eigh(gram)
    keep = eigvals > _rank_tolerance(eigvals, gram.shape[-1], eps)
    return eigvecs, torch.where(keep, eigvals.clamp_min(0).sqrt(), torch.zeros_like(eigvals))


def _inverse_on_range(eigvecs: torch.Tensor, sqrt_vals: torch.Tensor) -> torch.Tensor:
    """``V diag(1/√λ) Vᵀ`` (..., n, n) on the numerical range (zero for dropped eigenvalues)."""
    keep = sqrt_vals > 0
    inv = torch.where(keep, 1.0 / sqrt_vals.where(keep, torch.ones_like(sqrt_vals)), 0.0)
    return (eigvecs * inv.unsqueeze(-2)) @ eigvecs.transpose(-1, -2)


class _SqrtTrace(torch.autograd.Function):
    """``tr(G^{1/2}) = Σ √λ(G)`` for symmetric PSD ``G`` (..., n, n), with a safe backward.

    ``∂ tr(G^{1/2}) / ∂G = ½ V Λ₊^{-1/2} Vᵀ`` on the numerical range of ``G`` (zero elsewhere).
    """

    @staticmethod
    def forward(ctx: Any, gram: torch.Tensor, eps: float) -> torch.Tensor:
        eigvecs, sqrt_vals = _sqrt_spectrum(gram, eps)
        ctx.save_for_backward(eigvecs, sqrt_vals)
        return sqrt_vals.sum(dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        eigvecs, sqrt_vals = ctx.saved_tensors
        return 0.5 * _inverse_on_range(eigvecs, sqrt_vals) * grad[..., None, None], None


class _NuclearNorm(torch.autograd.Function):
    """``‖X‖*`` of ``X`` (..., m, n) from the Gram of its smaller side, backward ``U Vᵀ``.

    Fused rather than ``_SqrtTrace`` of ``XᵀX``: the backward is one product ``X V Σ⁻¹ Vᵀ``
    (or ``U Σ⁻¹ Uᵀ X``) instead of autograd's two through the Gram's matmul.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: float) -> torch.Tensor:
        wide = x.shape[-2] <= x.shape[-1]
        gram = x @ x.transpose(-1, -2) if wide else x.transpose(-1, -2) @ x
        eigvecs, sqrt_vals = _sqrt_spectrum(gram, eps)
        ctx.save_for_backward(x, eigvecs, sqrt_vals)
        ctx.wide = wide
        return sqrt_vals.sum(dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, eigvecs, sqrt_vals = ctx.saved_tensors
        inverse = _inverse_on_range(eigvecs, sqrt_vals) * grad[..., None, None]
        return (inverse @ x if ctx.wide else x @ inverse), None


def nuclear_norm_from_gram(gram: torch.Tensor, rank_eps: float | None = None) -> torch.Tensor:
    """``Σ √λ(G)`` of a symmetric PSD Gram matrix ``G = XᵀX`` (..., n, n), i.e. ``‖X‖*``.

    Eigenvalues below ``λ_max · n · rank_eps`` count as zero (value and gradient); ``rank_eps``
    is the machine epsilon of the precision ``G`` was accumulated in (default: its dtype's).
    Used by the distributed MMCR path, where ``G`` is summed over ranks. The eigensystem is
    computed in float64; the result is float64.
    """
    eps = float(torch.finfo(gram.dtype).eps) if rank_eps is None else rank_eps
    with full_precision(gram):
        g = to_float64(gram)
        g = 0.5 * (g + g.transpose(-1, -2))
        out: torch.Tensor = _SqrtTrace.apply(g, eps)
    return out


def gram_of_smaller_side(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` if m <= n else ``Xᵀ X`` for ``X`` (..., m, n), in ``x``'s dtype."""
    if x.shape[-2] <= x.shape[-1]:
        return x @ x.transpose(-1, -2)
    return x.transpose(-1, -2) @ x


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    """Nuclear norm ``‖X‖* = Σᵢ σᵢ(X)`` of ``x`` (..., m, n), batched over leading dims.

    Returns a tensor of shape ``x.shape[:-2]``, float64 for float64 ``x`` and float32 otherwise
    (also for bf16/fp16, whose rounding would undo the accuracy); the Gram matrix and its
    spectrum are computed in float64 even for float32/bf16 input and under autocast.
    Differentiable with the (sub)gradient ``U Vᵀ``, finite at repeated and zero singular values
    (module docstring).
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., m, n), got {tuple(x.shape)}")
    with full_precision(x):
        out: torch.Tensor = _NuclearNorm.apply(to_float64(x), float(torch.finfo(torch.float64).eps))
    return out.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values of ``x`` (..., m, n) in descending order, float64, no gradient."""
    with torch.no_grad(), full_precision(x):
        return torch.linalg.svdvals(to_float64(x.detach()))


def nuclear_norm_bound(P: int, D: int) -> float:
    """Upper bound ``√(P·min(P, D))`` on ‖C‖* for P centroids of norm ≤ 1 in D dims.

    Schaeffer et al. (2024), Prop. 3.3: ``0 ≤ ‖C‖* ≤ √(P·min(P, D))``.
    """
    for name, value in (("P", P), ("D", D)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return math.sqrt(P * min(P, D))


def percent_error(c: torch.Tensor) -> torch.Tensor:
    """MMCR pretraining percent error of a centroid matrix ``c`` (P, D) (Schaeffer Eq. 4).

    ``(√(P·min(P, D)) − ‖C‖*) / √(P·min(P, D))``, in [0, 1] when every row has norm ≤ 1 (the
    premise of Prop. 3.3; MMCR centroids are means of unit vectors). Returned in float64 as a
    fraction; multiply by 100 for percent. No gradient.
    """
    c = check_tensor(c, "c", 2, "(P, D)")
    bound = nuclear_norm_bound(c.shape[0], c.shape[1])
    with torch.no_grad():
        nuc = nuclear_norm(to_float64(c.detach()))
    return (bound - nuc) / bound


def _entropy_exp(weights: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` with ``p = w / Σw`` over the last dim, ``0 log 0 = 0``."""
    total = weights.sum(dim=-1, keepdim=True)
    p = weights / total
    plogp = torch.where(p > 0, p * torch.log(p.where(p > 0, torch.ones_like(p))), 0.0)
    return torch.exp(-plogp.sum(dim=-1))


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007; Matrix-SSL Def. 3.5) of ``x`` (..., m, n).

    ``erank(A) = exp(H(p))`` with ``pᵢ = σᵢ / Σₖ σₖ`` the normalised singular values. Applied to
    an embedding matrix (N, D) this is RankMe; applied to a covariance it is the erank of
    Prop. 3.6. Float64, no gradient. Raises for an all-zero matrix, where it is undefined.
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., m, n), got {tuple(x.shape)}")
    sv = singular_values(x)
    if bool((sv.sum(dim=-1) <= 0).any()):
        raise ValueError("effective_rank is undefined for an all-zero matrix")
    return _entropy_exp(sv)


def participation_ratio(features: torch.Tensor, *, center: bool = True) -> torch.Tensor:
    """Participation ratio ``(Σλ)² / Σλ²`` of the covariance of ``features`` (N, D).

    λ are the eigenvalues of the (centred, unless ``center=False``) feature covariance; PR is
    between 1 (one direction) and D (isotropic). Yerxa et al. (2023), App. L. Float64.
    """
    features = check_tensor(features, "features", 2, "(N, D)", min_sizes={0: 2})
    with torch.no_grad():
        x = to_float64(features.detach())
        if center:
            x = x - x.mean(dim=0, keepdim=True)
        lam = singular_values(x) ** 2 / (x.shape[0] - 1)
        return lam.sum() ** 2 / (lam**2).sum()
