"""Spectral objectives and matrix functions in the precisions people train in.

float32 inputs: value and gradient within 1e-4 (relative) of float64 truth on square B = D
inputs and on spectra spanning four decades. CPU bf16 autocast, as the training loop runs on
GPUs: within 1e-4 of the float64 truth computed on the same bf16-rounded embeddings; a bf16
*input's* gradient is that truth rounded to bf16 (autograd returns the input's dtype).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from manifold_ssl.geometry import matrix_entropy, matrix_kl, nuclear_norm
from manifold_ssl.losses import (
    clamp_loss,
    matrix_ssl_loss,
    mec_loss,
    mmcr_loss,
    simclr_loss,
    tcr_loss,
)

f64 = torch.float64
TOL = 1e-4


def _spectrum(b: int, d: int, decades: float, gen: torch.Generator) -> torch.Tensor:
    """A (b, d) matrix whose singular values are log-spaced over ``decades`` decades."""
    u, _, vh = torch.linalg.svd(torch.randn(b, d, generator=gen, dtype=f64), full_matrices=False)
    s = torch.logspace(0, -decades, min(b, d), dtype=f64)
    return (u * s) @ vh


def _views(b: int, k: int, d: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "square":
        return torch.randn(b, k, d, generator=gen, dtype=f64)
    base = _spectrum(b, d, 4, gen)  # centroids spanning 4 decades, views scattered around them
    return base.unsqueeze(1) + 1e-3 * torch.randn(b, k, d, generator=gen, dtype=f64)


def _pair(b: int, d: int, kind: str, gen: torch.Generator) -> list[torch.Tensor]:
    base = (
        torch.randn(b, d, generator=gen, dtype=f64) if kind == "square" else _spectrum(b, d, 4, gen)
    )
    scale = base.norm(dim=1, keepdim=True)
    return [base, base + 0.3 * scale * torch.randn(b, d, generator=gen, dtype=f64) / d**0.5]


def _psd(d: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """A (d, d) covariance-like PSD matrix of trace 1 (``kind="four_decades"``: its eigenvalues
    span four decades)."""
    q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=f64))[0]
    lam = torch.rand(d, generator=gen, dtype=f64) + 0.1
    if kind == "four_decades":
        lam = torch.logspace(0, -4, d, dtype=f64)
    return (q * (lam / lam.sum())) @ q.T


B = 128  # square cases: B = D = 128, the packaged MMCR recipes' shape
# name -> (function of the float inputs, inputs maker)
CASES: dict[str, tuple[Callable[..., torch.Tensor], Callable[[str, torch.Generator], list]]] = {
    "mmcr": (lambda z: mmcr_loss(z), lambda kind, g: [_views(B, 2, B, kind, g)]),
    "mmcr_lambda": (
        lambda z: mmcr_loss(z, lambd=0.1),
        lambda kind, g: [_views(64, 8, 64, kind, g)],
    ),
    "mmcr_momentum": (
        lambda z, zm: mmcr_loss(z, 0.1, z_momentum=zm),
        lambda kind, g: [_views(B, 2, B, kind, g), _views(B, 2, B, kind, g)],
    ),
    "nuclear_norm": (lambda x: nuclear_norm(x), lambda kind, g: [_pair(B, B, kind, g)[0]]),
    # the matmul-only path, inside its documented range (σ >= 1e-4·σ_max at 31 steps)
    "mmcr_polar": (
        lambda z: mmcr_loss(z, nuclear="polar"),
        lambda kind, g: [_views(B, 2, B, kind, g)],
    ),
    "mmcr_polar_lambda": (
        lambda z: mmcr_loss(z, lambd=0.1, nuclear="polar"),
        lambda kind, g: [_views(64, 8, 64, kind, g)],
    ),
    "matrix_ssl_exact": (
        lambda a, b: matrix_ssl_loss(a, b, order=None),
        lambda kind, g: _pair(64, 64, kind, g),
    ),
    "matrix_ssl_paper_exact": (  # a ridge keeps the cross-covariance positive definite
        lambda a, b: matrix_ssl_loss(a, b, lambd=0.5, order=None, form="paper"),
        lambda kind, g: _pair(64, 64, kind, g),
    ),
    "tcr": (lambda z: tcr_loss(z), lambda kind, g: [_pair(64, 64, kind, g)[0]]),
    "mec": (lambda a, b: mec_loss(a, b), lambda kind, g: _pair(64, 64, kind, g)),
    "mec_exact": (lambda a, b: mec_loss(a, b, order=None), lambda kind, g: _pair(64, 64, kind, g)),
    "matrix_kl": (
        lambda p, q: matrix_kl(p, q),
        lambda kind, g: [_psd(32, kind, g), _psd(32, kind, g)],
    ),
    "matrix_entropy": (lambda a: matrix_entropy(a), lambda kind, g: [_psd(32, kind, g)]),
}


# geometry functions return float64 (they are metrics); losses return float32 for float32 input
FLOAT64_OUTPUT = {"matrix_kl", "matrix_entropy"}
# truth by the exact path where a case approximates it
EXACT = {
    "mmcr_polar": lambda z: mmcr_loss(z),
    "mmcr_polar_lambda": lambda z: mmcr_loss(z, lambd=0.1),
}


def _truth(fn, inputs64: list[torch.Tensor], name: str = "") -> tuple[torch.Tensor, list]:
    fn = EXACT.get(name, fn)
    xs = [x.clone().requires_grad_(True) for x in inputs64]
    value = fn(*xs)
    value.backward()
    return value.detach(), [x.grad for x in xs]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("kind", ["square", "four_decades"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_within_1e4_of_float64(name, kind, gen):
    fn, make = CASES[name]
    inputs32 = [x.float() for x in make(kind, gen)]
    value64, grads64 = _truth(fn, [x.double() for x in inputs32], name)  # on the same numbers
    xs = [x.clone().requires_grad_(True) for x in inputs32]
    value = fn(*xs)
    assert value.dtype == (f64 if name in FLOAT64_OUTPUT else torch.float32)
    value.backward()
    assert _rel(value.detach(), value64) < TOL
    _check_grads(name, xs, grads64)


def _check_grads(name: str, xs: list[torch.Tensor], grads64: list[torch.Tensor | None]) -> None:
    for x, g64 in zip(xs, grads64, strict=True):
        if g64 is None:  # MMCR's momentum views are detached
            assert x.grad is None
        else:
            assert _rel(x.grad, g64) < TOL, (name, _rel(x.grad, g64))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_autocast_within_1e4_of_float64_on_the_rounded_embeddings(name, gen):
    fn, make = CASES[name]
    rounded = [x.to(torch.bfloat16) for x in make("square", gen)]
    value64, grads64 = _truth(fn, [x.double() for x in rounded], name)
    # float32 leaves holding the bf16 values: every op inside the loss under autocast
    xs = [x.float().requires_grad_(True) for x in rounded]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(*xs)
    value.backward()
    out_dtype = f64 if name in FLOAT64_OUTPUT else torch.float32
    assert value.dtype == out_dtype and _rel(value.detach(), value64) < TOL
    _check_grads(name, xs, grads64)
    # bf16 leaves (a bf16 projector's outputs): float32 value, gradient = truth rounded to bf16
    xs = [x.clone().requires_grad_(True) for x in rounded]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(*xs)
    value.backward()
    assert value.dtype == out_dtype and _rel(value.detach(), value64) < TOL
    for x, g64 in zip(xs, grads64, strict=True):
        if g64 is None:
            assert x.grad is None
            continue
        assert x.grad.dtype == torch.bfloat16
        # bf16's rounding (half an ulp, 2⁻⁸ relative) on top of the float32-level error
        atol = TOL * float(g64.abs().max())
        torch.testing.assert_close(x.grad.double(), g64, rtol=2**-8, atol=atol)


# --------------------------------------------------------------------------- near collapse
def _near_collapse(b: int, k: int, d: int, spread: float, gen: torch.Generator) -> torch.Tensor:
    """(b, k, d) views all within ``spread`` (relative) of one direction."""
    u = torch.randn(d, generator=gen, dtype=f64)
    return u + spread * u.norm() / d**0.5 * torch.randn(b, k, d, generator=gen, dtype=f64)


def _clamp_clusters(m: int, gen: torch.Generator) -> torch.Tensor:
    """CLAMP's hard case: 8 clusters of 16 sub-manifolds whose centroids are ~10⁻³ apart, some
    pairs inside the official form's 10⁻³ margin and some outside."""
    centres = torch.nn.functional.normalize(torch.randn(8, 64, generator=gen, dtype=f64), dim=1)
    images = centres.repeat_interleave(16, 0) + 1e-3 * torch.randn(
        128, 64, generator=gen, dtype=f64
    )
    return images[:, None] + 3e-4 * torch.randn(128, m, 64, generator=gen, dtype=f64)


