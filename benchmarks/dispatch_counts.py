"""Device operations and host reads per training step, as a GPU would see them, counted on the
CPU with ``manifold_ssl.dispatch.DispatchCounter``.

Marginal counts: a run of ``--long`` steps minus a run of ``--short`` steps, over the steps
between (logging, checkpoints, probes and the kNN monitor off, so that every counted step is
an ordinary one), for the whole step and for the views alone (``next_views``).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/dispatch_counts.py [--cifar PATH]

Prints a table and writes ``benchmarks/results/dispatch_counts.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.dispatch import DispatchCounter
from manifold_ssl.run import train as run_train
from manifold_ssl.training import loop

QUIET = [
    "--train.log_every=100000",
    "--train.knn_every=0",
    "--train.checkpoint_every=100000",
    "--train.epochs=1000",
]


def counts(recipe: str, overrides: list[str], steps: int, root: str) -> dict[str, float]:
    """Ops and host reads of a run of ``steps`` steps, and of its views alone."""
    cfg = apply_overrides(
        load_recipe(recipe),
        [*QUIET, f"--train.max_steps={steps}", f"--train.out_dir={root}/runs", *overrides],
    )
    views = DispatchCounter()
    original = loop._Trainer.train_step

    def train_step(self: loop._Trainer) -> dict:
        inner = self.data.next_views

        def next_views() -> object:
            with views:  # nested: the outer counter sees these ops too
                return inner()

        self.data.next_views = next_views  # type: ignore[method-assign]
        try:
            return original(self)
        finally:
            del self.data.next_views

    loop._Trainer.train_step = train_step  # type: ignore[method-assign]
    try:
        with DispatchCounter() as total:
            run_train(cfg, progress=False)
    finally:
        loop._Trainer.train_step = original  # type: ignore[method-assign]
    return {"ops": total.ops, "reads": total.host_reads, "view_ops": views.ops}


def marginal(recipe: str, overrides: list[str], short: int, long: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        a = counts(recipe, overrides, short, root)
        b = counts(recipe, overrides, long, root)
    return {k: (b[k] - a[k]) / (long - short) for k in a}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=3)
    parser.add_argument("--long", type=int, default=7)
    parser.add_argument("--cifar", help="CIFAR-10 JPEG archive (../shared/data/cifar10-jpg.tar.gz)")
    parser.add_argument("--out", default="benchmarks/results/dispatch_counts.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("digits_mmcr", []),
        ("digits_mmcr", ["--views.num_views=2"]),
        ("digits_mmcr", ["--views.num_views=40", "--train.batch_size=32"]),
    ]
    if args.cifar:
        cifar = [
            "--data.name=imagefolder",
            f"--data.path={args.cifar}",
            "--data.loader=memory",
            "--model.width=16",
            "--train.batch_size=64",
        ]
        cases.append(("cifar10_mmcr", cifar))
    rows = []
    print(f"{'recipe':<14} {'overrides':<44} {'ops/step':>9} {'views':>7} {'reads/step':>10}")
    for recipe, overrides in cases:
        m = marginal(recipe, overrides, args.short, args.long)
        shown = " ".join(o for o in overrides if "path" not in o)[:44]
        print(f"{recipe:<14} {shown:<44} {m['ops']:9.0f} {m['view_ops']:7.0f} {m['reads']:10.1f}")
        rows.append({"recipe": recipe, "overrides": overrides, **m})
        sys.stdout.flush()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
