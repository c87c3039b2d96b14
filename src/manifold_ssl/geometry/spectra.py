"""Spectra of representations: eigenspectrum, power-law decay, RankMe, class effective ranks.

Yerxa et al. App. L (participation ratio, spectral decay coefficient α); CLAMP App. H (power law
of the eigenspectrum); Garrido et al. 2023 (RankMe = effective rank of the embeddings);
Matrix-SSL App. E (intra- and inter-class effective rank, Defs E.1–E.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_tensor
from .spectral import effective_rank

__all__ = [
    "PowerLawFit",
    "class_effective_ranks",
    "covariance_spectrum",
    "powerlaw_decay",
    "rankme",
]


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
