"""Independent float64 NumPy/SciPy references, written from the papers' formulas.

Deliberately naive (loops, full SVDs, ``scipy.linalg.logm``) and sharing no code with
``manifold_ssl``. ``numerical_grad`` differentiates them by central differences, so the
gradient checks are independent of autograd too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg as sla


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def mmcr(z: np.ndarray, lmbda: float = 0.0, z_momentum: np.ndarray | None = None) -> float:
    """Yerxa App. B pseudocode: normalise, centroids, −Σσ(C) + λ Σ_b Σσ(Z_b) / B."""
    if z_momentum is not None:
        z = np.concatenate([z, z_momentum], axis=1)
    z = _unit(z)
    c = z.mean(axis=1)
    loss = -np.linalg.svd(c, compute_uv=False).sum()
    if lmbda:
        loss += lmbda * np.mean([np.linalg.svd(zb, compute_uv=False).sum() for zb in z])
    return float(loss)


def clamp(z: np.ndarray, r_s: float = 7.0, ddof: int = 0) -> float:
    """CLAMP Algorithm 1, with explicit loops over images and pairs."""
    b, m, _ = z.shape
    c = z.reshape(b * m, -1).mean(axis=0)
    zt = _unit(z - c)
    q = [zt[i].mean(axis=0) for i in range(b)]
    r = []
    for i in range(b):
        lam = sum(np.outer(zt[i, k] - q[i], zt[i, k] - q[i]) for k in range(m)) / (m - ddof)
        r.append(r_s * np.sqrt(np.trace(lam) / m))
    total = 0.0
    for i in range(b):
        for j in range(b):
            dist = np.linalg.norm(q[i] - q[j])
            if i != j and dist < r[i] + r[j]:
                total += (1 - dist / (r[i] + r[j])) ** 2
    return float(np.log(total))


def clamp_official(z: np.ndarray, r_s: float = 7.0) -> float:
    """CLAMP as the authors' published loss computes it (see ``clamp_loss``'s docstring):
    Tr Λ / (m − 1), radius over min(D, m), reach capped at 1.5, pairs closer than 1e-3
    skipped, log(½ Σ + 1e-6); loops over images and pairs."""
    b, m, dim = z.shape
    zt = _unit(z - z.reshape(b * m, -1).mean(axis=0))
    q = [zt[i].mean(axis=0) for i in range(b)]
    r = []
    for i in range(b):
        trace = sum(np.sum((zt[i, k] - q[i]) ** 2) for k in range(m)) / (m - 1)
        r.append(r_s * np.sqrt(trace / min(dim, m) + 1e-12))
    total = 0.0
    for i in range(b):
        for j in range(b):
            dist = np.sqrt(np.sum((q[i] - q[j]) ** 2) + 1e-12)
            reach = min(r[i] + r[j] + 1e-6, 1.5)
            if i != j and 1e-3 < dist < reach:
                total += (1 - dist / reach) ** 2
    return float(np.log(0.5 * total + 1e-6))


def _logm(a: np.ndarray, order: int | None) -> np.ndarray:
    if order is None:
        return np.real(sla.logm((a + a.T) / 2))
    x = a - np.eye(len(a))
    return sum((-1) ** (k + 1) * np.linalg.matrix_power(x, k) / k for k in range(1, order + 1))


def mce(p: np.ndarray, q: np.ndarray, order: int | None = None) -> float:
    return float(np.trace(-p @ _logm(q, order) + q))


def mkl(p: np.ndarray, q: np.ndarray, order: int | None = None) -> float:
    return float(np.trace(p @ _logm(p, order) - p @ _logm(q, order) - p + q))


def matrix_entropy(a: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(a)
    lam = lam[lam > 1e-300]
    return float(-(lam * np.log(lam)).sum() + lam.sum())


def matrix_ssl(
    z1: np.ndarray, z2: np.ndarray, gamma: float = 1.0, lambd: float = 1.0, order: int | None = 4
) -> float:
    """Matrix-SSL Eq. 20–22 with C(Z1, Z2) = Z1ᵀ H_B Z2 / (B − 1) built from H_B."""
    b, d = z1.shape
    z1, z2 = _unit(z1), _unit(z2)
    h = np.eye(b) - np.ones((b, b)) / b
    cov = lambda x, y: x.T @ h @ y / (b - 1)  # noqa: E731
    reg = lambd * np.eye(d)
    uniformity = mce(np.eye(d) / d, cov(z1, z2) + reg, order)
    alignment = mkl(cov(z1, z1) + reg, cov(z2, z2) + reg, order)
    return uniformity + gamma * alignment


def matrix_ssl_official(
    p: np.ndarray,
    z: np.ndarray,
    gamma: float = 1.0,
    lambd: float = 0.5,
    mu: float = 0.5,
    order: int | None = 4,
) -> float:
    """The official form (``matrix_ssl_loss``'s docstring): C(A, B) = Aᵀ H_B B / B,
    −tr(λI log(C(p, z) + μI)) − γ tr((C(p, p) + μI) log(C(z, z) + μI))."""
    b, d = p.shape
    p, z = _unit(p), _unit(z)
    h = np.eye(b) - np.ones((b, b)) / b
    cov = lambda x, y: x.T @ h @ y / b  # noqa: E731
    eye = np.eye(d)
    uniformity = -np.trace(lambd * eye @ _logm(cov(p, z) + mu * eye, order))
    alignment = -np.trace((cov(p, p) + mu * eye) @ _logm(cov(z, z) + mu * eye, order))
    return float(uniformity + gamma * alignment)


def simclr(z: np.ndarray, temperature: float = 0.5) -> float:
    b, k, _ = z.shape
    flat = _unit(z.reshape(b * k, -1))
    owner = np.repeat(np.arange(b), k)
    losses = []
    for i in range(b * k):
        sims = np.array([flat[i] @ flat[j] / temperature for j in range(b * k)])
        denom = np.log(sum(np.exp(sims[j]) for j in range(b * k) if j != i))
        pos = [j for j in range(b * k) if j != i and owner[j] == owner[i]]
        losses.append(-np.mean([sims[p] - denom for p in pos]))
    return float(np.mean(losses))


def barlow_twins(z1: np.ndarray, z2: np.ndarray, lambd: float = 0.0051) -> float:
    def bn(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)

    c = bn(z1).T @ bn(z2) / len(z1)
    on = sum((1 - c[i, i]) ** 2 for i in range(len(c)))
    off = sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)
    return float(on + lambd * off)


def vicreg(
    z1: np.ndarray, z2: np.ndarray, sim: float = 25, std: float = 25, cov: float = 1
) -> float:
    b, d = z1.shape
    inv = np.mean((z1 - z2) ** 2)

    def var_cov(x: np.ndarray) -> tuple[float, float]:
        x = x - x.mean(0)
        s = np.sqrt(x.var(0, ddof=1) + 1e-4)
        c = x.T @ x / (b - 1)
        return float(np.mean(np.maximum(0, 1 - s))), float(
            (c**2).sum() - (np.diag(c) ** 2).sum()
        ) / d

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    return float(sim * inv + std * (v1 + v2) / 2 + cov * (c1 + c2))


def byol(p: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean(np.sum((_unit(p) - _unit(z)) ** 2, axis=1)))


def simsiam(p: np.ndarray, z: np.ndarray) -> float:
    return float(-np.mean(np.sum(_unit(p) * _unit(z), axis=1)))


def tcr(z: np.ndarray, eps: float = 0.5) -> float:
    b, d = z.shape
    zz = _unit(z).T  # (d, B) as in the paper
    return float(-0.5 * np.linalg.slogdet(np.eye(d) + d / (b * eps**2) * zz @ zz.T)[1])


def mec(z1: np.ndarray, z2: np.ndarray, eps: float = 0.5, order: int | None = 4) -> float:
    b, d = z1.shape
    m = np.eye(d) + d / (b * eps**2) * _unit(z1).T @ _unit(z2)
    tr_log = np.linalg.slogdet(m)[1] if order is None else np.trace(_logm(m, order))
    return float(-(b + d) / 2 * tr_log)


def clip(img: np.ndarray, txt: np.ndarray, scale: float = 1 / 0.07) -> float:
    logits = scale * _unit(img) @ _unit(txt).T

    def ce(lg: np.ndarray) -> float:
        return float(np.mean([-(lg[i, i] - np.log(np.exp(lg[i]).sum())) for i in range(len(lg))]))

    return (ce(logits) + ce(logits.T)) / 2


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    return float(np.mean(np.linalg.norm(_unit(x) - _unit(y), axis=1) ** alpha))


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    x = _unit(x)
    vals = [
        np.exp(-t * np.sum((x[i] - x[j]) ** 2))
        for i in range(len(x))
        for j in range(len(x))
        if i < j
    ]
    return float(np.log(np.mean(vals)))


def mce_lm(logits: np.ndarray, targets: np.ndarray, emb: np.ndarray, eps: float = 1e-4) -> float:
    e = _unit(emb)
    total = 0.0
    for lg, t in zip(logits, targets, strict=True):
        q = np.exp(lg - lg.max())
        q /= q.sum()
        ce = -np.log(q[t])
        big_q = sum(q[j] * np.outer(e[j], e[j]) for j in range(len(q))) + eps * np.eye(e.shape[1])
        total += ce + mce(np.outer(e[t], e[t]), big_q)
    return total / len(targets)


# name -> reference of the registered module with default hyperparameters (for CLAMP and
# Matrix-SSL the default is the authors' training form; their paper forms are checked against
# ``clamp`` and ``matrix_ssl`` in tests/losses/test_objectives.py)
REFERENCES: dict[str, Callable[..., float]] = {
    "mmcr": mmcr,
    "multimodal_mmcr": lambda a, b: mmcr(np.stack([a, b], axis=1)),
    "clamp": clamp_official,
    "matrix_ssl": matrix_ssl_official,
    "simclr": simclr,
    "barlow_twins": barlow_twins,
    "vicreg": vicreg,
    "byol": byol,
    "simsiam": simsiam,
    "tcr": lambda a, b: (tcr(a) + tcr(b)) / 2,
    "mec": lambda a, b: (mec(a, b) + mec(b, a)) / 2,
    "clip": clip,
    "alignment": alignment,
    "uniformity": lambda a, b: (uniformity(a) + uniformity(b)) / 2,
    "mce_lm": mce_lm,
}


def numerical_grad(
    fn: Callable[..., float], args: list[np.ndarray], index: int, h: float = 1e-6
) -> np.ndarray:
    """Central-difference gradient of ``fn(*args)`` with respect to ``args[index]``."""
    x = args[index]
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = fn(*args)
        x[idx] = old - h
        down = fn(*args)
        x[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad
