"""Representation geometry: spectra, nuclear-norm bounds, matrix information quantities.

Arrays in, numbers out; every spectrum is computed in float64 with autocast off.
"""

from .matrix_info import (
    matrix_cross_entropy,
    matrix_entropy,
    matrix_kl,
    matrix_log,
    taylor_log,
    trace_p_log_p,
)
from .spectral import (
    effective_rank,
    nuclear_norm,
    nuclear_norm_bound,
    nuclear_norm_from_gram,
    participation_ratio,
    percent_error,
    singular_values,
)

__all__ = [
    "effective_rank",
    "matrix_cross_entropy",
    "matrix_entropy",
    "matrix_kl",
    "matrix_log",
    "nuclear_norm",
    "nuclear_norm_bound",
    "nuclear_norm_from_gram",
    "participation_ratio",
    "percent_error",
    "singular_values",
    "taylor_log",
    "trace_p_log_p",
]
