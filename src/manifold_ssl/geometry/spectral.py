"""Singular-value and eigenvalue quantities: nuclear norm, its bound, percent error, effective
rank (RankMe when applied to embeddings), participation ratio, and the spectra of
representations (eigenspectrum and its power-law decay, class effective ranks).

Yerxa et al. App. L (participation ratio, spectral decay coefficient α); CLAMP App. H (power law
of the eigenspectrum); Garrido et al. 2023 (RankMe = effective rank of the embeddings);
Matrix-SSL App. E (intra- and inter-class effective rank, Defs E.1–E.2).

The nuclear norm is the centre of MMCR, so it gets a custom autograd function:

* forward, level 1: the eigensystem ``(λ, V)`` of the Gram matrix of the *smaller* side
  (``AᵀA`` with ``A = X`` or ``Xᵀ``, size ``k = min(m, n)``), formed and decomposed in float64
  whatever the input precision (see :mod:`manifold_ssl.geometry._precision` for why a float32
  Gram loses the weakest directions' gradient). An eigensolver's error is ``~k·ε·λ_max`` for
  every eigenvalue, so a Gram resolves singular values only down to ``√(k·ε)·σ_max``
  (1.7e-7·σ_max at k = 128), where an SVD of ``X`` resolves ``~k·ε·σ_max``. Level 1 keeps the
  eigenpairs with ``λ > 10⁻⁸·λ_max`` (``σ > 10⁻⁴·σ_max``), whose gradient directions it
  resolves to ~10⁻⁷ (a random square 512×512 matrix, singular values down to ~10⁻⁶·σ_max,
  stays in level 1: its gradient is within 9e-8 of an SVD's).
* forward, level 2: the rest of the spectrum from the Gram of ``Y = A V_S``, ``V_S`` level 1's
  remaining eigenvectors. ``Y`` is formed from ``A``, so its Gram's errors are relative to the
  small singular values themselves (``ε·σ_max·σᵢ``), not to ``σ_max²``; its eigensystem
  ``(μ, W)`` resolves them down to ``~10⁻⁴·√(k·ε)·σ_max`` (1.7e-11·σ_max at k = 128), and
  eigenvalues below that, or below the SVD's own floor ``(max(m, n)·ε·σ_max)²``, count as zero.
  This matters near collapse: rows within 10⁻³…10⁻⁴ of one direction at B = D have singular
  values down to ~10⁻⁹·σ_max, and a one-level Gram lost 4–26% of their gradient (now within
  1e-7). Both levels have fixed shapes; on an accelerator nothing is read back to the host,
  and on the CPU level 2 is skipped when level 1 kept every eigenvalue (reading a CPU tensor
  costs nothing), so a well-conditioned matrix pays for one level.
* backward: ``∂‖X‖*/∂X = U Vᵀ`` on the kept directions, written as ``A M`` with
  ``M = V_L Λ_L^{-1/2} V_Lᵀ + (V_S W) μ^{-1/2} (V_S W)ᵀ`` (transposed back for wide ``X``). It has
  no ``1/(σᵢ² − σⱼ²)`` terms, so it is exact at repeated singular values, and at zero singular
  values it returns the minimum-norm element of the subdifferential (the ``W = 0`` member of
  ``U Vᵀ + W``). The autograd gradient of a plain ``eigh`` is infinite or NaN in both cases.

Why by hand: ``torch.linalg.svdvals`` computes full singular vectors whenever a gradient is
needed (it is an SVD in disguise), an SVD with vectors costs 2–5× the two Gram levels here
(``benchmarks/losses.py``), and ``torch.linalg.eigh``'s backward divides by eigenvalue gaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import check_tensor
from ..dispatch import cpu_only
from ._precision import full_precision, to_float64

__all__ = [
    "PowerLawFit",
    "class_effective_ranks",
    "covariance_spectrum",
    "effective_rank",
    "nuclear_norm",
    "nuclear_norm_bound",
    "nuclear_norm_of_rows",
    "participation_ratio",
    "percent_error",
    "powerlaw_decay",
    "rankme",
    "singular_values",
]


#: Level 1 keeps the Gram's eigenpairs above this fraction of the largest eigenvalue.
_LEVEL_SPLIT = 1e-8


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _two_level_spectrum(
    a: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor], rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ σᵢ(A), M)`` for float64 ``A`` (..., r, k) whose Gram ``reduce(AᵀA)`` is k×k, with
    ``M = (AᵀA)^{-1/2}`` on the kept directions (zero elsewhere); ``rows`` is A's total row
    count (over ranks when ``reduce`` sums over them). See the module docstring."""
    eps = float(torch.finfo(torch.float64).eps)
    k = a.shape[-1]
    lam, v = torch.linalg.eigh(reduce(a.transpose(-1, -2) @ a))  # level 1
    top = lam.amax(dim=-1, keepdim=True).clamp_min(0)
    large = lam > top * _LEVEL_SPLIT
    s1 = torch.where(large, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
    inv1 = torch.where(large, 1.0 / s1.where(large, torch.ones_like(s1)), 0.0)
    m = (v * inv1.unsqueeze(-2)) @ v.transpose(-1, -2)
    # level 2 on the eigenvectors level 1 left (eigh sorts ascending: the first columns). On
    # an accelerator all k columns, large ones zeroed: fixed shapes, nothing read back. On the
    # CPU, where reading a tensor costs nothing, only as many columns as some matrix of the
    # batch left (none for a well-conditioned matrix). A compiled graph (training.whole_step)
    # takes the fixed shapes on any device: a graph reads nothing back.
    if a.device.type != "cpu" or torch.compiler.is_compiling():
        n_small = k
    else:
        with cpu_only():
            n_small = int((~large).sum(dim=-1).max())
    if n_small == 0:
        return s1.sum(dim=-1), m
    v_small = v[..., :n_small] * (~large[..., :n_small]).unsqueeze(-2).to(v.dtype)
    y = a @ v_small
    mu, w = torch.linalg.eigh(reduce(y.transpose(-1, -2) @ y))  # level 2, in its own scale
    floor = torch.maximum(mu.amax(dim=-1, keepdim=True) * k * eps, top * (max(rows, k) * eps) ** 2)
    keep = mu > floor
    u2 = v_small @ w
    s2 = torch.where(keep, mu.clamp_min(0).sqrt(), torch.zeros_like(mu))
    inv2 = torch.where(keep, 1.0 / s2.where(keep, torch.ones_like(s2)), 0.0)
    m = m + (u2 * inv2.unsqueeze(-2)) @ u2.transpose(-1, -2)
    return s1.sum(dim=-1) + s2.sum(dim=-1), m


class _NuclearNorm(torch.autograd.Function):
    """``‖X‖*`` of float64 ``X`` (..., m, n) from the two-level spectrum of its smaller side's
    Gram, backward ``U Vᵀ = A M``.

    ``reduce`` (default: none) sums a k×k matrix over ranks when X's rows are split over them
    (then X is tall-oriented, ``A = X``, and ``rows`` is the global row count); the backward
    then sums the incoming gradient over ranks, as :func:`~manifold_ssl.distributed.all_reduce_sum`
    does, so that every rank returns the global loss and DDP's averaging gives one process's
    gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None,
        rows: int | None,
    ) -> torch.Tensor:
        wide = reduce is None and x.shape[-2] < x.shape[-1]
        a = x.transpose(-1, -2) if wide else x
        value, m = _two_level_spectrum(a, reduce or _identity, rows or a.shape[-2])
        ctx.save_for_backward(a, m)
        ctx.wide, ctx.reduce = wide, reduce
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, m = ctx.saved_tensors
        if ctx.reduce is not None:
            grad = ctx.reduce(grad)
        scale = grad[..., None, None]
        if ctx.wide:  # X = Aᵀ: ∂/∂X = (A M)ᵀ = M X, formed contiguous
            return (m * scale) @ a.transpose(-1, -2), None, None
        return (a @ m) * scale, None, None


def nuclear_norm_of_rows(
    x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor], rows: int
) -> torch.Tensor:
    """``‖X‖*`` of the matrix whose row blocks ``x`` (r, n) are held by different processes.

    ``reduce`` sums an (n, n) tensor over them (not differentiated), ``rows`` is the total row
    count; n×n numbers travel, whatever the number of rows. Float64, with the two-level spectrum
    and the ``U Vᵀ`` backward of :func:`nuclear_norm` (module docstring); the backward sums the
    incoming gradient with ``reduce``.
    """
    with full_precision(x):
        out: torch.Tensor = _NuclearNorm.apply(to_float64(x), reduce, rows)
    return out


def nuclear_norm(x: torch.Tensor) -> torch.Tensor:
    """Nuclear norm ``‖X‖* = Σᵢ σᵢ(X)`` of ``x`` (..., m, n), batched over leading dims.

    Returns a tensor of shape ``x.shape[:-2]``, float64 for float64 ``x`` and float32 otherwise
    (also for bf16/fp16, whose rounding would undo the accuracy); the Gram matrix and its
    spectrum are computed in float64 even for float32/bf16 input and under autocast, in two
    levels that resolve singular values down to ~10⁻¹¹·σ_max. Differentiable with the
    (sub)gradient ``U Vᵀ``, finite at repeated and zero singular values (module docstring).
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., m, n), got {tuple(x.shape)}")
    with full_precision(x):
        out: torch.Tensor = _NuclearNorm.apply(to_float64(x), None, None)
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


