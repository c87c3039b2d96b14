"""Spectral core and matrix information quantities: closed forms, identities, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference
import scipy.linalg as sla
import torch

from manifold_ssl.geometry import (
    effective_rank,
    matrix_cross_entropy,
    matrix_entropy,
    matrix_kl,
    matrix_log,
    nuclear_norm,
    nuclear_norm_bound,
    participation_ratio,
    percent_error,
)
from manifold_ssl.losses import tcr_loss

f64 = torch.float64


def random_psd(n: int, gen: torch.Generator, ridge: float = 0.1) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=f64)
    return a @ a.T / n + ridge * torch.eye(n, dtype=f64)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (6, 6), (3, 4, 7), (2, 3, 8, 2)])
def test_nuclear_norm_value_and_gradient_match_svd(shape, gen):
    x = torch.randn(*shape, generator=gen, dtype=f64, requires_grad=True)
    value = nuclear_norm(x)
    u, s, vh = torch.linalg.svd(x.detach(), full_matrices=False)
    torch.testing.assert_close(value, s.sum(-1))
    value.sum().backward()
    torch.testing.assert_close(x.grad, u @ vh)


def test_nuclear_norm_gradient_at_rank_deficiency_is_the_minimum_norm_subgradient(gen):
    # rank 2 in a 6x8 matrix: four zero singular values
    x = torch.randn(6, 2, generator=gen, dtype=f64) @ torch.randn(2, 8, generator=gen, dtype=f64)
    x.requires_grad_(True)
    nuclear_norm(x).backward()
    u, _, vh = torch.linalg.svd(x.detach(), full_matrices=False)
    expected = u[:, :2] @ vh[:2]
    torch.testing.assert_close(x.grad, expected)


def test_nuclear_norm_gradient_at_repeated_and_zero_singular_values():
    x = torch.eye(4, 6, dtype=torch.float32, requires_grad=True)  # four equal singular values
    nuclear_norm(x).backward()
    torch.testing.assert_close(x.grad, torch.eye(4, 6))
    z = torch.zeros(3, 5, requires_grad=True)
    value = nuclear_norm(z)
    value.backward()
    assert value.item() == 0.0 and torch.equal(z.grad, torch.zeros(3, 5))


def test_nuclear_norm_under_autocast_keeps_float32_spectrum(gen):
    x = torch.randn(64, 32, generator=gen)
    exact = torch.linalg.svdvals(x.double()).sum()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = nuclear_norm(x)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), exact, rtol=1e-6, atol=1e-6)


def test_nuclear_norm_bound_and_percent_error():
    assert nuclear_norm_bound(100, 10) == pytest.approx(math.sqrt(1000))
    assert nuclear_norm_bound(10, 100) == 10.0
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="P"):
            nuclear_norm_bound(bad, 4)
    # orthonormal rows reach the bound (P <= D); a tight frame reaches it for P > D
    assert percent_error(torch.eye(5, 8)).item() == pytest.approx(0.0, abs=1e-12)
    frame = torch.cat([torch.eye(4), torch.eye(4), torch.eye(4)])  # P = 12 > D = 4
    assert percent_error(frame).item() == pytest.approx(0.0, abs=1e-12)
    # identical rows: ‖C‖* = √P, the worst case
    same = torch.ones(9, 3) / math.sqrt(3)
    assert percent_error(same).item() == pytest.approx(1 - 3 / math.sqrt(27))


def test_effective_rank_closed_forms(gen):
    assert effective_rank(torch.eye(7)).item() == pytest.approx(7.0)
    rank1 = torch.outer(torch.randn(5, generator=gen), torch.randn(4, generator=gen))
    assert effective_rank(rank1).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all-zero"):
        effective_rank(torch.zeros(3, 3))


def test_proposition_3_6_effective_rank_and_matrix_entropy(gen):
    """erank(ZZᵀ/B) = exp(ME − 1) and ME = −MKL(· ‖ I/d) + log d + 1 for unit-norm rows."""
    b, d = 40, 6
    z = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=f64), dim=1)
    a = z.T @ z / b  # trace 1
    me = matrix_entropy(a)
    assert effective_rank(a).item() == pytest.approx(math.exp(me.item() - 1), rel=1e-10)
    kl = matrix_kl(a, torch.eye(d, dtype=f64) / d)
    assert me.item() == pytest.approx(-kl.item() + math.log(d) + 1, rel=1e-10)
    assert me.item() == pytest.approx(reference.matrix_entropy(a.numpy()), rel=1e-10)


def test_matrix_log_exact_and_taylor(gen):
    a = random_psd(6, gen)
    torch.testing.assert_close(matrix_log(a), torch.from_numpy(np.real(sla.logm(a.numpy()))))
    near_identity = torch.eye(6, dtype=f64) + 0.05 * (a - a.mean())
    exact = matrix_log(near_identity)
    errors = [(matrix_log(near_identity, order=k) - exact).abs().max().item() for k in (1, 2, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-9
    with pytest.raises(ValueError, match="order"):
        matrix_log(a, order=0)
    with pytest.raises(ValueError, match="square"):
        matrix_log(torch.ones(3, 4))


def test_matrix_kl_and_cross_entropy_identities(gen):
    p, q = random_psd(5, gen), random_psd(5, gen)
    assert matrix_kl(p, p).item() == pytest.approx(0.0, abs=1e-12)
    assert matrix_kl(p, q).item() > 0
    torch.testing.assert_close(matrix_cross_entropy(p, q), matrix_kl(p, q) + matrix_entropy(p))
    assert matrix_kl(p, q).item() == pytest.approx(reference.mkl(p.numpy(), q.numpy(), None))
    assert matrix_cross_entropy(p, q).item() == pytest.approx(reference.mce(p.numpy(), q.numpy()))
    # Prop. 4.2: MCE(P, ·) is minimised at Q = P
    for scale in (0.9, 1.1):
        assert matrix_cross_entropy(p, scale * p) > matrix_cross_entropy(p, p)


def test_matrix_log_gradient_finite_and_correct_at_repeated_eigenvalues(gen):
    p = random_psd(4, gen)
    q = (2.0 * torch.eye(4, dtype=f64)).requires_grad_(True)  # one eigenvalue, four times
    matrix_cross_entropy(p, q).backward()
    # d/dQ tr(−P log Q + Q) at Q = 2I is −P/2 + I
    torch.testing.assert_close(q.grad, -p / 2 + torch.eye(4, dtype=f64))


def test_matrix_log_gradient_matches_finite_differences(gen):
    p, q0 = random_psd(4, gen), random_psd(4, gen)
    q = q0.clone().requires_grad_(True)
    matrix_cross_entropy(p, q).backward()

    def f(qn: np.ndarray) -> float:
        return reference.mce(p.numpy(), (qn + qn.T) / 2)

    num = reference.numerical_grad(f, [q0.numpy().copy()], 0)
    np.testing.assert_allclose(q.grad.numpy(), num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("lam_d", [0.05, 0.5, 2.0])
def test_theorem_4_4_corrected_relation_to_tcr(lam_d, gen):
    """UMCE = (1+dλ)(−log λ + 1 + (2/d)·L_TCR), UMKL = (1+dλ)(log((1+dλ)/(dλ)) + (2/d)·L_TCR).

    The printed theorem has 2·L_TCR; derivation in ``manifold_ssl.losses.coding_rate.tcr_loss``.
    """
    b, d = 50, 8
    lam = lam_d / d
    eps = math.sqrt(lam * d)  # λ = ε²/d
    z = torch.randn(b, d, generator=gen, dtype=f64)
    zn = torch.nn.functional.normalize(z, dim=1)
    p = (1 / d + lam) * torch.eye(d, dtype=f64)
    q = zn.T @ zn / b + lam * torch.eye(d, dtype=f64)
    tcr = tcr_loss(z, eps=eps).item()
    umce = matrix_cross_entropy(p, q).item()
    umkl = matrix_kl(p, q).item()
    assert umce == pytest.approx((1 + d * lam) * (-math.log(lam) + 1 + 2 / d * tcr), rel=1e-10)
    assert umkl == pytest.approx(
        (1 + d * lam) * (math.log((1 + d * lam) / (d * lam)) + 2 / d * tcr), rel=1e-10
    )
    printed = (1 + d * lam) * (-math.log(lam) + 1 + 2 * tcr)
    assert abs(printed - umce) > 1e-3 * abs(umce)


def test_participation_ratio(gen):
    one_direction = torch.randn(200, 1, generator=gen) * torch.tensor([[1.0, 2.0, -1.0]])
    assert participation_ratio(one_direction).item() == pytest.approx(1.0)
    spectrum = torch.tensor([3.0, 2.0, 1.0], dtype=f64)
    x = torch.linalg.qr(torch.randn(1000, 3, generator=gen, dtype=f64))[0] * spectrum.sqrt()
    x = x - x.mean(0)
    lam = torch.linalg.svdvals(x) ** 2
    assert participation_ratio(x).item() == pytest.approx((lam.sum() ** 2 / (lam**2).sum()).item())
    with pytest.raises(ValueError, match="features"):
        participation_ratio(torch.randn(1, 3))
