"""Forward+backward time of every objective, and MMCR against the SVD formulations.

Claims: MMCR's forward+backward is at least 10x faster than the straightforward formulation
that takes full SVDs (U, S, V) of C and of each Z_b (Yerxa App. B pseudocode, with
``torch.linalg.svd``'s defaults), and no slower than ``torch.linalg.svdvals`` on the same
matrices (C, plus the Z_b when λ > 0), at B=256, K=8, D=512 and B=1024, K=2, D=128; also
reported at B=D=128, K=4, the packaged recipes' square case. Each row also gives the float32
gradient's relative error against a float64 ``svdvals`` gradient of the same input: ours forms
its Gram matrices in float64 (``manifold_ssl.geometry._precision``), so it stays near 1e-7.

Timings are medians over repeats on float32 inputs, single-threaded by default, with
OMP_WAIT_POLICY=PASSIVE (busy-waiting OpenMP threads make eigen/SVD calls 15-200x slower when
anything else runs). On a shared 2-core machine compare the ratios, which are measured in one
run, not the absolute times.

    python benchmarks/losses.py [--threads 1] [--repeats 5] [--out results/losses.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from manifold_ssl.losses import LOSSES, mmcr_loss
from manifold_ssl.runinfo import run_metadata

MMCR_SHAPES = [(256, 8, 512), (1024, 2, 128), (128, 4, 128)]
GRID = [(256, 2, 128), (1024, 2, 128), (256, 8, 512), (512, 2, 512)]


def time_fwd_bwd(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, repeats: int
) -> float:
    """Median seconds of ``fn(z).backward()`` after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        x = z.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        fn(x).backward()
        elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
    return statistics.median(times)


def mmcr_full_svd(z: torch.Tensor, lambd: float) -> torch.Tensor:
    """Yerxa App. B as written: full SVDs (U, S, V) of every Z_b and of C (lines 34-35)."""
    z = F.normalize(z, dim=-1)
    c = z.mean(dim=1)
    _, s_z, _ = torch.linalg.svd(z)  # batch svd
    _, s_c, _ = torch.linalg.svd(c)
    return -s_c.sum() + lambd * s_z.sum() / z.shape[0]


def mmcr_svdvals(z: torch.Tensor, lambd: float) -> torch.Tensor:
    z = F.normalize(z, dim=-1)
    loss = -torch.linalg.svdvals(z.mean(dim=1)).sum()
    if lambd:
        loss = loss + lambd * torch.linalg.svdvals(z).sum() / z.shape[0]
    return loss


def gradient_error(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, lambd: float):
    """Relative error of ``fn``'s float32 gradient against float64 ``svdvals`` on ``z``."""
    x = z.detach().clone().requires_grad_(True)
    fn(x).backward()
    truth = z.detach().double().requires_grad_(True)
    mmcr_svdvals(truth, lambd).backward()
    return float((x.grad.double() - truth.grad).norm() / truth.grad.norm())


def bench_mmcr(repeats: int) -> list[dict[str, float]]:
    rows = []
    for b, k, d in MMCR_SHAPES:
        z = torch.randn(b, k, d, generator=torch.Generator().manual_seed(0))
        for lambd in (0.0, 0.1):
            ours = functools.partial(mmcr_loss, lambd=lambd)
            svdvals = functools.partial(mmcr_svdvals, lambd=lambd)
            t = {
                "manifold_ssl": time_fwd_bwd(ours, z, repeats),
                "full_svd": time_fwd_bwd(functools.partial(mmcr_full_svd, lambd=lambd), z, repeats),
                "svdvals": time_fwd_bwd(svdvals, z, repeats),
            }
            rows.append(
                {
                    "B": b,
                    "K": k,
                    "D": d,
                    "lambd": lambd,
                    **{f"{name}_ms": 1e3 * v for name, v in t.items()},
                    "speedup_vs_full_svd": t["full_svd"] / t["manifold_ssl"],
                    "speedup_vs_svdvals": t["svdvals"] / t["manifold_ssl"],
                    "grad_error_ours": gradient_error(ours, z, lambd),
                    "grad_error_svdvals": gradient_error(svdvals, z, lambd),
                }
            )
    return rows


def bench_all(repeats: int) -> list[dict[str, float]]:
    rows = []
    for b, k, d in GRID:
        z = torch.randn(b, k, d, generator=torch.Generator().manual_seed(1))
        for name, cls in sorted(LOSSES.items()):
            loss_fn = cls()
            if cls.inputs == "views":
                fn = loss_fn
            elif cls.inputs == "pair":
                fn = lambda x, f=loss_fn: f(x[:, 0], x[:, 1])  # noqa: E731
            else:
                continue  # the language-model loss takes logits, not views
            rows.append(
                {"loss": name, "B": b, "K": k, "D": d, "ms": 1e3 * time_fwd_bwd(fn, z, repeats)}
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/losses.json"))
    parser.add_argument("--skip-grid", action="store_true", help="only the MMCR comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mmcr_rows = bench_mmcr(args.repeats)
    print(f"MMCR forward+backward, float32, {args.threads} thread(s), median of {args.repeats}")
    print(
        f"{'B':>5} {'K':>2} {'D':>4} {'λ':>4} | {'ours ms':>8} {'full SVD':>9} {'svdvals':>8} | "
        f"{'vs SVD':>7} {'vs svdvals':>10} | {'grad err ours':>13} {'svdvals':>8}"
    )
    for r in mmcr_rows:
        print(
            f"{r['B']:>5} {r['K']:>2} {r['D']:>4} {r['lambd']:>4} | {r['manifold_ssl_ms']:8.1f} "
            f"{r['full_svd_ms']:9.1f} {r['svdvals_ms']:8.1f} | {r['speedup_vs_full_svd']:6.1f}x "
            f"{r['speedup_vs_svdvals']:9.2f}x | {r['grad_error_ours']:13.1e} "
            f"{r['grad_error_svdvals']:8.1e}"
        )

    grid_rows = [] if args.skip_grid else bench_all(args.repeats)
    if grid_rows:
        shapes = sorted({(r["B"], r["K"], r["D"]) for r in grid_rows}, key=GRID.index)
        print("\nEvery objective, forward+backward ms (pair losses use views 0 and 1)")
        print(f"{'loss':>16} | " + " ".join(f"{f'{b}x{k}x{d}':>12}" for b, k, d in shapes))
        for name in sorted({r["loss"] for r in grid_rows}):
            ms = {(r["B"], r["K"], r["D"]): r["ms"] for r in grid_rows if r["loss"] == name}
            print(f"{name:>16} | " + " ".join(f"{ms[s]:12.1f}" for s in shapes))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "meta": run_metadata(),
                "threads": args.threads,
                "repeats": args.repeats,
                "mmcr": mmcr_rows,
                "grid": grid_rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
