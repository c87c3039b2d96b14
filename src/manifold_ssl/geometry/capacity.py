"""Mean-field theoretic manifold capacity (MFTMA) and its empirical ground truth.

Chung, Lee & Sompolinsky, PRX 2018 (capacity, anchor points, radius and dimension, Eqs. 16–17,
28–29); Cohen, Chung, Lee & Sompolinsky, Nat. Commun. 2020 (removal of the low-rank structure
shared by the manifold centres); summarised in Yerxa et al. 2023, App. C (Eqs. 8–12) and E.1.

For P manifolds of m points in N dimensions:

1. subtract the global mean; find the K directions that carry the correlations between the
   manifold centres (minimising the residual squared correlation coefficients over K-frames,
   Riemannian gradient descent on the Stiefel manifold, K chosen where the mean residual
   |correlation| is smallest) and project every manifold onto their null space;
2. express each manifold relative to its centre, scaled by the centre's norm (κ is therefore
   relative to the centre norm), reduce it to its m-dimensional span by QR, and append the centre
   direction as a last coordinate: ``sD1`` (D + 1, m);
3. for n_t Gaussian vectors T, solve ``min ‖V − T‖² s.t. V·s ≤ −κ`` for every point s. Its dual
   is the non-negative quadratic programme ``min_{α≥0} ½ αᵀGα − (Sᵀt + κ)ᵀα`` with G = SᵀS
   (m × m). All P·n_t of them are solved together by a batched Lawson–Hanson active-set method
   (masked batched linear solves, float64), to the tolerance ``tol`` on the KKT conditions;
   the anchor point is ``S̃ = Sα / Σα`` (the argmax point when the constraint is inactive);
4. ``α_M⁻¹ = E[(T·S̃ + κ)₊² / ‖S̃‖²]``, ``R_M² = E‖δS̃‖²``, ``D_M = D · E[T̂·Ŝ]²``; overall
   capacity 1/mean(1/α_M), mean radius and dimension.

No per-sample solver call and no Python loop over samples: the reference approach solves one
QP per sample (tens of seconds for 50 manifolds); ``benchmarks/capacity.py`` compares both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "CapacityResult",
    "anchor_geometry",
    "elliptical_geometry",
    "empirical_capacity",
    "manifold_capacity",
    "point_capacity",
    "prepare_manifolds",
    "reference_alpha",
    "sample_t",
    "solve_nnqp",
]


@dataclass
class CapacityResult:
    capacity: float  # 1 / mean(1 / α_M)
    radius: float  # mean R_M
    dimension: float  # mean D_M
    center_correlation: float  # mean |correlation| between centres before removal
    n_removed: int  # K centre directions removed
    alpha: np.ndarray = field(repr=False)  # (P,)
    radii: np.ndarray = field(repr=False)  # (P,)
    dimensions: np.ndarray = field(repr=False)  # (P,)
    kappa: float = 0.0
    n_t: int = 200
    kkt_residual: float = 0.0  # largest violation of the QP's optimality conditions


def _as_array(X: object) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().double().numpy()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(
            f"X must be (P, m, N): P manifolds of m points in N dims, got shape {arr.shape}"
        )
    P, m, N = arr.shape
    if P < 2:
        raise ValueError(f"X must hold at least 2 manifolds (P >= 2), got P = {P}")
    if m < 2:
        raise ValueError(f"X must hold at least 2 points per manifold (m >= 2), got m = {m}")
    if N < 1:
        raise ValueError(f"X must have at least one feature dimension, got N = {N}")
    if not np.isfinite(arr).all():
        raise ValueError("X contains NaN or Inf values")
    return arr


# --------------------------------------------------------------------------- QP solver
def solve_nnqp(
    G: torch.Tensor, c: torch.Tensor, tol: float = 1e-10, max_iter: int | None = None
) -> tuple[torch.Tensor, float]:
    """``argmin_{α ≥ 0} ½ αᵀGα − cᵀα`` for a batch: G (b, m, m) PSD, c (b, m).

    Lawson–Hanson active set, vectorised: every iteration adds, for each unfinished problem,
    the coordinate of largest positive negative-gradient to the passive set, solves the
    passive-set system by a masked batched solve, and steps back to feasibility where needed.
    Returns α (b, m) and the largest KKT residual (max of −gradient on the zero set and
    |gradient| on the support, relative to the scale of c).
    """
    b, m = c.shape
    scale = float(c.abs().max().clamp_min(1e-300))
    ridge = 1e-12 * G.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    torch.eye(m, dtype=G.dtype, device=G.device)
    alpha = torch.zeros_like(c)
    passive = torch.zeros_like(c, dtype=torch.bool)
    todo = torch.ones(b, dtype=torch.bool, device=c.device)
    threshold = tol * scale
    for _ in range(max_iter or 3 * m + 10):
        w = c - (G @ alpha.unsqueeze(-1)).squeeze(-1)  # negative gradient
        cand = ~passive & (w > threshold)
        todo = todo & cand.any(dim=1)
        if not bool(todo.any()):
            break
        idx = torch.nonzero(todo).flatten()
        j = torch.where(cand[idx], w[idx], -math.inf).argmax(dim=1)
        passive[idx, j] = True
        Gi, ci, Pi, ai = G[idx], c[idx], passive[idx], alpha[idx]
        for _ in range(m + 1):  # inner loop: restore feasibility
            mask = Pi.unsqueeze(-1) & Pi.unsqueeze(-2)
            A = torch.where(mask, Gi, torch.zeros_like(Gi)) + torch.diag_embed(
                torch.where(Pi, ridge[idx].unsqueeze(-1), torch.ones_like(ci))
            )
            s = torch.linalg.solve(A, torch.where(Pi, ci, torch.zeros_like(ci)))
            s = torch.where(Pi, s, torch.zeros_like(s))
            bad = Pi & (s <= 0)
            step_rows = bad.any(dim=1)
            if not bool(step_rows.any()):
                ai = s
                break
            ratio = torch.where(bad, ai / (ai - s).clamp_min(1e-300), torch.full_like(s, math.inf))
            t = ratio.min(dim=1).values.clamp(0, 1).unsqueeze(-1)
            ai = torch.where(step_rows.unsqueeze(-1), ai + t * (s - ai), s)
            Pi = Pi & ~(step_rows.unsqueeze(-1) & (ai <= 1e-14 * ai.abs().amax(1, keepdim=True)))
            ai = torch.where(Pi, ai, torch.zeros_like(ai))
        alpha[idx] = ai.clamp_min(0)
        passive[idx] = Pi
    grad = (G @ alpha.unsqueeze(-1)).squeeze(-1) - c
    kkt = torch.where(alpha > 0, grad.abs(), (-grad).clamp_min(0)).max()
    return alpha, float(kkt) / scale


# --------------------------------------------------------------------------- centre structure
def _residual_correlation(X: np.ndarray) -> float:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    norms = np.where(norms > 0, norms, 1.0)
    C = (X / norms) @ (X / norms).T
    P = X.shape[0]
    return float((np.abs(C).sum() - np.trace(np.abs(C))) / (P * (P - 1)))


def _corr_cost_grad(V: np.ndarray, X: np.ndarray, C: np.ndarray) -> tuple[float, np.ndarray]:
    """Cohen et al.'s cost ½ Σ_mn (C − ccᵀ)²_mn / (c0_m c0_n), c = XV, and its gradient in V."""
    c = X @ V  # (P, K)
    R = C - c @ c.T
    c0 = np.diag(R).copy()
    c0 = np.where(c0 > 1e-300, c0, 1e-300)
    D = np.outer(c0, c0)
    F = R * R / D
    cost = 0.5 * F.sum()
    Gm = R / D
    dc = -2 * Gm @ c + 2 * c * (F.sum(axis=1) / c0)[:, None]
    return float(cost), X.T @ dc