# --------------------------------------------------------------------------- spectra of representations
def _features(x: object, name: str = "features") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().cpu().to(torch.float64)
    return check_tensor(t, name, 2, "(N, F)", min_sizes={0: 2, 1: 1})


def covariance_spectrum(features: object, center: bool = True) -> np.ndarray:
    """Eigenvalues of the feature covariance (N−1 normalisation), descending, float64."""
    x = _features(features)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    sv = torch.linalg.svdvals(x)
    return (sv**2 / (x.shape[0] - 1)).numpy()


@dataclass
class PowerLawFit:
    alpha: float  # decay exponent: λ_n ∝ n^(−α)
    intercept: float  # log λ at n = 1 of the fitted line
    r_squared: float
    fit_range: tuple[int, int]  # 1-based ranks [lo, hi] used


def powerlaw_decay(eigenvalues: object, fit_range: tuple[int, int] | None = None) -> PowerLawFit:
    """Least-squares fit of ``log λ_n = −α log n + b`` over ranks ``fit_range`` (1-based,
    inclusive). Default range: rank 10 (or 1 for short spectra) to the last eigenvalue above
    1e-12 of the largest, capped at half the spectrum, which keeps both the top of the spectrum
    and its numerical floor out of the fit."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    if lam.ndim != 1 or len(lam) < 3:
        raise ValueError(
            f"eigenvalues must be a 1-D array of at least 3 values, got shape {lam.shape}"
        )
    positive = int((lam > 1e-12 * lam[0]).sum())
    if fit_range is None:
        lo = 10 if positive >= 40 else 1
        fit_range = (lo, max(lo + 2, min(positive, len(lam) // 2 if len(lam) >= 40 else positive)))
    lo, hi = fit_range
    if not 1 <= lo < hi <= positive:
        raise ValueError(
            f"fit_range must satisfy 1 <= lo < hi <= {positive} (positive eigenvalues), got {fit_range}"
        )
    n = np.arange(lo, hi + 1, dtype=np.float64)
    y = np.log(lam[lo - 1 : hi])
    A = np.stack([np.log(n), np.ones_like(n)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return PowerLawFit(
        float(-coef[0]), float(coef[1]), 1 - ss_res / ss_tot if ss_tot > 0 else 1.0, (lo, hi)
    )


def rankme(embeddings: object) -> float:
    """RankMe (Garrido et al. 2023): the effective rank of the embedding matrix (N, F)."""
    return float(effective_rank(_features(embeddings, "embeddings")))


def class_effective_ranks(features: object, labels: object) -> dict[str, float]:
    """Intra-class erank (mean over classes of the erank of the class covariance, Def. E.1)
    and inter-class erank (erank of the covariance of the class means, Def. E.2)."""
    x = _features(features)
    y = torch.as_tensor(np.asarray(labels)).flatten()
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"labels must have one entry per row of features ({x.shape[0]}), got {y.shape[0]}"
        )
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError("class_effective_ranks needs at least two classes")
    intra, means = [], []
    for c in classes:
        xc = x[y == c]
        mu = xc.mean(dim=0, keepdim=True)
        means.append(mu)
        cov = (xc - mu).T @ (xc - mu) / xc.shape[0]
        if float(cov.abs().sum()) > 0:
            intra.append(float(effective_rank(cov)))
    mu = torch.cat(means)
    centred = mu - x.mean(dim=0, keepdim=True)
    inter = float(effective_rank(centred.T @ centred / len(classes)))
    return {
        "intra_class_erank": float(np.mean(intra)) if intra else 0.0,
        "inter_class_erank": inter,
    }
