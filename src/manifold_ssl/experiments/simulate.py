"""Perfectly uniform centroids: nuclear norm against its bound (Schaeffer et al. 2024, App. B).

For each (P, D) and repeat, P centroids are drawn uniformly on the unit sphere of R^D (normalised
Gaussians, as the paper's App. B code), and their nuclear norm ``‖C‖*`` is compared with the
bound ``√(P·min(P, D))`` of Prop. 3.3 through the pretraining percent error (Eq. 4). Fig. 2: the
percent error peaks at P = D and falls on either side (the Marchenko–Pastur spectrum of a square
random matrix is the least flat).

Only the spectrum of the smaller side is computed: the eigenvalues of the min(P, D)-square Gram
matrix, in float64. The paper's code takes a full SVD of the P×D matrix, which at P = D = 5,000
takes minutes here, against well under a second for a 10,000×1,000 Gram.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._keys import device_name, key, non_empty_list_of, positive
from ..geometry.spectral import nuclear_norm_bound

__all__ = [
    "SimulateConfig",
    "SimulationResult",
    "grid_values",
    "plot_simulation",
    "simulate_uniform",
]


def grid_values(text: str) -> list[int]:
    """``"16,32,64"``; ``"LO:HI"`` powers of two from LO; ``"LO:HI:N"`` N log-spaced integers."""
    try:
        parts = text.split(":")
        if len(parts) == 1:
            values = [int(v) for v in text.split(",") if v]
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
            values = [lo * 2**k for k in range(64) if lo * 2**k <= hi] if lo >= 1 else []
        elif len(parts) == 3:
            lo, hi, n = int(parts[0]), int(parts[1]), int(parts[2])
            if lo < 1 or hi < lo or n < 1:
                raise ValueError
            values = sorted({round(v) for v in np.geomspace(lo, hi, n)})
        else:
            raise ValueError
        if not values or min(values) < 1:
            raise ValueError
        return values
    except ValueError:
        raise ValueError(
            f"expected positive integers 'A,B,C', a powers-of-two range 'LO:HI', or N log-spaced "
            f"values 'LO:HI:N', got {text!r}"
        ) from None


@dataclass
class SimulateConfig:
    """The settings of ``manifold-ssl simulate`` (``--P 16:8192`` or ``--simulate.P=16:8192``):
    the keywords of :func:`simulate_uniform`."""

    P: list[int] = key(
        help="numbers of centroids: '16,64,256', powers of two 'LO:HI', or N log-spaced values "
        "'LO:HI:N' (the paper's grid is 10:10000:11)",
        check=non_empty_list_of(positive),
        factory=lambda: grid_values("16:8192"),
        parse=grid_values,
    )
    D: list[int] = key(
        help="embedding dimensions, same syntax",
        check=non_empty_list_of(positive),
        factory=lambda: grid_values("16:8192"),
        parse=grid_values,
    )
    repeats: int = key(3, "draws per cell", positive)
    seed: int = key(0, "seed of the draws")
    max_min_dim: int = key(1024, "skip cells with min(P, D) above this", positive)
    device: str = key("cpu", "torch device", device_name)


@dataclass
class SimulationResult:
    """Rows of one simulation, and the settings that produced them."""

    P: list[int]
    D: list[int]
    repeats: int
    seed: int
    max_min_dim: int
    rows: list[dict[str, float]] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)

    def cell(self, p: int, d: int) -> dict[str, float] | None:
        """Mean and standard deviation of the percent error (fraction) and nuclear norm."""
        vals = [r for r in self.rows if r["P"] == p and r["D"] == d]
        if not vals:
            return None
        pe = np.array([r["percent_error"] for r in vals])
        nuc = np.array([r["nuclear_norm"] for r in vals])
        return {
            "P": p,
            "D": d,
            "percent_error_mean": float(pe.mean()),
            "percent_error_std": float(pe.std(ddof=1)) if len(pe) > 1 else 0.0,
            "nuclear_norm_mean": float(nuc.mean()),
            "bound": nuclear_norm_bound(p, d),
            "repeats": len(vals),
        }

    def summary(self) -> list[dict[str, float]]:
        cells = (self.cell(p, d) for p in self.P for d in self.D)
        return [c for c in cells if c is not None]

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["summary"] = self.summary()
        return out


def _uniform_nuclear_norm(p: int, d: int, gen: torch.Generator, device: torch.device) -> float:
    """``‖C‖*`` of P unit vectors drawn uniformly in R^D, from the smaller Gram's eigenvalues."""
    c = torch.randn(p, d, generator=gen, dtype=torch.float64, device=device)
    c /= torch.linalg.vector_norm(c, dim=1, keepdim=True)
    gram = c @ c.T if p <= d else c.T @ c  # (min, min)
    eig = torch.linalg.eigvalsh(gram).clamp_min(0)
    return float(eig.sqrt().sum())