def _stiefel_descent(V: np.ndarray, X: np.ndarray, C: np.ndarray, iters: int) -> np.ndarray:
    """Riemannian gradient descent with Armijo backtracking and QR retraction."""
    cost, g = _corr_cost_grad(V, X, C)
    step = 1.0
    for _ in range(iters):
        xi = g - V @ (0.5 * (V.T @ g + g.T @ V))  # Riemannian gradient
        gnorm = float((xi * xi).sum())
        if gnorm < 1e-20:
            break
        while step > 1e-12:
            q, r = np.linalg.qr(V - step * xi)
            q = q * np.sign(np.where(np.diag(r) == 0, 1, np.diag(r)))
            new_cost, new_g = _corr_cost_grad(q, X, C)
            if new_cost <= cost - 1e-4 * step * gnorm:
                break
            step *= 0.5
        else:
            break
        if cost - new_cost < 1e-10 * max(abs(cost), 1.0):
            V, cost, g = q, new_cost, new_g
            break
        V, cost, g = q, new_cost, new_g
        step *= 2.0
    return V


def _center_structure(
    centers: np.ndarray, rng: np.random.Generator, iters: int
) -> tuple[np.ndarray, float, int]:
    """Orthonormal directions (N, K) carrying the centre correlations, the centre correlation
    before removal, and K (Cohen et al. 2020)."""
    P, N = centers.shape
    Xb = centers - centers.mean(axis=0, keepdims=True)
    q, _ = np.linalg.qr(Xb.T)  # (N, min(N, P))
    q = q[:, : min(P - 1, q.shape[1])]
    X = Xb @ q  # (P, P-1) coordinates of the centres
    corr0 = _residual_correlation(X)
    if X.shape[1] < 2:
        return np.zeros((N, 0)), corr0, 0
    sv = np.linalg.svd(X, compute_uv=False)
    frac = np.cumsum(sv**2) / max((sv**2).sum(), 1e-300)
    max_k = min(int(np.searchsorted(frac, 0.95)) + 11, X.shape[1] - 1)
    C = X @ X.T
    best: tuple[float, np.ndarray] | None = None
    history, V1 = [], None
    for k in range(1, max_k + 1):
        s = rng.standard_normal((P, 1))
        v0 = (s.T @ X).T if V1 is None else np.concatenate([(s.T @ X).T, V1], axis=1)
        V0, _ = np.linalg.qr(v0)
        V1 = _stiefel_descent(V0, X, C, iters)
        residual = _residual_correlation(X - X @ V1 @ V1.T)
        history.append(residual)
        if best is None or residual < best[0]:
            best = (residual, V1)
        if k > 4 and history[-1] > history[-2] > history[-3] > history[-4]:
            break  # no reduction for three consecutive K
    assert best is not None
    V = best[1]
    return q @ V, corr0, V.shape[1]


