"""Wall time and accuracies of ``manifold-ssl evaluate`` on a CIFAR-10 run, phase by phase.

Claim (issue 8): evaluating a CIFAR-10 run (45,000 training images) with both baselines takes
at most 3 minutes on 2 CPU cores. Makes the run if none is given: ``cifar10_mmcr`` on the
JPEG archive for ``--steps`` steps (the accuracies then describe a barely trained encoder; the
timing does not depend on training). Prints a table and writes JSON.

    python benchmarks/evaluate_cifar10.py --data ../shared/data/cifar10-jpg.tar.gz [--run DIR]
        [--eval.KEY=VALUE ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path

import yaml

from manifold_ssl.config import apply_overrides, config_from_dict, load_recipe
from manifold_ssl.data.splits import load_splits
from manifold_ssl.evaluation.features import extract_features, normalise_images
from manifold_ssl.evaluation.protocol import evaluate_features
from manifold_ssl.run import build_method_for, pretrain
from manifold_ssl.runinfo import run_metadata, write_json
from manifold_ssl.training import load_checkpoint


def make_run(data: str, root: Path, steps: int) -> Path:
    cfg = apply_overrides(
        load_recipe("cifar10_mmcr"),
        [
            "--data.name=imagefolder",
            f"--data.path={data}",
            f"--data.root={root / 'data'}",
            f"--train.out_dir={root / 'runs'}",
            f"--train.max_steps={steps}",
            "--train.knn_every=0",
        ],
    )
    return pretrain(cfg, progress=True).run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--run", type=Path, help="an existing CIFAR-10 run directory")
    parser.add_argument("--work", type=Path, default=Path("results/evaluate_cifar10"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/evaluate_cifar10.json"))
    args, overrides = parser.parse_known_args()

    run = args.run or make_run(args.data, args.work, args.steps)
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    cfg = apply_overrides(cfg, overrides)  # e.g. --eval.linear_tolerance=1e-6 (a reference)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    start = time.perf_counter()
    splits = load_splits(
        cfg.data.name, cfg.data.root, cfg.data.path, cfg.data.val_fraction, cfg.data.split_seed
    )
    timings: dict[str, float] = {"load data": time.perf_counter() - start}
    method = build_method_for(cfg, splits.train.images.shape[1])
    method.load_state_dict(state["model"])
    encoders = {
        "pretrained": method.backbone,
        "random_init": build_method_for(cfg, splits.train.images.shape[1]).backbone,
    }
    mean, std = splits.normalisation
    rows = {}
    for name, encoder in encoders.items():
        t0 = time.perf_counter()
        feats = [
            extract_features(encoder, s.images, mean, std)
            for s in (splits.train, splits.val, splits.test)
        ]
        timings[f"{name}: features"] = time.perf_counter() - t0
        print(f"{name}: features {timings[f'{name}: features']:.1f} s", flush=True)
        t0 = time.perf_counter()
        rows[name] = evaluate_features(
            cfg.eval, (feats[0], feats[1], feats[2]), splits, progress=True
        )
        timings[f"{name}: kNN + linear probe"] = time.perf_counter() - t0
        print(f"{name}: kNN + probe {timings[f'{name}: kNN + linear probe']:.1f} s", flush=True)
    t0 = time.perf_counter()
    pixels = [
        normalise_images(s.images, mean, std).flatten(1)
        for s in (splits.train, splits.val, splits.test)
    ]
    rows["raw_pixels"] = evaluate_features(
        cfg.eval, (pixels[0], pixels[1], pixels[2]), splits, progress=True
    )
    timings["raw pixels: kNN + linear probe"] = time.perf_counter() - t0
    total = sum(timings.values())

    print(f"evaluate on {run} ({len(splits.train)} train / {len(splits.val)} val images)")
    print(f"{'phase':>34} | seconds")
    for phase, seconds in timings.items():
        print(f"{phase:>34} | {seconds:7.1f}")
    print(f"{'total':>34} | {total:7.1f}")
    print(f"\n{'encoder':>12} | {'kNN test':>8} | {'linear test':>11} | {'wd':>6}")
    for name, r in rows.items():
        print(
            f"{name:>12} | {100 * r['knn_test_accuracy']:7.2f}% | "
            f"{100 * r['linear_test_accuracy']:10.2f}% | {r['linear_weight_decay']:g}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"run": str(run), "overrides": overrides, "seconds": timings, "total_s": total}
    record["results"] = rows
    write_json(args.out, {"meta": run_metadata(), **record})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
