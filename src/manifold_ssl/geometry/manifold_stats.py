"""Statistics of manifolds: subspace angles, shared variance, centroid similarity, packing.

Yerxa et al. Sec. 3.3 and App. E.3 (Fig. 4–5: similarity distributions for manifolds of the
same vs different classes; Eq. 3: the centroid-norm identity); CLAMP Sec. 5 (neighbour count and
sub-manifold size) and Sec. 6 (orientation similarity, centroid distances). Inputs are
manifolds ``X`` (P, m, N): P manifolds of m points in N dimensions.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "centroid_norm_identity",
    "manifold_similarities",
    "packing_statistics",
    "split_by_class",
]


def _manifolds(X: object) -> np.ndarray:
    arr = (
        X.detach().cpu().double().numpy()
        if isinstance(X, torch.Tensor)
        else np.asarray(X, dtype=np.float64)
    )
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(
            f"X must be (P, m, N) with P >= 2 manifolds of m >= 2 points, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("X contains NaN or Inf values")
    return arr


def _subspaces(arr: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Top principal directions (P, N, k) of each centred manifold and its total variance."""
    centred = arr - arr.mean(axis=1, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt (P, min(m,N), N)
    k = min(n_components, vt.shape[1])
    return np.transpose(vt[:, :k], (0, 2, 1)), (s**2).sum(axis=1)


def manifold_similarities(X: object, n_components: int = 5) -> dict[str, np.ndarray]:
    """Pairwise statistics for all pairs i < j of manifolds (arrays of length P(P−1)/2):

    * ``centroid_cosine``: cosine similarity of the two centroids;
    * ``subspace_cosine``: mean cosine of the principal angles between the manifolds' top
      ``n_components`` principal subspaces;
    * ``shared_variance``: fraction of manifold i's variance inside manifold j's subspace,
      symmetrised (mean of both directions);
    * ``orientation``: |cos| between the leading principal axes (CLAMP Sec. 6);
    * ``centroid_distance``: Euclidean distance between centroids;
    and ``pairs`` (n, 2) with the indices.
    """
    arr = _manifolds(X)
    P = arr.shape[0]
    cent = arr.mean(axis=1)
    U, total = _subspaces(arr, n_components)
    i, j = np.triu_indices(P, k=1)
    cn = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-300)
    centroid_cos = (cn[i] * cn[j]).sum(axis=1)
    cross = np.einsum("pnk,qnl->pqkl", U, U)  # (P, P, k, k)
    angles = np.linalg.svd(cross[i, j], compute_uv=False)  # cosines of principal angles
    centred = arr - arr.mean(axis=1, keepdims=True)
    proj = np.einsum("pmn,qnk->pqmk", centred, U)  # manifold p in subspace q
    inside = (proj**2).sum(axis=(2, 3)) / np.maximum(total[:, None], 1e-300)  # (P, P)
    return {
        "pairs": np.stack([i, j], axis=1),
        "centroid_cosine": centroid_cos,
        "subspace_cosine": np.clip(angles, 0, 1).mean(axis=1),
        "shared_variance": 0.5 * (inside[i, j] + inside[j, i]),
        "orientation": np.abs((U[i, :, 0] * U[j, :, 0]).sum(axis=1)),
        "centroid_distance": np.linalg.norm(cent[i] - cent[j], axis=1),
    }


def split_by_class(
    stats: dict[str, np.ndarray], labels: object
) -> dict[str, dict[str, np.ndarray]]:
    """``{"same": {...}, "different": {...}}``: the pair statistics of same-class and
    different-class manifold pairs (Yerxa Fig. 4–5)."""
    y = np.asarray(labels)
    pairs = stats["pairs"]
    same = y[pairs[:, 0]] == y[pairs[:, 1]]
    out: dict[str, dict[str, np.ndarray]] = {"same": {}, "different": {}}
    for key, value in stats.items():
        if key != "pairs":
            out["same"][key] = value[same]
            out["different"][key] = value[~same]
    return out


def packing_statistics(
    z: object, r_s: float = 7.0, convention: str = "paper"
) -> dict[str, np.ndarray]:
    """CLAMP Sec. 5: each sub-manifold's size and its neighbour count. ``z`` is (B, m, D).

    After global centring and normalisation, sub-manifold i has centroid q_i and size
    s_i = sqrt(Σ_k ‖z_ik − q_i‖² / m²); its radius is r_i = r_s · s_i (Algorithm 1).
    ``convention="paper"`` counts the others it overlaps, ‖q_i − q_j‖ < r_i + r_j;
    ``convention="official"`` counts the pairs the published objective (``clamp_loss``'s
    default form) counts as overlapping: radii r_s·sqrt(Σ_k ‖z_ik − q_i‖² / ((m − 1)·min(D, m))),
    reach r_i + r_j + 10⁻⁶ capped at 1.5, pairs closer than 10⁻³ left out. On the unit sphere
    (distances ≤ 2) the paper's count cannot fall while r_i + r_j > 2, i.e. sizes above
    1/r_s (0.14 at r_s = 7); the official objective separates pairs to its capped reach, so
    its count falls as training packs them. ``convention="code"`` follows the published
    analysis code (guanming-zhang/clamp), which compares with s_i + s_j (no r_s) and counts the
    sub-manifold itself.
    """
    if convention not in ("paper", "official", "code"):
        raise ValueError(f"convention must be 'paper', 'official' or 'code', got {convention!r}")
    arr = torch.as_tensor(_manifolds(z))
    b, m, dim = arr.shape
    zt = torch.nn.functional.normalize(arr - arr.reshape(b * m, -1).mean(0), dim=-1)
    q = zt.mean(dim=1)
    spread = ((zt - q.unsqueeze(1)) ** 2).sum(dim=(1, 2))
    size = torch.sqrt(spread / m / m)
    distance = torch.cdist(q, q)
    if convention == "official":
        radius = r_s * torch.sqrt(spread / (m - 1) / min(dim, m))
        reach = (radius.unsqueeze(1) + radius.unsqueeze(0) + 1e-6).clamp_max(1.5)
        overlap = (distance < reach) & (distance > 1e-3) & ~torch.eye(b, dtype=torch.bool)
    else:
        radius = r_s * size
        one = radius if convention == "paper" else size
        overlap = distance < one.unsqueeze(1) + one.unsqueeze(0)
        if convention == "paper":
            overlap &= ~torch.eye(b, dtype=torch.bool)
    return {
        "radius": radius.numpy(),
        "size": size.numpy(),
        "neighbours": overlap.sum(dim=1).numpy(),
        "centroid_norm": torch.linalg.vector_norm(q, dim=1).numpy(),
    }


def centroid_norm_identity(z: object) -> tuple[np.ndarray, np.ndarray]:
    """Both sides of Yerxa Eq. 3 for unit-normalised views ``z`` (B, K, D):
    ``‖c_b‖²`` and ``1/K + (2/K²) Σ_{k<l} z_k·z_l``."""
    arr = torch.nn.functional.normalize(torch.as_tensor(_manifolds(z)), dim=-1)
    k = arr.shape[1]
    lhs = (arr.mean(dim=1) ** 2).sum(dim=1)
    gram = arr @ arr.transpose(1, 2)
    off = (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)) / 2
    return lhs.numpy(), (1 / k + 2 / k**2 * off).numpy()
