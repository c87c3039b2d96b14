"""A matmul-only nuclear norm: Newton–Schulz iteration for the polar factor.

``‖X‖* = tr(Qᵀ X)`` and ``∂‖X‖*/∂X = Q`` for the polar factor ``Q = U Vᵀ`` of
``X = U Σ Vᵀ``. Newton–Schulz's cubic iteration ``X ← 1.5 X − 0.5 X XᵀX`` maps every singular
value ``s ∈ (0, √3)`` of ``X`` through ``f(s) = 1.5 s − 0.5 s³`` and leaves the singular vectors
alone, so from ``X₀ = X / c`` with ``c >= σ_max`` it converges to ``Q``: quadratically once
``s`` is near 1, and by a factor 1.5 per step while ``s`` is small. Each step is two matrix
products (``XᵀX`` and a fused ``baddbmm``), with nothing read back to the host and no
eigensolver, so on cards that run float64 at 1/32–1/64 of float32 (consumer and workstation
GPUs) the objective costs a few float32 matmuls instead of a float64 eigensystem whose
convergence checks also synchronise with the host (:mod:`manifold_ssl.geometry.spectral`).

Accuracy limits (``tests/geometry/test_polar.py`` holds them against float64 SVDs):

* **Which directions converge.** ``c = ‖XᵀX‖_F^{1/2} = (Σσᵢ⁴)^{1/4}``, which lies between
  ``σ_max`` and ``k^{1/4}·σ_max`` (``k = min(m, n)``; the upper end when all singular values but
  the weak one equal ``σ_max``). After ``n`` steps every singular value with
  ``σᵢ/c >= 4.1307·1.5⁻ⁿ`` has ``f⁽ⁿ⁾(σᵢ/c) > 1 − 10⁻⁶`` (the scalar map's constant,
  4.13063…, rounded up), so ``σᵢ >= ρ·σ_max`` converges for every ``k <= K`` once
  ``ρ·K^{-1/4} >= 4.1307·1.5⁻ⁿ``, i.e. ``n >= log(4.1307·K^{1/4}/ρ) / log 1.5``
  (:func:`polar_steps_for`). For ``ρ = 10⁻⁴`` and ``K = 512`` that is 30.06: the default 31
  steps resolve ``σᵢ >= 1.44·10⁻⁵·c``, i.e. ``σᵢ >= 10⁻⁴·σ_max`` for any ``k <= 2351`` (30 steps
  held only to ``k <= 464``; the float64 path's first level keeps the same directions).
  Weaker directions enter the gradient with weight
  ``f⁽ⁿ⁾(σᵢ/c) < 1`` (the exact subgradient gives them 1) and the value loses
  ``σᵢ·(1 − f⁽ⁿ⁾(σᵢ/c))``, at most ``σᵢ``; zero singular values get weight 0, the minimum-norm
  subgradient. Near MMCR's collapse, where centroids differ by 10⁻⁴ and less, use the float64
  path or more steps (each step adds a factor 1.5 of range).
* **Rounding.** In float32 each step's product errs by ``~ε₃₂`` of the largest singular value,
  which turns a direction of relative size ``sᵢ = σᵢ/c`` by ``~ε₃₂/sᵢ`` while it grows: the
  gradient of a float32 input is within ``10⁻⁶`` (relative, Frobenius) of a float64 SVD's
  ``U Vᵀ`` on matrices with ``σ_min >= 10⁻²·σ_max`` and within ``6·10⁻⁵`` on log-evenly spread
  spectra reaching ``10⁻⁴·σ_max`` (256×128, 128×512 and 512×512; a float64 Gram eigensystem is
  within 10⁻⁷ there); the error grows with the share of the spectrum near ``σ_min``: ``5·10⁻⁴``
  at 512×512 with half the singular values at ``10⁻⁴·σ_max``. The value is within
  ``3·10⁻⁷ = 2.5·ε₃₂`` relative: it is first-order insensitive to the rotation errors
  (``tr(QᵀX)`` is stationary at the polar factor over orthogonal ``Q``), and ``Q``'s singular
  values, and the float32 sum ``Σ Q∘X``, are each rounded by ``~ε₃₂``.
  Float64 inputs iterate in float64 and match an SVD to ``10⁻¹²``.
* **TF32.** Matmuls run in full float32 inside (``torch.set_float32_matmul_precision`` is
  ``"highest"`` for the call): TF32's 10-bit mantissa would cap the accuracy at ``~10⁻³``.

Why by hand: no library offers a differentiable polar-factor nuclear norm; the Muon-style quintic
Newton–Schulz of optimiser libraries deliberately stops at singular values in ``[0.7, 1.2]``,
which is a wrong gradient here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from ._precision import full_precision

__all__ = [
    "DEFAULT_POLAR_STEPS",
    "nuclear_norm_polar",
    "polar_factor",
    "polar_steps_for",
    "polar_threshold",
]

#: ``s·1.5ⁿ`` above which ``n`` steps of ``f(s) = 1.5 s − 0.5 s³`` end above ``1 − 10⁻⁶`` (the
#: limit for large ``n`` is 4.13063…, approached from below; rounded up).
_CONVERGED = 4.1307


def polar_threshold(steps: int | None = None) -> float:
    """The smallest ``σ/c`` that ``steps`` Newton–Schulz steps (default
    :data:`DEFAULT_POLAR_STEPS`) bring within 10⁻⁶ of 1 (``c = (Σσ⁴)^{1/4}``):
    ``4.1307·1.5⁻ˢᵗᵉᵖˢ`` (module docstring)."""
    return _CONVERGED * 1.5 ** (-(DEFAULT_POLAR_STEPS if steps is None else steps))


def polar_steps_for(ratio: float, k: int) -> int:
    """The fewest Newton–Schulz steps after which every singular value ``σ >= ratio·σ_max`` of
    any matrix with ``min(m, n) <= k`` is within 10⁻⁶ of converged: ``c <= k^{1/4}·σ_max``, so
    ``σ/c >= ratio·k^{-1/4}`` must reach :func:`polar_threshold` (module docstring).

    Args:
        ratio: the weakest singular value to resolve, relative to the largest, in (0, 1].
        k: the largest ``min(m, n)`` of the matrices, >= 1.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return max(1, math.ceil(math.log(_CONVERGED * k**0.25 / ratio) / math.log(1.5)))