# --------------------------------------------------------------------------- capacity
def prepare_manifolds(
    X: object,
    seed: int = 0,
    remove_center_structure: bool = True,
    projection_dim: int | None = None,
    center_iters: int = 100,
) -> tuple[torch.Tensor, float, int]:
    """Steps 1–2 of the module docstring: ``sD1`` (P, D+1, m) float64, the centre correlation
    before removal, and the number K of centre directions removed."""
    arr = _as_array(X)
    rng = np.random.default_rng(seed)
    P, m, N = arr.shape
    if projection_dim is not None and N > projection_dim:
        proj = rng.standard_normal((N, projection_dim)) / math.sqrt(projection_dim)
        arr = arr @ proj
        N = projection_dim
    arr = arr - arr.reshape(-1, N).mean(axis=0)  # global mean
    centers = arr.mean(axis=1)  # (P, N)
    if remove_center_structure:
        V, corr0, k = _center_structure(centers, rng, center_iters)
        arr = arr - (arr @ V) @ V.T
    else:
        corr0, k = _residual_correlation(centers - centers.mean(0)), 0
    centers = arr.mean(axis=1, keepdims=True)  # (P, 1, N) in the null space
    norms = np.linalg.norm(centers, axis=2, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError("a manifold centre is at the origin after centring; capacity is undefined")
    S = (arr - centers) / norms  # (P, m, N) relative to the centre, in centre-norm units
    if N > m:  # reduce each manifold to its m-dimensional span (exact for the QP)
        q, _ = np.linalg.qr(np.transpose(S, (0, 2, 1)))  # (P, N, m)
        S = S @ q  # (P, m, m)
    sD1 = np.concatenate([S, np.ones((P, m, 1))], axis=2)  # (P, m, D+1)
    return torch.from_numpy(sD1).transpose(1, 2).contiguous(), corr0, k


def sample_t(sD1: torch.Tensor, n_t: int, seed: int) -> torch.Tensor:
    """(P, n_t, D+1) standard Gaussian vectors T, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    P, D1, _ = sD1.shape
    return torch.randn(P, n_t, D1, generator=gen, dtype=torch.float64)


def anchor_geometry(
    sD1: torch.Tensor, t: torch.Tensor, kappa: float, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Steps 3–4: per-manifold capacity α_M, radius R_M and dimension D_M, and the KKT residual."""
    P, D1, m = sD1.shape
    n_t, D = t.shape[1], D1 - 1
    G = sD1.transpose(1, 2) @ sD1  # (P, m, m)
    proj = t @ sD1  # (P, n_t, m): t·s for every point
    c = (proj + kappa).reshape(P * n_t, m)
    Gb = G.unsqueeze(1).expand(P, n_t, m, m).reshape(P * n_t, m, m)
    alpha, kkt = solve_nnqp(Gb, c, tol)
    alpha = alpha.view(P, n_t, m)
    total = alpha.sum(dim=2, keepdim=True)  # (P, n_t, 1)
    anchor = (alpha @ sD1.transpose(1, 2)) / total.clamp_min(1e-300)  # (P, n_t, D+1)
    points = sD1.transpose(1, 2)  # (P, m, D+1)
    argmax = torch.gather(points, 1, proj.argmax(dim=2, keepdim=True).expand(-1, -1, D1))
    anchor = torch.where(total <= 1e-12, argmax, anchor)  # constraint inactive: V = T

    ts = (t * anchor).sum(dim=2) + kappa  # (P, n_t)
    s_sq = (anchor * anchor).sum(dim=2)
    inv_alpha = (ts.clamp_min(0) ** 2 / s_sq.clamp_min(1e-300)).mean(dim=1)  # (P,) = E[F(T)]
    ds = anchor[..., :D] - anchor[..., :D].mean(dim=1, keepdim=True)
    radii = torch.sqrt((ds * ds).sum(dim=2).mean(dim=1))
    t_hat = torch.nn.functional.normalize(t[..., :D], dim=2)
    s_norm = torch.linalg.vector_norm(anchor[..., :D], dim=2, keepdim=True)
    s_hat = torch.where(s_norm > 1e-12, anchor[..., :D] / s_norm.clamp_min(1e-300), 0.0)
    dims = D * (t_hat * s_hat).sum(dim=2).mean(dim=1) ** 2
    return (1.0 / inv_alpha).numpy(), radii.numpy(), dims.numpy(), kkt


def manifold_capacity(
    X: object,
    kappa: float = 0.0,
    n_t: int = 200,
    seed: int = 0,
    *,
    remove_center_structure: bool = True,
    projection_dim: int | None = None,
    tol: float = 1e-10,
    center_iters: int = 100,
) -> CapacityResult:
    """Mean-field manifold capacity, radius and dimension of ``X`` (P, m, N), NumPy or torch.

    Args:
        X: P manifolds of m points in N dims (e.g. the (B, K, D) views of the objectives).
        kappa: margin κ >= 0, relative to each centre's norm.
        n_t: Gaussian samples T per manifold.
        seed: seeds the T samples, the random projection and the centre-structure search.
        remove_center_structure: remove the low-rank structure shared by the centres first.
        projection_dim: if set and N exceeds it, project onto this many random Gaussian
            directions first (Yerxa App. E.1 uses 5,000 for wide layers).
        tol: KKT tolerance of the batched QP solver, relative to the problem scale.
        center_iters: gradient steps per K in the centre-structure search.
    """
    _as_array(X)
    if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
    if isinstance(n_t, bool) or not isinstance(n_t, int) or n_t < 1:
        raise ValueError(f"n_t must be a positive integer, got {n_t!r}")
    sD1, corr0, k = prepare_manifolds(
        X, seed, remove_center_structure, projection_dim, center_iters
    )
    a, r, d, kkt = anchor_geometry(sD1, sample_t(sD1, n_t, seed), kappa, tol)
    return CapacityResult(
        capacity=float(1.0 / np.mean(1.0 / a)),
        radius=float(r.mean()),
        dimension=float(d.mean()),
        center_correlation=corr0,
        n_removed=k,
        alpha=a,
        radii=r,
        dimensions=d,
        kappa=float(kappa),
        n_t=n_t,
        kkt_residual=kkt,
    )


def reference_alpha(sD1: np.ndarray, t: np.ndarray, kappa: float = 0.0) -> float:
    """α_M of one manifold the slow, straightforward way, for checking the batched solver: one
    generic QP solve (SciPy's SLSQP on ``min ‖V − T‖² s.t. V·s ≤ −κ``) per sample T, and
    ``α_M⁻¹ = mean F(T) = mean ‖V − T‖²`` (Yerxa Eq. 8). ``sD1`` (D+1, m), ``t`` (n_t, D+1)."""
    from scipy.optimize import minimize

    S = np.asarray(sD1, dtype=np.float64)
    F = []
    for tv in np.asarray(t, dtype=np.float64):
        if (tv @ S).max() + kappa < 0:  # V = T is feasible
            F.append(0.0)
            continue
        cons = {"type": "ineq", "fun": lambda v: -(v @ S) - kappa, "jac": lambda v: -S.T}
        res = minimize(
            lambda v, tv=tv: ((v - tv) ** 2).sum(),
            tv,
            jac=lambda v, tv=tv: 2 * (v - tv),
            constraints=[cons],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        F.append(float(((res.x - tv) ** 2).sum()))
    return 1.0 / float(np.mean(F))


def point_capacity(kappa: float) -> float:
    """Capacity of point manifolds at margin κ (Gardner 1988): 1 / ∫_{−κ}^∞ (t + κ)² Dt."""
    from scipy.stats import norm

    integral = (1 + kappa**2) * norm.cdf(kappa) + kappa * norm.pdf(kappa)
    return float(1.0 / integral)


def elliptical_geometry(X: object) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical radius ``√Σλᵢ²`` and dimension ``(Σλᵢ)²/Σλᵢ²`` per manifold (Yerxa Eqs. 1, 12).

    ``λᵢ²`` are the eigenvalues of the covariance of each manifold's points relative to its
    centre, in units of the centre's norm (so λᵢ are singular values / √m of the centred,
    normalised points). Returns (radii (P,), dimensions (P,)).
    """
    arr = _as_array(X)
    centers = arr.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centers, axis=2, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError(
            "a manifold centre is at the origin; the radius relative to it is undefined"
        )
    S = (arr - centers) / norms
    lam = np.linalg.svd(S, compute_uv=False) / math.sqrt(arr.shape[1])  # (P, min(m, N))
    sq = (lam**2).sum(axis=1)
    radii = np.sqrt(sq)
    dims = np.where(sq > 0, lam.sum(axis=1) ** 2 / np.where(sq > 0, sq, 1), 0.0)
    return radii, dims


# --------------------------------------------------------------------------- simulation
def _separable(points: np.ndarray, labels: np.ndarray) -> bool:
    """Is there w with y·(w·x) >= 1 for every point? (homogeneous linear separability, an LP)"""
    from scipy.optimize import linprog

    A = -(labels[:, None] * points)
    res = linprog(
        np.zeros(points.shape[1]),
        A_ub=A,
        b_ub=-np.ones(len(points)),
        bounds=[(None, None)] * points.shape[1],
        method="highs",
    )
    return res.status == 0


def empirical_capacity(
    X: object, n_dims: list[int] | None = None, n_dichotomies: int = 50, seed: int = 0
) -> dict[str, object]:
    """Capacity by simulation: random ±1 labels for whole manifolds, homogeneous linear
    separability in random n-dimensional projections, and the P/n at which half of the
    dichotomies are separable (interpolated). Returns ``capacity``, the n values and the
    separable fractions."""
    arr = _as_array(X)
    P, m, N = arr.shape
    rng = np.random.default_rng(seed)
    if n_dims is None:
        n_dims = sorted({max(1, round(P / a)) for a in np.linspace(0.6, 3.0, 13)})
    fractions = []
    for n in n_dims:
        ok = 0
        for _ in range(n_dichotomies):
            proj = rng.standard_normal((N, n))
            pts = (arr @ proj).reshape(P * m, n)
            y = np.repeat(rng.choice([-1.0, 1.0], size=P), m)
            ok += _separable(pts, y)
        fractions.append(ok / n_dichotomies)
    ns, fr = np.array(n_dims, dtype=float), np.array(fractions)
    order = np.argsort(ns)
    ns, fr = ns[order], fr[order]
    cross = np.flatnonzero((fr[:-1] < 0.5) & (fr[1:] >= 0.5))
    if len(cross) == 0:
        n_c = float("nan")
    else:
        i = cross[0]
        n_c = ns[i] + (0.5 - fr[i]) * (ns[i + 1] - ns[i]) / (fr[i + 1] - fr[i])
    return {
        "capacity": P / n_c,
        "n": ns.tolist(),
        "separable_fraction": fr.tolist(),
        "n_critical": n_c,
    }
