"""The matmul-only nuclear norm (Newton–Schulz polar factor) against float64 SVDs, with the
accuracy limits its module documents."""

from __future__ import annotations

import pytest
import torch

from manifold_ssl.dispatch import DispatchCounter
from manifold_ssl.geometry import nuclear_norm_polar
from manifold_ssl.geometry.polar import DEFAULT_POLAR_STEPS, polar_steps_for, polar_threshold

f64 = torch.float64


def with_spectrum(m: int, n: int, decades: float, gen: torch.Generator) -> torch.Tensor:
    """An m×n float64 matrix whose singular values fall log-evenly from 1 to 10^-decades."""
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=f64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=f64))
    k = min(m, n)
    s = torch.logspace(0, -decades, k, dtype=f64)
    return (u[:, :k] * s) @ v[:, :k].T


def truth(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖x‖*, U Vᵀ) of the float64 copy of ``x``."""
    u, s, vh = torch.linalg.svd(x.detach().to(f64), full_matrices=False)
    return s.sum(-1), u @ vh


def value_and_grad(x: torch.Tensor, steps: int = DEFAULT_POLAR_STEPS):
    x = x.detach().requires_grad_(True)
    value = nuclear_norm_polar(x, steps)
    value.sum().backward()
    return value, x.grad


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (6, 6), (3, 4, 7), (2, 3, 8, 2)])
def test_float64_value_and_gradient_match_svd(shape, gen):
    x = torch.randn(*shape, generator=gen, dtype=f64)
    value, grad = value_and_grad(x, steps=60)  # random matrices reach σ_min ~ 10⁻³ σ_max
    expected, polar = truth(x)
    assert value.dtype == f64 and value.shape == shape[:-2]
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, polar, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(256, 128), (128, 512), (96, 96)])
@pytest.mark.parametrize(("decades", "grad_tol"), [(2, 2e-6), (4, 1e-4)])
def test_float32_against_float64_truth_where_documented(shape, decades, grad_tol, gen):
    x = with_spectrum(*shape, decades, gen).float()
    value, grad = value_and_grad(x)
    expected, polar = truth(x)  # of the float32 numbers themselves
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert abs(value.double() - expected) / expected < 3e-7
    assert (grad.double() - polar).norm() / polar.norm() < grad_tol


def test_bf16_input_is_computed_in_float32(gen):
    x = with_spectrum(64, 32, 2, gen).to(torch.bfloat16)
    value, grad = value_and_grad(x)
    expected, polar = truth(x)
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert abs(value.double() - expected) / expected < 3e-7
    # the gradient is rounded to bf16 once, at the end
    assert (grad.double() - polar).abs().max() < 2**-8


@pytest.mark.parametrize("steps", [20, DEFAULT_POLAR_STEPS])
def test_weak_directions_get_the_documented_weight(steps, gen):
    # singular values from 1 down to 10⁻⁸: each direction's gradient weight is the scalar
    # Newton–Schulz map applied `steps` times to σ/c, c = (Σσ⁴)^{1/4}
    x = with_spectrum(40, 24, 8, gen)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    value, grad = value_and_grad(x, steps)
    weights = torch.diagonal(u.T @ grad @ vh.T)
    scaled = s / (s**4).sum() ** 0.25
    expected = scaled.clone()
    for _ in range(steps):
        expected = 1.5 * expected - 0.5 * expected**3
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-9)
    resolved = scaled >= polar_threshold(steps)
    assert resolved.any() and not resolved.all()
    assert (weights[resolved] > 1 - 1e-6).all()
    # the value loses at most the unresolved singular values themselves
    assert 0 <= s.sum() - value <= s[~resolved].sum()


def _at_the_edge(kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 512×512 float64 matrix at the documented edge, and its singular values: ``flat``, all
    but one singular value at σ_max and one at 10⁻⁴·σ_max (``c = (Σσ⁴)^{1/4}`` at its largest,
    ~k^{1/4}·σ_max, the weak direction at its smallest σ/c); ``half``, 256 at σ_max and 256 at
    10⁻⁴·σ_max (as many directions at the edge as there are strong ones)."""
    k = 512
    weak = 1 if kind == "flat" else k // 2
    s = torch.cat([torch.ones(k - weak, dtype=f64), torch.full((weak,), 1e-4, dtype=f64)])
    u, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=f64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=f64))
    return (u * s) @ v.T, s


