"""Small helpers shared by the objectives."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_finite_via, check_same_shape, check_tensor
from ..geometry._precision import full_precision

Terms = dict[str, torch.Tensor]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def check_views(
    z: torch.Tensor, name: str = "z", min_views: int = 2, finite: bool = True
) -> torch.Tensor:
    """``z`` must be a finite (B, K, D) tensor with B >= 1 and K >= ``min_views``."""
    z = check_tensor(z, name, 3, "(B, K, D)", min_sizes={0: 1, 2: 1}, finite=finite)
    if z.shape[1] < min_views:
        raise ValueError(
            f"{name} must hold K >= {min_views} views along dim 1 of (B, K, D), got K = "
            f"{z.shape[1]} (shape {tuple(z.shape)})"
        )
    return z


def check_pair(
    z1: torch.Tensor, z2: torch.Tensor, names: tuple[str, str] = ("z1", "z2"), min_batch: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two finite (B, D) tensors of the same shape with B >= ``min_batch``."""
    z1 = check_tensor(z1, names[0], 2, "(B, D)", min_sizes={0: min_batch, 1: 1})
    z2 = check_tensor(z2, names[1], 2, "(B, D)", min_sizes={0: min_batch, 1: 1})
    check_same_shape(z1, z2, *names)
    return z1, z2


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last dim (safe at zero vectors)."""
    return F.normalize(x, dim=-1, eps=1e-12)


class _UnitCentroids(torch.autograd.Function):
    """``(mean_k ẑ_k, ‖z‖)`` for views ``z`` (B, K, D), ``ẑ = z / max(‖z‖, 1e-12)``: the
    centroids in float64, the backward in the input's precision (at least float32).

    Forward in float64 whatever the input: near collapse the views differ from their common
    direction by 10⁻⁴ and less, and float32's rounding of each unit vector (~10⁻⁷ of its
    length) would be a 10⁻³ error in the small singular directions that carry MMCR's gradient.
    The centroids are one batched product ``(1/‖z‖)ᵀ z`` per image, so no (B, K, D) float64
    tensor but the converted input is formed. The backward
    ``∂c/∂z_k = (I − ẑ_kẑ_kᵀ)/(K‖z_k‖)`` is a projection of the incoming gradient, whose error
    is relative to that gradient, so it runs in the input's precision. One fused function
    instead of ``F.normalize`` and ``mean``: autograd's generic backward of ``normalize`` makes
    about twice as many passes over the views (``benchmarks/losses.py``).
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z64 = z.to(torch.float64)
        norms = torch.linalg.vector_norm(z64, dim=-1, keepdim=True)  # (B, K, 1)
        inv = 1.0 / norms.clamp_min(1e-12)
        centroids = (inv.transpose(1, 2) @ z64).squeeze(1) / z.shape[1]  # (B, D)
        ctx.save_for_backward(z, inv, norms)
        ctx.mark_non_differentiable(norms)
        return centroids, norms

    @staticmethod
    def backward(ctx: Any, g_c: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
        z, inv, norms = ctx.saved_tensors
        work = torch.float64 if z.dtype == torch.float64 else torch.float32
        zw, invw = z.to(work), inv.to(work)
        gc = (g_c.to(work) / z.shape[1]).unsqueeze(1)  # (B, 1, D)
        # out = (g − (g·ẑ)ẑ)/‖z‖ with g = g_c/K broadcast over the views, written with z itself
        # (ẑ = z·inv): out = inv ⊗ g − (inv³·(z·g))·z. Below the clamp ẑ = z/1e-12 and the
        # projection is dropped, as F.normalize's gradient.
        radial = (zw @ gc.transpose(-1, -2)) * (invw * invw * invw) * (norms > 1e-12)
        out = zw * -radial
        out.baddbmm_(invw, gc)  # + inv ⊗ g (bmm: no broadcast outer-product path)
        return out


def unit_views_and_centroids(
    z: torch.Tensor, name: str = "z", views: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Unit-normalised views ``ẑ`` (B, K, D) (None unless ``views``) and their float64
    centroids (B, D), with a finiteness check of ``z`` folded into the row norms (see
    :func:`check_finite_via`). The views are float64 too (``F.normalize``'s autograd)."""
    centroids, norms = _UnitCentroids.apply(z)
    check_finite_via(norms, z, name)
    zn = unit(z.to(torch.float64)) if views else None
    return zn, centroids


def result_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a loss returns for input ``x``: float64 for float64, float32 otherwise (a bf16 or
    fp16 scalar would round a float64-accurate loss to 2-3 digits)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Promote half/bfloat16 (autocast outputs) to float32; leave float32/64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def float32_inside(loss: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``loss`` in at least float32: autocast off inside, bf16/fp16 tensor arguments
    promoted to float32, so that it returns float32 for them (float64 for float64).

    Under autocast a loss's matmuls, softmaxes and sums would run in bf16 (2–3 digits): an
    NT-Xent's log-sum-exp in bf16 is 30–50× less accurate than in float32 on the same bf16
    embeddings. The spectral losses go further and work in float64
    (:mod:`manifold_ssl.geometry._precision`).
    """

    @functools.wraps(loss)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is None:
            return loss(*args, **kwargs)
        promoted = [at_least_float32(a) if isinstance(a, torch.Tensor) else a for a in args]
        named = {
            k: at_least_float32(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
        }
        with full_precision(first):
            return loss(*promoted, **named)  # type: ignore[arg-type]

    return wrapper


def zero_gradient(*params: object) -> torch.Tensor | float:
    """``0 · Σ p`` over the tensors among ``params`` (0.0 if none): added to a loss that ignores
    a model output (MMCR ignores CLIP's ``logit_scale``), it gives that parameter a zero gradient
    instead of none, which DDP without ``find_unused_parameters`` requires."""
    total: torch.Tensor | float = 0.0
    for p in params:
        if isinstance(p, torch.Tensor):
            total = total + 0.0 * p.sum()
    return total


def renamed(**old_to_new: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Accept a keyword's old name (``lmbda``, ``lam``: λ is spelled ``lambd`` everywhere, as
    PyTorch and the Barlow Twins and Matrix-SSL code spell it) with a ``DeprecationWarning``."""

    def wrap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def inner(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"give {new} only ({old} is its old name)")
                    warnings.warn(
                        f"{old} is deprecated; the keyword is now {new}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return inner

    return wrap


def halves(
    first: torch.Tensor, second: torch.Tensor, return_terms: bool
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """The mean of a loss symmetrised over the two views' orders, and (with ``return_terms``)
    its two halves as terms."""
    loss = (first + second) / 2
    if return_terms:
        return loss, {"first": first.detach(), "second": second.detach()}
    return loss


class OpenCLIPSignature(nn.Module):
    """The call OpenCLIP's training loop makes, ``loss(**model_out, output_dict=True)``, as an
    adapter over the library's convention: a subclass defines
    ``objective(image_features, text_features, logit_scale, logit_bias, want_terms)``
    ``-> (loss, terms)``
    (``terms`` only when asked: ``want_terms``) and the key OpenCLIP logs (:attr:`key`);
    ``forward`` returns the loss, ``(loss, terms)``
    with ``return_terms`` (as every loss here), or ``{key: loss}`` with ``output_dict``. Other
    keys of OpenCLIP's model output are ignored."""

    key = "loss"

    def objective(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float | None,
        logit_bias: torch.Tensor | None,
        want_terms: bool,
    ) -> tuple[torch.Tensor, Terms]:
        raise NotImplementedError

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float | None = None,
        logit_bias: torch.Tensor | None = None,
        output_dict: bool = False,
        *,
        return_terms: bool = False,
        **unused: object,
    ) -> torch.Tensor | tuple[torch.Tensor, Terms] | dict[str, torch.Tensor]:
        loss, terms = self.objective(
            image_features, text_features, logit_scale, logit_bias, return_terms
        )
        if output_dict:
            return {self.key: loss}
        return (loss, terms) if return_terms else loss