def _available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(
    P: Sequence[int], D: Sequence[int], max_min_dim: int, device: torch.device
) -> None:
    """A draw holds a (P, D) float64 matrix and its (min, min) Gram: refuse cells that cannot fit
    before any of them runs, rather than fail (or swap) in the middle of the grid."""
    cells = [(p, d) for p in P for d in D if min(p, d) <= max_min_dim]
    if not cells:
        return
    p, d = max(cells, key=lambda c: c[0] * c[1] + min(c) ** 2)
    need = 8 * (p * d + 2 * min(p, d) ** 2)
    free = _available_bytes(device)
    if free is not None and need > free:
        raise ValueError(
            f"the cell P={p}, D={d} needs {need / 2**30:.1f} GiB for one draw, but {device} has "
            f"{free / 2**30:.1f} GiB free; drop it from --P/--D"
        )


class _CostModel:
    """Seconds for one (P, D) draw ≈ a·P·D·min(P, D) + b·min(P, D)³, calibrated on this machine."""

    def __init__(self, device: torch.device) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        timings = []
        for p, d in ((2000, 500), (600, 600)):
            start = time.perf_counter()
            _uniform_nuclear_norm(p, d, gen, device)
            timings.append((p, d, time.perf_counter() - start))
        (p1, d1, t1), (p2, d2, t2) = timings
        # two equations, two unknowns; floor both at tiny positive values
        m1, m2 = min(p1, d1), min(p2, d2)
        det = p1 * d1 * m1 * m2**3 - p2 * d2 * m2 * m1**3
        self.a = max((t1 * m2**3 - t2 * m1**3) / det, 1e-13)
        self.b = max((p1 * d1 * m1 * t2 - p2 * d2 * m2 * t1) / det, 1e-13)

    def seconds(self, p: int, d: int) -> float:
        m = min(p, d)
        return self.a * p * d * m + self.b * m**3


def simulate_uniform(
    P: Sequence[int],
    D: Sequence[int],
    repeats: int = 3,
    seed: int = 0,
    max_min_dim: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = True,
    announce_above_s: float = 10.0,
) -> SimulationResult:
    """Nuclear norm, bound and percent error of perfectly uniform centroids on a (P, D) grid.

    Cells with ``min(P, D) > max_min_dim`` are skipped (their spectrum costs ``min(P, D)³``) and
    listed in ``result.skipped``; raise ``max_min_dim`` to include them. Before the grid starts,
    a two-point calibration estimates each cell's cost; the total is printed, and so is each
    cell expected to take more than ``announce_above_s`` seconds, before it runs.
    """
    for name, values in (("P", P), ("D", D)):
        if not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
        ):
            raise ValueError(
                f"{name} must be a non-empty list of positive integers, got {values!r}"
            )
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if max_min_dim < 1:
        raise ValueError(f"max_min_dim must be >= 1, got {max_min_dim!r}")
    device = torch.device(device)
    _check_memory(P, D, max_min_dim, device)
    result = SimulationResult(sorted(set(P)), sorted(set(D)), repeats, seed, max_min_dim)
    cells: list[tuple[int, int]] = []
    for p in result.P:
        for d in result.D:
            (cells if min(p, d) <= max_min_dim else result.skipped).append((p, d))

    cost = _CostModel(device)
    total = math.fsum(cost.seconds(p, d) for p, d in cells) * repeats
    bar = tqdm(total=len(cells) * repeats, disable=not progress, unit="draw", desc="simulate")
    skipped = f"; {len(result.skipped)} cells with min(P, D) > {max_min_dim} skipped"
    estimate = f"{len(cells)} cells x {repeats} repeats, estimated {total:.0f} s on {device}"
    bar.write(estimate + (skipped if result.skipped else ""))
    for index, (p, d) in enumerate(cells):
        expected = cost.seconds(p, d) * repeats
        if expected > announce_above_s:
            bar.write(f"cell P={p}, D={d}: about {expected:.0f} s")
        for rep in range(repeats):
            # one independent, reproducible stream per (cell, repeat)
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index * 1009 + rep)
            result.rows.append({"P": p, "D": d, "repeat": rep, **_draw(p, d, gen, device)})
            bar.update(1)
    bar.close()
    return result