@pytest.mark.parametrize("kind", ["flat", "half"])
def test_the_documented_range_holds_at_k_512(kind, gen):
    # every σ >= 1e-4·σ_max converges (weight > 1 − 1e-6) for any k <= 512 at the default steps;
    # in float64 the weights are the scalar map's, so this checks the step count's maths
    x, s = _at_the_edge(kind, gen)
    value, grad = value_and_grad(x)
    u, sv, vh = torch.linalg.svd(x, full_matrices=False)
    weights = torch.diagonal(u.T @ grad @ vh.T)
    assert float(weights.min()) > 1 - 1e-6
    assert float(s.min() / (s**4).sum() ** 0.25) >= polar_threshold()  # as polar_threshold says
    # the value loses σᵢ·(1 − weight) < 1e-6·σᵢ of the weak ones, beside float64's rounding
    lost = float(sv.sum() - value.detach())
    assert abs(lost) <= 1e-6 * float(sv[sv < 1e-3].sum()) + 1e-12 * float(sv.sum())
    # one step fewer than the rule gives does not reach it for the flat spectrum (k = 512 is
    # the edge): 30 steps held only to k <= 464
    if kind == "flat":
        _, grad = value_and_grad(x, DEFAULT_POLAR_STEPS - 1)
        assert float(torch.diagonal(u.T @ grad @ vh.T).min()) < 1 - 1e-6


@pytest.mark.parametrize("kind", ["flat", "half"])
def test_float32_rounding_at_k_512_within_its_bounds(kind, gen):
    x, _ = _at_the_edge(kind, gen)
    x = x.float()
    value, grad = value_and_grad(x)
    expected, polar = truth(x)
    s = torch.linalg.svdvals(x.double())
    eps = torch.finfo(torch.float32).eps
    # value: Q's singular values and the float32 sum Σ Q∘X each rounded by ~ε₃₂ (module docstring)
    assert abs(value.double() - expected) / expected < 2.5 * eps
    # gradient: each direction of relative size s_i = σ_i/c is turned by at most ~ε₃₂/s_i
    scaled = s / (s**4).sum() ** 0.25
    bound = eps * float(((1 / scaled**2).sum() / len(s)) ** 0.5)
    assert (grad.double() - polar).norm() / polar.norm() < bound


def test_polar_steps_for_checks_its_arguments():
    assert DEFAULT_POLAR_STEPS == polar_steps_for(1e-4, 512)
    assert polar_steps_for(1e-4, 464) == 30 and polar_steps_for(1e-4, 465) == 31
    for steps in (10, 31, 60):  # the rule inverts polar_threshold
        ratio = polar_threshold(steps) * 16**0.25
        assert polar_steps_for(ratio * 1.001, 16) == steps
    with pytest.raises(ValueError, match="ratio must be in"):
        polar_steps_for(0.0, 8)
    with pytest.raises(ValueError, match="k must be a positive int"):
        polar_steps_for(1e-4, 0)


def test_edge_cases_have_finite_minimum_norm_gradients(gen):
    value, grad = value_and_grad(torch.zeros(5, 3))
    assert value.item() == 0.0 and torch.equal(grad, torch.zeros(5, 3))
    value, grad = value_and_grad(torch.eye(4, 6))  # four equal singular values
    assert value.item() == pytest.approx(4.0, rel=1e-6)
    torch.testing.assert_close(grad, torch.eye(4, 6))
    low_rank = torch.randn(6, 2, generator=gen, dtype=f64) @ torch.randn(
        2, 8, generator=gen, dtype=f64
    )
    value, grad = value_and_grad(low_rank)  # four zero singular values get weight 0
    u, _, vh = torch.linalg.svd(low_rank, full_matrices=False)
    torch.testing.assert_close(grad, u[:, :2] @ vh[:2], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales_neither_overflow_nor_underflow(scale, gen):
    x = with_spectrum(12, 8, 2, gen).float()
    value, grad = value_and_grad(x)
    scaled_value, scaled_grad = value_and_grad(x * scale)
    assert torch.isfinite(scaled_value) and torch.isfinite(scaled_grad).all()
    torch.testing.assert_close(scaled_value / scale, value, rtol=1e-5, atol=0)
    torch.testing.assert_close(scaled_grad, grad, rtol=1e-5, atol=1e-6)


def test_only_matrix_products_and_no_host_reads(gen):
    x = torch.randn(32, 16, generator=gen, requires_grad=True)
    with DispatchCounter() as counter:
        nuclear_norm_polar(x).backward()
    assert not counter.reads, counter.reads
    assert not [
        op for op in counter.by_op if op.startswith("linalg_") and op != "linalg_vector_norm"
    ]
    assert counter.by_op["bmm"] + counter.by_op["baddbmm"] >= DEFAULT_POLAR_STEPS


def test_tf32_is_off_inside_and_the_setting_restored(gen):
    x = with_spectrum(24, 16, 2, gen).float()
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        value_and_grad(x)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize(
    ("x", "steps", "message"),
    [
        (torch.ones(3), 30, r"\(\.\.\., m, n\)"),
        (torch.ones(3, 3), 0, "steps must be a positive int"),
        (torch.ones(3, 3), True, "steps must be a positive int"),
    ],
)
def test_bad_arguments_are_named(x, steps, message):
    with pytest.raises(ValueError, match=message):
        nuclear_norm_polar(x, steps)
