"""``manifold-ssl`` command line; ``main(argv)`` runs it as a function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__


def _int_list(text: str) -> list[int]:
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
        raise argparse.ArgumentTypeError(
            f"expected positive integers 'A,B,C', a powers-of-two range 'LO:HI', or N log-spaced "
            f"values 'LO:HI:N', got {text!r}"
        ) from None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .experiments.simulate import plot_simulation, simulate_uniform
    from .runinfo import make_run_dir, run_metadata, write_json

    config = {
        "P": args.P,
        "D": args.D,
        "repeats": args.repeats,
        "seed": args.seed,
        "max_min_dim": args.max_min_dim,
        "device": args.device,
    }
    run_dir = make_run_dir(args.out, "simulate")
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "meta.json", run_metadata(args.seed))
    result = simulate_uniform(progress=not args.quiet, **config)
    write_json(run_dir / "results.json", result.to_dict())
    figures = plot_simulation(result, run_dir)

    if result.skipped:
        print(f"skipped (min(P, D) > {result.max_min_dim}): {len(result.skipped)} cells")
    print(f"\nPretraining percent error of perfectly uniform centroids (mean of {args.repeats}):")
    print(f"{'D':>6} | {'P=D/4':>8} {'P=D':>8} {'P=4D':>8} | peak over P at")
    for d in result.D:
        row = [result.cell(ratio_p, d) for ratio_p in (d // 4, d, 4 * d)]
        vals = [f"{100 * c['percent_error_mean']:7.3f}%" if c else f"{'-':>8}" for c in row]
        cells = [result.cell(p, d) for p in result.P]
        best = max((c for c in cells if c), key=lambda c: c["percent_error_mean"], default=None)
        peak = f"P={best['P']}" if best else "-"
        if best and result.cell(d, d) is None:
            peak += " (P=D not computed)"
        print(f"{d:>6} | {' '.join(vals)} | {peak}")
    print(f"\nrun directory: {run_dir}")
    for f in [run_dir / "results.json", *figures]:
        print(f"  {f}")
    return 0


def _cmd_losses(args: argparse.Namespace) -> int:
    from .losses import LOSSES

    for name, cls in sorted(LOSSES.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:16s} {getattr(cls, 'inputs', ''):6s} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manifold-ssl",
        description="Multi-view self-supervised learning on the geometry of neural manifolds.",
    )
    parser.add_argument("--version", action="version", version=f"manifold-ssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="nuclear norm of perfectly uniform centroids vs its bound (Schaeffer App. B, Fig. 2)",
        description="Percent error of uniform random unit centroids over a P x D grid; writes "
        "JSON, a heatmap and Fig. 2-style line plots into a new run directory.",
    )
    sim.add_argument(
        "--P",
        type=_int_list,
        default=_int_list("16:8192"),
        help="numbers of centroids: '16,64,256', powers of two 'LO:HI', or N log-spaced "
        "values 'LO:HI:N' (the paper's grid is 10:10000:11; default 16:8192)",
    )
    sim.add_argument(
        "--D",
        type=_int_list,
        default=_int_list("16:8192"),
        help="embedding dimensions, same syntax (default 16:8192)",
    )
    sim.add_argument("--repeats", type=int, default=3, help="draws per cell (default 3)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--max-min-dim",
        dest="max_min_dim",
        type=int,
        default=1024,
        help="skip cells with min(P, D) above this (default 1024)",
    )
    sim.add_argument("--device", default="cpu", help="torch device (default cpu)")
    sim.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run directory")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_cmd_simulate)

    losses = sub.add_parser("losses", help="list the registered objectives")
    losses.set_defaults(func=_cmd_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"manifold-ssl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
