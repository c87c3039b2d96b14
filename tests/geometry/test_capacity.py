"""Mean-field manifold capacity against theory (Cover, Gardner), closed forms and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from manifold_ssl.geometry.capacity import (
    elliptical_geometry,
    empirical_capacity,
    manifold_capacity,
    point_capacity,
    solve_nnqp,
)


def clouds(P=40, m=10, N=200, radius=0.1, dim=None, seed=0) -> np.ndarray:
    """P Gaussian point clouds with random unit-norm centres; radius relative to the centre."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((P, 1, N))
    centers /= np.linalg.norm(centers, axis=2, keepdims=True)
    d = dim or N
    basis = np.linalg.qr(rng.standard_normal((N, d)))[0]  # (N, d)
    noise = rng.standard_normal((P, m, d)) @ basis.T * (radius / math.sqrt(d))
    return centers + noise


def test_nnqp_solver_matches_nnls():
    rng = np.random.default_rng(1)
    S = rng.standard_normal((200, 6, 9))  # 200 problems: 9 points in 6 dims
    t = rng.standard_normal((200, 6))
    G = torch.from_numpy(np.transpose(S, (0, 2, 1)) @ S)
    c = torch.from_numpy(np.einsum("bdm,bd->bm", S, t))
    alpha, kkt = solve_nnqp(G, c)
    assert kkt < 1e-9
    for i in range(200):
        ref, _ = nnls(S[i], t[i])
        np.testing.assert_allclose(S[i] @ alpha[i].numpy(), S[i] @ ref, atol=1e-8)


def test_point_manifolds_have_cover_capacity_two():
    X = np.repeat(clouds(P=60, radius=0.0)[:, :1], 5, axis=1)  # m identical points each
    result = manifold_capacity(X, n_t=2000)
    assert result.capacity == pytest.approx(2.0, rel=0.02)
    assert result.radius == pytest.approx(0.0, abs=1e-9) and result.dimension == 0.0


@pytest.mark.parametrize("kappa", [0.25, 1.0])
def test_point_manifolds_with_margin_match_gardner(kappa):
    X = np.repeat(clouds(P=60, radius=0.0)[:, :1], 4, axis=1)
    result = manifold_capacity(X, kappa=kappa, n_t=2000)
    assert result.capacity == pytest.approx(point_capacity(kappa), rel=0.02)
    assert point_capacity(0.0) == pytest.approx(2.0)


def test_theory_agrees_with_simulation_on_small_clouds():
    X = clouds(P=40, m=6, N=120, radius=0.3, seed=3)
    theory = manifold_capacity(X, n_t=500).capacity
    sim = empirical_capacity(X, n_dims=list(range(24, 46, 2)), n_dichotomies=60, seed=4)
    assert sim["separable_fraction"][0] < 0.5 < sim["separable_fraction"][-1]
    assert theory == pytest.approx(sim["capacity"], rel=0.06), (theory, sim)


def test_capacity_falls_with_radius_and_dimension():
    by_radius = [
        manifold_capacity(clouds(P=30, radius=r, seed=5), n_t=100).capacity
        for r in (0.05, 0.3, 1.0, 3.0)
    ]
    assert by_radius == sorted(by_radius, reverse=True)
    by_dim = [
        manifold_capacity(clouds(P=30, m=40, radius=0.8, dim=d, seed=6), n_t=100).capacity
        for d in (1, 4, 16)
    ]
    assert by_dim == sorted(by_dim, reverse=True)


def test_elliptical_radius_and_dimension_equal_closed_forms():
    rng = np.random.default_rng(7)
    P, m, N = 5, 16, 12
    axes = np.array([0.5, 0.3, 0.2, 0.1])
    q = np.linalg.qr(rng.standard_normal((m, 4)) - 0)[0]  # orthonormal columns
    q -= q.mean(axis=0)  # zero mean...
    q = np.linalg.qr(q)[0] * math.sqrt(m)  # ...and second moments exactly I (zᵀz/m = I)
    X = np.zeros((P, m, N))
    for p in range(P):
        center = rng.standard_normal(N)
        center *= 2.0 / np.linalg.norm(center)  # centre norm 2
        basis = np.linalg.qr(rng.standard_normal((N, 4)))[0]
        X[p] = center + (q * (2.0 * axes)) @ basis.T
    radii, dims = elliptical_geometry(X)
    np.testing.assert_allclose(radii, math.sqrt((axes**2).sum()), rtol=1e-10)
    np.testing.assert_allclose(dims, axes.sum() ** 2 / (axes**2).sum(), rtol=1e-10)


def test_same_seed_same_result_and_torch_input():
    X = clouds(P=12, m=8, N=40, radius=0.5, seed=8)
    a = manifold_capacity(X, seed=3)
    b = manifold_capacity(torch.from_numpy(X).float(), seed=3)
    c = manifold_capacity(X, seed=4)
    assert a.capacity == manifold_capacity(X, seed=3).capacity
    assert b.capacity == pytest.approx(a.capacity, rel=1e-5)
    assert c.capacity != a.capacity
    assert a.alpha.shape == a.radii.shape == a.dimensions.shape == (12,)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros((1, 5, 3)), "P >= 2"),
        (np.zeros((4, 1, 3)), "m >= 2"),
        (np.zeros((4, 5)), r"\(P, m, N\)"),
        (np.full((4, 5, 3), np.nan), "NaN"),
    ],
)
def test_bad_inputs(X, message):
    with pytest.raises(ValueError, match=message):
        manifold_capacity(X)
    with pytest.raises(ValueError, match="kappa"):
        manifold_capacity(clouds(P=4, N=8), kappa=-1.0)


def test_fifty_manifolds_of_thirty_points_in_500_dims_solve_exactly():
    # the size benchmarks/capacity.py times (its 2 s target); speed is not asserted here
    X = clouds(P=50, m=30, N=500, radius=0.5, seed=9)
    result = manifold_capacity(X, n_t=200)
    assert result.kkt_residual < 1e-8 and result.n_removed >= 1


@pytest.mark.parametrize("kappa", [0.0, 0.3])
def test_anchor_solution_matches_a_generic_qp_per_sample(kappa):
    """α_M⁻¹ = E‖V − T‖² with V from SciPy's SLSQP on the primal, one sample at a time."""
    from manifold_ssl.geometry.capacity import (
        anchor_geometry,
        prepare_manifolds,
        reference_alpha,
        sample_t,
    )

    sD1, _, _ = prepare_manifolds(clouds(P=6, m=8, N=30, radius=0.8, seed=10), seed=0)
    t = sample_t(sD1, 25, seed=1)
    alpha, _, _, kkt = anchor_geometry(sD1, t, kappa)
    assert kkt < 1e-8
    for p in range(3):
        assert alpha[p] == pytest.approx(
            reference_alpha(sD1[p].numpy(), t[p].numpy(), kappa), rel=1e-5
        )
