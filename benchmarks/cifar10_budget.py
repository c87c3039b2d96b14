"""Every method pretrained on CIFAR-10 under one wall-clock budget, then kNN and linear probe.

For each recipe: a short pilot measures seconds per step, the epoch count is set so that the
cosine schedule ends within the budget, and ``train.time_budget_s`` stops training at the
budget regardless. Then, on the frozen backbone: weighted kNN (k = 200) and the linear probe
(weight decay chosen on the validation split), each with one test-set number. Prints a table and
writes JSON. Data: ``--data`` is the ImageFolder archive (default ../shared/data/cifar10-jpg.tar.gz)
or any folder / archive of <split>/<class>/<image>; it is decoded once into the tensor cache.

    python benchmarks/cifar10_budget.py --budget 600 [--methods mmcr clamp ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

import torch

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.splits import load_splits
from manifold_ssl.data.views import MultiViewAugment, preset
from manifold_ssl.evaluation.protocol import evaluate_encoder
from manifold_ssl.run import build_method_for, pretrain
from manifold_ssl.run.build import optimizer_for
from manifold_ssl.runinfo import run_metadata
from manifold_ssl.training import train_step

METHODS = ["mmcr", "clamp", "matrix_ssl", "simclr", "barlow_twins", "byol"]


def seconds_per_step(cfg, images: torch.Tensor, steps: int = 3) -> float:
    torch.manual_seed(0)
    method = build_method_for(cfg, images.shape[1])
    opt = optimizer_for(cfg, method)
    aug = MultiViewAugment(preset(cfg.views.preset), cfg.views.num_views)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        idx = torch.randint(0, images.shape[0], (cfg.train.batch_size,), generator=gen)
        train_step(method, opt, aug(images[idx], gen))  # the loop's step
        method.update_target(i, steps + 1)
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument(
        "--data", default=str(here.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
    )
    parser.add_argument("--root", default="data", help="cache folder for the decoded tensors")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of pretraining each")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--out", type=Path, default=Path("results/cifar10_budget.json"))
    parser.add_argument("--runs", default="runs/budget")
    args = parser.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(
            f"--data {args.data} does not exist: pass the CIFAR-10 ImageFolder archive"
        )

    data_overrides = [
        "--data.name=imagefolder",
        f"--data.path={args.data}",
        f"--data.root={args.root}",
    ]
    t = time.perf_counter()
    splits = load_splits("imagefolder", args.root, args.data, 0.1, 0)
    print(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
        f"({time.perf_counter() - t:.0f} s to load)"
    )
    rows = []
    for name in args.methods:
        cfg = apply_overrides(load_recipe(f"cifar10_{name}"), data_overrides)
        sps = seconds_per_step(cfg, splits.train.images)
        steps_per_epoch = len(splits.train) // cfg.train.batch_size
        epochs = max(1, int(args.budget / (sps * steps_per_epoch)))
        cfg = apply_overrides(
            cfg,
            [
                f"--train.epochs={epochs}",
                f"--train.time_budget_s={args.budget}",
                "--train.knn_every=0",
                f"--train.out_dir={args.runs}",
            ],
        )
        t = time.perf_counter()
        result = pretrain(cfg, progress=False)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        ev = evaluate_encoder(cfg.eval, result.method.backbone, result.splits, "cpu")
        rows.append(
            {
                "method": name,
                "epochs_planned": epochs,
                "steps": result.step,
                "status": result.status,
                "train_s": train_s,
                "eval_s": time.perf_counter() - t,
                "images_seen": result.step * cfg.train.batch_size,
                "views": cfg.views.num_views,
                "batch": cfg.train.batch_size,
                "knn_test": ev["knn_test_accuracy"],
                "linear_val": ev["linear_val_accuracy"],
                "linear_test": ev["linear_test_accuracy"],
                "run_dir": str(result.run_dir),
            }
        )
        r = rows[-1]
        print(
            f"{name:>13}: {r['steps']} steps ({r['status']}, {train_s:.0f} s), kNN test "
            f"{100 * r['knn_test']:.2f}%, linear test {100 * r['linear_test']:.2f}%",
            flush=True,
        )

    print(
        f"\nCIFAR-10, {args.budget:.0f} s of pretraining each on {torch.get_num_threads()} threads "
        f"(narrow ResNet-18 CPU recipes)"
    )
    print(
        f"{'method':>13} | {'K':>2} {'batch':>5} {'steps':>6} {'images':>7} | {'kNN test':>8} "
        f"{'lin val':>8} {'lin test':>8}"
    )
    for r in rows:
        print(
            f"{r['method']:>13} | {r['views']:>2} {r['batch']:>5} {r['steps']:>6} {r['images_seen']:>7} | "
            f"{100 * r['knn_test']:7.2f}% {100 * r['linear_val']:7.2f}% {100 * r['linear_test']:7.2f}%"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": run_metadata(), "budget_s": args.budget, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
