"""Representation geometry: spectra, nuclear-norm bounds, matrix information quantities,
mean-field manifold capacity, and manifold and packing statistics.

Arrays in, numbers out; every spectrum is computed in float64 with autocast off.
"""

from .capacity import (
    CapacityResult,
    elliptical_geometry,
    empirical_capacity,
    manifold_capacity,
    point_capacity,
)
from .manifold_stats import (
    centroid_norm_identity,
    manifold_similarities,
    packing_statistics,
    split_by_class,
)
from .matrix_info import (
    matrix_cross_entropy,
    matrix_entropy,
    matrix_kl,
    matrix_log,
    taylor_log,
    trace_p_log_p,
)
from .polar import nuclear_norm_polar, polar_factor
from .spectral import (
    PowerLawFit,
    class_effective_ranks,
    covariance_spectrum,
    effective_rank,
    nuclear_norm,
    nuclear_norm_bound,
    participation_ratio,
    percent_error,
    powerlaw_decay,
    rankme,
    singular_values,
)

__all__ = [
    "CapacityResult",
    "PowerLawFit",
    "centroid_norm_identity",
    "class_effective_ranks",
    "covariance_spectrum",
    "effective_rank",
    "elliptical_geometry",
    "empirical_capacity",
    "manifold_capacity",
    "manifold_similarities",
    "matrix_cross_entropy",
    "matrix_entropy",
    "matrix_kl",
    "matrix_log",
    "nuclear_norm",
    "nuclear_norm_bound",
    "nuclear_norm_polar",
    "packing_statistics",
    "participation_ratio",
    "percent_error",
    "point_capacity",
    "polar_factor",
    "powerlaw_decay",
    "rankme",
    "singular_values",
    "split_by_class",
    "taylor_log",
    "trace_p_log_p",
]