#: Newton–Schulz steps by default: every ``σ >= 10⁻⁴·σ_max`` converges for ``min(m, n) <= 512``
#: (31 steps, which reach ``σ >= 1.44·10⁻⁵·(Σσ⁴)^{1/4}``).
DEFAULT_POLAR_STEPS = polar_steps_for(1e-4, 512)


@contextlib.contextmanager
def _full_float32_matmuls() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    if before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def polar_factor(a: torch.Tensor, steps: int = DEFAULT_POLAR_STEPS) -> torch.Tensor:
    """The Newton–Schulz polar factor of a tall ``a`` (..., r, k), ``r >= k``, in ``a``'s dtype.

    ``a`` is first divided by its largest entry (so the Gram cannot overflow or underflow) and
    then by ``c = ‖aᵀa‖_F^{1/2}``, so that every singular value lies in (0, 1]. A zero matrix
    gives zero.
    """
    lead = a.shape[:-2]
    x = a.reshape(-1, *a.shape[-2:])
    tiny = torch.finfo(x.dtype).tiny
    x = x / x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(tiny)
    h = x.transpose(-1, -2) @ x
    c2 = torch.linalg.matrix_norm(h).clamp_min(tiny)[:, None, None]  # ‖G‖_F = c²
    x = x / c2.sqrt()
    h = h / c2
    for step in range(steps):
        if step:
            h = x.transpose(-1, -2) @ x
        x = torch.baddbmm(x, x, h, beta=1.5, alpha=-0.5)  # X (1.5 I − 0.5 XᵀX)
    return x.reshape(*lead, *a.shape[-2:])


class _PolarNuclearNorm(torch.autograd.Function):
    """``tr(Qᵀ A)`` for tall ``A``, backward ``Q`` (the polar factor is the subgradient)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, steps: int) -> torch.Tensor:
        q = polar_factor(a, steps)
        ctx.save_for_backward(q)
        return (q * a).sum(dim=(-2, -1))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (q,) = ctx.saved_tensors
        return q * grad[..., None, None], None


def nuclear_norm_polar(x: torch.Tensor, steps: int = DEFAULT_POLAR_STEPS) -> torch.Tensor:
    """``‖X‖*`` of ``x`` (..., m, n) by Newton–Schulz, batched over leading dims.

    Float64 for float64 ``x``, float32 otherwise (bf16/fp16 promoted, autocast off inside);
    differentiable with the polar factor as gradient; matrix products only, nothing read back to
    the host. Accurate where the module docstring says: every singular value above
    ``polar_threshold(steps)·(Σσ⁴)^{1/4}`` is resolved; weaker ones count less.

    Example:
        >>> x = torch.randn(256, 128, requires_grad=True)
        >>> nuclear_norm_polar(x).backward()  # x.grad ≈ U Vᵀ
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., m, n), got {tuple(x.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    with full_precision(x), _full_float32_matmuls():
        a = x.to(work)
        a = a.transpose(-1, -2) if a.shape[-2] < a.shape[-1] else a
        out: torch.Tensor = _PolarNuclearNorm.apply(a, steps)
    return out