def _draw(p: int, d: int, gen: torch.Generator, device: torch.device) -> dict[str, float]:
    """One draw of P uniform centroids in R^D: nuclear norm, bound, percent error, seconds."""
    start = time.perf_counter()
    nuc = _uniform_nuclear_norm(p, d, gen, device)
    bound = nuclear_norm_bound(p, d)
    return {
        "nuclear_norm": nuc,
        "bound": bound,
        "percent_error": (bound - nuc) / bound,
        "seconds": time.perf_counter() - start,
    }


def plot_simulation(result: SimulationResult, out_dir: str | Path) -> list[Path]:
    """Write ``heatmap.png`` (percent error over P × D) and ``lines.png`` (as Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    return [_heatmap(result, out_dir / "heatmap.png"), _lines(result, out_dir / "lines.png")]


def _heatmap(result: SimulationResult, path: Path) -> Path:
    """The mean percent error of every cell of the P × D grid, its value written in it."""
    import matplotlib.pyplot as plt

    grid = np.full((len(result.P), len(result.D)), np.nan)
    for i, p in enumerate(result.P):
        for j, d in enumerate(result.D):
            cell = result.cell(p, d)
            if cell is not None:
                grid[i, j] = 100 * cell["percent_error_mean"]
    # cells wide enough for their labels, whatever the grid (the paper's has 11 × 11)
    width, height = max(6.4, 2.6 + 0.6 * len(result.D)), max(5.2, 1.8 + 0.4 * len(result.P))
    fig, ax = plt.subplots(figsize=(width, height))
    im = ax.imshow(grid, origin="lower", cmap="magma", aspect="auto")
    d_labels = [str(d) for d in result.D]
    ax.set_xticks(
        range(len(result.D)), d_labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=8
    )
    ax.set_yticks(range(len(result.P)), [str(p) for p in result.P], fontsize=8)
    ax.set_xlabel("embedding dimension D")
    ax.set_ylabel("number of centroids P")
    ax.set_title("Pretraining percent error of uniform centroids (%)")
    fig.colorbar(im, ax=ax, label="(√(P·min(P,D)) − ‖C‖*) / √(P·min(P,D))  [%]")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            text = f"{grid[i, j]:.1f}" if math.isfinite(grid[i, j]) else "skip"
            color = "w" if math.isfinite(grid[i, j]) else "0.4"
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _lines(result: SimulationResult, path: Path) -> Path:
    """Fig. 2: the percent error against P (one curve per D) and against D (one per P)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, fixed, varying, by_p in (
        (axes[0], result.D, result.P, False),
        (axes[1], result.P, result.D, True),
    ):
        for k, f in enumerate(fixed):
            cells = [(v, result.cell(f, v) if by_p else result.cell(v, f)) for v in varying]
            xs = [v for v, c in cells if c]
            ys = [100 * c["percent_error_mean"] for _, c in cells if c]
            if xs:
                label = f"{'P' if by_p else 'D'}={f}"
                ax.plot(xs, ys, "o-", ms=3, color=cmap(k / max(1, len(fixed) - 1)), label=label)
    axes[0].set_xlabel("number of centroids P")
    axes[1].set_xlabel("embedding dimension D")
    axes[0].set_ylabel("pretraining percent error (%)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Uniform centroids: the percent error peaks at P = D (Schaeffer et al., Fig. 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
