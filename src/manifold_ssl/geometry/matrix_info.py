"""Matrix information theory for PSD matrices (Matrix-SSL, Defs 3.1–3.3, Prop. 3.6).

* ``ME(A)      = −tr(A log A) + tr(A)``                       (Def. 3.1, ``0 log 0 = 0``)
* ``MKL(P‖Q)   = tr(P log P − P log Q − P + Q)``              (Def. 3.2, Eq. 10)
* ``MCE(P, Q)  = tr(−P log Q + Q) = MKL(P‖Q) + ME(P)``        (Def. 3.3, Eq. 11)

``order=None`` uses the exact principal logarithm of the symmetrised matrix, through an
eigendecomposition whose backward is the Daleckii–Krein divided-difference formula, so that
gradients stay finite at repeated eigenvalues (plain ``eigh`` autograd divides by eigenvalue
gaps). ``order=k`` uses the Taylor series of ``log`` around ``I`` truncated after ``k`` terms
(Matrix-SSL App. F.1 uses k = 4); it needs no eigendecomposition, also applies to
non-symmetric matrices (such as a cross-covariance) and is accurate when the spectrum lies well
inside (0, 2). All computations run in float64 with autocast off.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_order
from ._precision import full_precision, to_float64

__all__ = [
    "matrix_cross_entropy",
    "matrix_entropy",
    "matrix_kl",
    "matrix_log",
    "taylor_log",
    "trace_p_log_p",
]


def _check_square(a: torch.Tensor, name: str) -> None:
    if not isinstance(a, torch.Tensor) or a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"{name} must be a square matrix (..., n, n), got {shape}")


def _log_floor(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny)


class _SymLog(torch.autograd.Function):
    """``log(A)`` for symmetric ``A`` with a divided-difference backward.

    Eigenvalues at or below the floor (the smallest positive float64: a singular or indefinite
    matrix) take ``log(floor)``, a very negative but finite value, and a zero derivative, so
    the gradient stays finite there too.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        lam, vecs = torch.linalg.eigh(a)
        log_lam = torch.log(lam.clamp_min(_log_floor(lam.dtype)))
        ctx.save_for_backward(lam, log_lam, vecs)
        return (vecs * log_lam.unsqueeze(-2)) @ vecs.transpose(-1, -2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        lam, log_lam, vecs = ctx.saved_tensors
        # Divided differences L_ij = (f(λi) − f(λj))/(λi − λj) of f = log∘max(·, floor), and
        # f'(λi) = 1/λi (0 below the floor) where λi ≈ λj.
        floor = _log_floor(lam.dtype)
        dl = lam.unsqueeze(-1) - lam.unsqueeze(-2)
        dlog = log_lam.unsqueeze(-1) - log_lam.unsqueeze(-2)
        top = torch.maximum(lam.unsqueeze(-1), lam.unsqueeze(-2))
        close = dl.abs() <= 1e-9 * top.abs()
        deriv = torch.where(top > floor, 1.0 / top.clamp_min(floor), 0.0)
        ratio = torch.where(close, deriv, dlog / torch.where(close, torch.ones_like(dl), dl))
        g = vecs.transpose(-1, -2) @ grad @ vecs
        g = 0.5 * (g + g.transpose(-1, -2))
        return vecs @ (ratio * g) @ vecs.transpose(-1, -2)


def taylor_log(a: torch.Tensor, order: int) -> torch.Tensor:
    """``log(A) ≈ Σ_{k=1}^{order} (−1)^{k+1} (A − I)^k / k`` (Matrix-SSL App. F.1)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    x = a - eye
    power = x
    out = x.clone()
    for k in range(2, order + 1):
        power = power @ x
        out = out + ((-1) ** (k + 1) / k) * power
    return out


def matrix_log(a: torch.Tensor, order: int | None = None) -> torch.Tensor:
    """Matrix logarithm of ``a`` (..., n, n), in float64.

    ``order=None``: exact principal log of the symmetrised ``(A + Aᵀ)/2`` (eigenvalues are
    floored at the smallest positive float64, so a singular matrix gives a very negative, finite
    log). ``order=k``: Taylor series of order k around ``I`` (no symmetrisation).
    """
    _check_square(a, "a")
    order = check_order(order)
    with full_precision(a):
        a64 = to_float64(a)
        if order is not None:
            return taylor_log(a64, order)
        out: torch.Tensor = _SymLog.apply(0.5 * (a64 + a64.transpose(-1, -2)))
        return out


def _trace(a: torch.Tensor) -> torch.Tensor:
    return a.diagonal(dim1=-2, dim2=-1).sum(-1)


def _trace_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tr(A B)`` without forming the product."""
    return (a * b.transpose(-1, -2)).sum(dim=(-2, -1))


def trace_p_log_p(p: torch.Tensor, order: int | None = None) -> torch.Tensor:
    """``tr(P log P)``; exact form ``Σ λ log λ`` from eigenvalues with ``0 log 0 = 0``."""
    _check_square(p, "p")
    order = check_order(order)
    with full_precision(p):
        p64 = to_float64(p)
        if order is not None:
            return _trace_of_product(p64, taylor_log(p64, order))
        lam = torch.linalg.eigvalsh(0.5 * (p64 + p64.transpose(-1, -2)))
        positive = lam > 0
        safe = torch.where(positive, lam, torch.ones_like(lam))
        return torch.where(positive, lam * torch.log(safe), 0.0).sum(-1)


def matrix_entropy(a: torch.Tensor, order: int | None = None) -> torch.Tensor:
    """``ME(A) = −tr(A log A) + tr(A)`` (Matrix-SSL Def. 3.1) of PSD ``a`` (..., n, n)."""
    _check_square(a, "a")
    with full_precision(a):
        a64 = to_float64(a)  # one cast: a bf16 input's gradient is rounded once, not per use
        return -trace_p_log_p(a64, order) + _trace(a64)


def matrix_cross_entropy(
    p: torch.Tensor, q: torch.Tensor, order: int | None = None
) -> torch.Tensor:
    """``MCE(P, Q) = tr(−P log Q + Q)`` (Matrix-SSL Def. 3.3, Eq. 11) of (..., n, n) matrices."""
    _check_square(p, "p")
    _check_square(q, "q")
    if p.shape != q.shape:
        raise ValueError(
            f"p and q must have the same shape, got {tuple(p.shape)}, {tuple(q.shape)}"
        )
    with full_precision(q):
        q64 = to_float64(q)
        return -_trace_of_product(to_float64(p), matrix_log(q64, order)) + _trace(q64)


def matrix_kl(p: torch.Tensor, q: torch.Tensor, order: int | None = None) -> torch.Tensor:
    """``MKL(P‖Q) = tr(P log P − P log Q − P + Q)`` (Matrix-SSL Def. 3.2, Eq. 10)."""
    with full_precision(p):
        p64 = to_float64(p)  # one cast: a bf16 input's gradient is rounded once, not per use
        return matrix_cross_entropy(p64, q, order) + trace_p_log_p(p64, order) - _trace(p64)
