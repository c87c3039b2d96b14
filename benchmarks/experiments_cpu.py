"""The CPU experiments of issue 9, end to end: their tables, and the claims they test.

1. ``digits_double_descent`` (Schaeffer et al. Fig. 3 and 4): the P × D table of pretraining
   percent error for each K, how many row and column curves peak at P = D, and the power-law
   exponents of percent error against FLOPs on and off the diagonal.
2. ``digits_clamp_dynamics`` (Zhang et al. Fig. 3; Yerxa et al. Fig. 3): whether CLAMP's
   neighbour count and sub-manifold size fall over training, whether within-class gradient
   coherence exceeds across-class (and the shuffled-label control does not), and what fraction
   of the wall time the probes took.

Runs (or resumes) both with the package's own commands, draws the figures, prints the tables and
writes JSON. About 15 minutes on 2 cores.

    python benchmarks/experiments_cpu.py [--work results/experiments_cpu] [--workers 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

import numpy as np

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.experiments.plots import plot_run, plot_sweep
from manifold_ssl.experiments.sweep import load_spec, run_sweep
from manifold_ssl.run import pretrain
from manifold_ssl.runinfo import read_metrics, run_metadata, write_json


def double_descent(work: Path, workers: int) -> dict:
    out = work / "digits_double_descent"
    run_sweep(load_spec("digits_double_descent"), out, workers=workers)
    plot_sweep(out)
    tables = json.loads((out / "figures" / "double_descent.json").read_text())
    fits = json.loads((out / "figures" / "scaling.json").read_text())
    for k, t in tables.items():
        print(f"\nK = {k}: pretraining percent error (%), rows P, columns D")
        print("   P\\D " + " ".join(f"{d:>6}" for d in t["D"]))
        for p, row in zip(t["P"], t["percent_error"], strict=True):
            print(f"{p:>6} " + " ".join(f"{100 * v:6.1f}" for v in row))
        pk = t["peaks_on_diagonal"]
        print(
            f"peaks at P = D: {pk['rows']}/{pk['rows_with_diagonal']} rows, "
            f"{pk['columns']}/{pk['columns_with_diagonal']} columns"
        )
    scaling = {}
    for k in sorted({f["K"] for f in fits}):
        for diag in (True, False):
            sel = [f for f in fits if f["K"] == k and f["diagonal"] == diag]
            scaling[f"K={k} {'on' if diag else 'off'} diagonal"] = {
                "trials": len(sel),
                "mean_exponent": float(np.mean([f["exponent"] for f in sel])),
                "median_r2": float(np.median([f["r2"] for f in sel])),
                "mean_initial_error": float(np.mean([f["initial_error"] for f in sel])),
            }
    print("\npower laws of percent error against FLOPs (see figures/scaling.md)")
    for name, s in scaling.items():
        print(
            f"{name:>22}: b = {s['mean_exponent']:.3f}, median R² = {s['median_r2']:.3f}, "
            f"initial error {100 * s['mean_initial_error']:.1f}% ({s['trials']} trials)"
        )
    return {"tables": tables, "scaling": scaling}


def clamp_dynamics(work: Path) -> dict:
    runs = work / "digits_clamp_dynamics"
    cfg = apply_overrides(load_recipe("digits_clamp_dynamics"), [f"--train.out_dir={runs}"])
    start = time.perf_counter()
    run_dir = pretrain(cfg, progress=True).run_dir
    wall = time.perf_counter() - start
    plot_run(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    probes = [r for r in records if "probe/seconds" in r]
    steps = [r for r in records if "images_per_s" in r]
    first, last = probes[0], probes[-1]
    out = {
        "run": str(run_dir),
        "neighbours": [first["probe/neighbours"], last["probe/neighbours"]],
        "size": [first["probe/size"], last["probe/size"]],
        "probe_seconds": sum(r["probe/seconds"] for r in probes),
        "probes": len(probes),
        "coherence_last": {k: v for k, v in last.items() if "coherence" in k},
        "steps": steps[-1]["step"] if steps else 0,
        "wall_s": wall,
        "probe_fraction": sum(r["probe/seconds"] for r in probes) / wall,
    }
    print(f"\nCLAMP dynamics ({run_dir}), first probe -> last probe:")
    print(f"  neighbours per sub-manifold {out['neighbours'][0]:.2f} -> {out['neighbours'][1]:.2f}")
    print(f"  sub-manifold size           {out['size'][0]:.4f} -> {out['size'][1]:.4f}")
    for group in ("all", "first", "last", "shuffled"):
        w = last.get(f"probe/coherence/{group}/within")
        a = last.get(f"probe/coherence/{group}/across")
        if w is not None:
            print(f"  gradient coherence {group:>8}: within {w:.3f}, across {a:.3f}")
    print(
        f"  probes: {len(probes)}, {out['probe_seconds']:.1f} s of the run's {wall:.1f} s "
        f"({100 * out['probe_fraction']:.1f}%; budget probes.max_cost = {cfg.probes.max_cost:g})"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("results/experiments_cpu"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/experiments_cpu.json"))
    args = parser.parse_args()
    record = {
        "double_descent": double_descent(args.work, args.workers),
        "clamp_dynamics": clamp_dynamics(args.work),
    }
    write_json(args.out, {"meta": run_metadata(), **record})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