NEAR_COLLAPSE: dict[str, tuple[Callable[..., torch.Tensor], Callable[[torch.Generator], list]]] = {
    # B = D: singular values down to ~1e-9 of the largest (a one-level Gram lost 4–26%)
    "mmcr_square_1e-3": (lambda z: mmcr_loss(z), lambda g: [_near_collapse(128, 2, 128, 1e-3, g)]),
    "mmcr_square_1e-4": (lambda z: mmcr_loss(z), lambda g: [_near_collapse(128, 2, 128, 1e-4, g)]),
    "mmcr_tall_1e-4": (lambda z: mmcr_loss(z), lambda g: [_near_collapse(256, 4, 64, 1e-4, g)]),
    "mmcr_lambda_1e-4": (
        lambda z: mmcr_loss(z, lambd=0.1),
        lambda g: [_near_collapse(64, 8, 64, 1e-4, g)],
    ),
    "clamp_m16": (lambda z: clamp_loss(z), lambda g: [_clamp_clusters(16, g)]),
    "clamp_m2": (lambda z: clamp_loss(z), lambda g: [_clamp_clusters(2, g)]),
}


@pytest.mark.parametrize("precision", ["float32", "bf16_autocast"])
@pytest.mark.parametrize("name", sorted(NEAR_COLLAPSE))
def test_near_collapse_within_1e4_of_float64(name, precision, gen):
    fn, make = NEAR_COLLAPSE[name]
    inputs = make(gen)
    if precision == "float32":
        numbers = [x.float() for x in inputs]
    else:
        numbers = [x.to(torch.bfloat16).float() for x in inputs]
    value64, grads64 = _truth(fn, [x.double() for x in numbers])  # truth on the same numbers
    xs = [x.clone().requires_grad_(True) for x in numbers]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
        value = fn(*xs)
    value.backward()
    assert value.dtype == torch.float32 and _rel(value.detach(), value64) < TOL
    _check_grads(name, xs, grads64)
    if name.startswith("clamp"):  # the same pairs overlap, inside the 1e-3 margin or not
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
            _, terms = clamp_loss(numbers[0], return_terms=True)
        _, terms64 = clamp_loss(numbers[0].double(), return_terms=True)
        assert terms["n_overlapping_pairs"] == terms64["n_overlapping_pairs"]


def test_simclr_under_bf16_autocast_is_within_lightlys_error(gen):
    # lightly's NT-Xent runs its log-sum-exp in bf16 under autocast; ours runs in float32
    import oracles

    for _ in range(5):
        z = torch.randn(64, 2, 32, generator=gen).to(torch.bfloat16).float()
        truth = simclr_loss(z.double(), 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = simclr_loss(z, 0.5)
            theirs = oracles.ntxent_lightly(z[:, 0], z[:, 1], 0.5)
        assert ours.dtype == torch.float32
        ours_error, their_error = abs(ours.double() - truth), abs(theirs.double() - truth)
        assert ours_error <= their_error + 4 * torch.finfo(torch.float32).eps * abs(truth)
        assert ours_error < 1e-5 * abs(truth)
