"""One row of the README's CIFAR-10 table, run end to end on one device.

    python benchmarks/reproduce.py lightly_cifar10_mmcr --data ../shared/data/cifar10-jpg.tar.gz
    python benchmarks/reproduce.py --table        # the README table, from the result files

ROW is a packaged recipe (``lightly_cifar10_*``). It pretrains on the CIFAR-10 JPEGs at
``--data`` (an ImageFolder archive or folder, decoded once into the tensor cache under
``--root``; no install, no network) with the recipe's kNN monitor every epoch on the validation
split, stops after ``--budget-s`` seconds of training (the training clock: monitor and
checkpoints excluded), then measures kNN top-1 (k = 200, T = 0.1, as the recipe) on the test
split twice: with the last epoch's weights, and with ``best.pt``, the epoch of the best
*validation* kNN. lightly selects its best epoch on the test set itself; we never select on the
test split, so the second number is labelled as what it is.

Writes ``--out/<row>-<device>.json``: the per-epoch validation kNN curve with the training clock,
the two test numbers, images/s of training, the wall-clock with and without evaluation (the
training clock) and the share outside training (monitor, final kNN, checkpoints, start-up), the device, torch version and commit. ``status`` is ``result`` only when
every planned epoch ran; a row the budget cut short is ``partial`` (its numbers are kept, and
never enter the table). ``--table`` renders the README table's rows from the ``result`` files
(a test checks that the README shows exactly that), and ``--figure PNG`` draws validation kNN
against the training clock for every row run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.evaluation.protocol import evaluate_encoder
from manifold_ssl.run import pretrain
from manifold_ssl.run.record import RunDir, method_from_state
from manifold_ssl.runinfo import read_metrics, run_metadata

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: the rows of the table: recipe → (method as the table names it, lightly's published kNN top-1)
ROWS: dict[str, tuple[str, float | None]] = {
    "lightly_cifar10_simclr": ("SimCLR", 84.8),
    "lightly_cifar10_byol": ("BYOL", 86.8),
    "lightly_cifar10_barlow_twins": ("Barlow Twins", 81.9),
    "lightly_cifar10_mmcr": ("MMCR", None),
    "lightly_cifar10_clamp": ("CLAMP", None),
}
SELECTION = "best epoch by validation kNN (lightly: best epoch by test kNN)"


def device_name(device: str) -> str:
    """A file-name form of the device the row ran on (``nvidia-h100-80gb-hbm3``, ``cpu``)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def knn_test(cfg: Any, method: torch.nn.Module, splits: Any, device: str) -> float:
    """The recipe's kNN top-1 on the test split, the training split as the bank."""
    settings = apply_overrides(cfg, ["--eval.linear_probe=false"]).eval
    out = evaluate_encoder(settings, method.backbone, splits, device)
    return float(out["knn_test_accuracy"])


def run_row(
    row: str, data: str, root: str, budget_s: float, runs: str, overrides: list[str]
) -> dict[str, Any]:
    """Pretrain ``row`` within ``budget_s`` and measure it (the module doc)."""
    cfg = apply_overrides(
        load_recipe(row),
        [
            "--data.name=imagefolder",
            f"--data.path={data}",
            f"--data.root={root}",
            f"--train.out_dir={runs}",
            f"--train.time_budget_s={budget_s}",
            "--train.keep_best=knn",
            *overrides,
        ],
    )
    start = time.perf_counter()
    result = pretrain(cfg, progress=True)
    pretrain_s = time.perf_counter() - start
    records = read_metrics(result.run_dir / "metrics.jsonl")
    curve = [
        {"epoch": r["epoch"], "knn_val": r["knn_val_accuracy"], "train_s": r["train_seconds"]}
        for r in records
        if "knn_val_accuracy" in r
    ]
    train_s = max((r["train_seconds"] for r in records if "train_seconds" in r), default=0.0)
    monitor_s = sum(r.get("monitor_s", 0.0) for r in records)  # each monitor call
    start = time.perf_counter()
    device = str(next(result.method.parameters()).device)
    last = knn_test(cfg, result.method, result.splits, device)
    run = RunDir(result.run_dir)
    best_state = run.checkpoint("best.pt") if "best.pt" in run.kept() else None
    best = None
    if best_state is not None:
        method = method_from_state(cfg, best_state, result.splits, device)
        best = {
            "epoch": int(best_state["epoch"]),
            "knn_test": knn_test(cfg, method, result.splits, device),
            "selection": SELECTION,
        }
    eval_s = time.perf_counter() - start
    wall_s = pretrain_s + eval_s
    finished = result.status == "finished"
    return {
        "row": row,
        "method": ROWS[row][0],
        "published_knn": ROWS[row][1],
        "status": "result" if finished else "partial",
        "stopped_by": result.status,
        "epochs_planned": cfg.train.epochs,
        "epochs_run": curve[-1]["epoch"] if curve else 0,
        "steps": result.step,
        "batch_size": cfg.train.batch_size,
        "knn_curve": curve,
        "knn_test_last": last,
        "knn_test_best": best,
        "images_per_s": result.step * cfg.train.batch_size / train_s if train_s else None,
        "wall_s": wall_s,
        "train_s": train_s,
        "wall_s_without_eval": train_s,
        "monitor_s": monitor_s,
        "monitor_share": monitor_s / wall_s if wall_s else None,
        "final_knn_s": eval_s,
        # the monitor, the final kNN, checkpoints and start-up: all that is not training
        "outside_training_share": (wall_s - train_s) / wall_s if wall_s else None,
        "device": device_name(device),
        "run_dir": str(result.run_dir),
        "overrides": overrides,
        **{k: v for k, v in run_metadata(cfg.train.seed).items() if k != "seed"},
    }


def result_files(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every row file in ``folder`` that is a result (not partial), in the table's order."""
    rows = []
    for path in sorted(folder.glob("lightly_cifar10_*.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "result":
            rows.append(record)
    return sorted(rows, key=lambda r: (list(ROWS).index(r["row"]), r["device"]))


def table(folder: Path = RESULTS) -> str:
    """The README's table from the result files of ``folder``: every row, ours filled only from
    a result, with the device named."""
    done = {}
    for r in result_files(folder):
        done.setdefault(r["row"], []).append(r)
    lines = [
        "| method | published (lightly, kNN top-1, best epoch) | ours (kNN top-1, last epoch) | "
        "command |",
        "| --- | --- | --- | --- |",
    ]
    for row, (name, published) in ROWS.items():
        ours = "; ".join(
            f"{100 * r['knn_test_last']:.1f} ({r['epochs_run']} epochs, {r['device']}, "
            f"{r['wall_s'] / 60:.0f} min)"
            for r in done.get(row, [])
        )
        pub = "—" if published is None else f"{published:.1f}"
        lines.append(
            f"| {name} | {pub} | {ours or 'not run yet'} | `manifold-ssl pretrain {row}` |"
        )
    return "\n".join(lines)


def figure(path: Path, folder: Path = RESULTS) -> None:
    """Validation kNN top-1 against the training clock, one line per row run (partial ones
    dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for file in sorted(folder.glob("lightly_cifar10_*.json")):
        r = json.loads(file.read_text())
        xs = [p["train_s"] / 60 for p in r["knn_curve"]]
        ys = [100 * p["knn_val"] for p in r["knn_curve"]]
        style = "-" if r["status"] == "result" else "--"
        ax.plot(xs, ys, style, label=f"{r['method']} ({r['device']}, {r['status']})")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("kNN top-1, validation (%)")
    ax.set_title("CIFAR-10, lightly's protocol: time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", nargs="?", choices=list(ROWS), help="the recipe of the row")
    parser.add_argument(
        "--data", default=str(HERE.parent.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
    )
    parser.add_argument("--root", default="data", help="cache folder for the decoded tensors")
    parser.add_argument("--budget-s", type=float, default=600.0, help="seconds of training")
    parser.add_argument("--runs", default="runs/reproduce", help="where the run directory goes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--table", action="store_true", help="print the README table and stop")
    parser.add_argument("--figure", type=Path, help="draw the time-to-accuracy figure and stop")
    parser.add_argument("overrides", nargs="*", default=[], help="--section.key=value ...")
    args, extra = parser.parse_known_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    if args.figure:
        figure(args.figure, args.out)
        print(f"wrote {args.figure}")
        return 0
    if args.row is None:
        parser.error("name a ROW (one of " + ", ".join(ROWS) + "), or give --table / --figure")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if not Path(args.data).exists():
        parser.error(f"--data {args.data} does not exist: pass the CIFAR-10 ImageFolder archive")
    record = run_row(
        args.row, args.data, args.root, args.budget_s, args.runs, [*args.overrides, *extra]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.row}-{record['device']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    best = record["knn_test_best"]
    print(
        f"{record['method']}: {record['status']} ({record['stopped_by']}, "
        f"{record['epochs_run']}/{record['epochs_planned']} epochs) kNN test last "
        f"{100 * record['knn_test_last']:.2f}%"
        + (f", best-val epoch {best['epoch']} {100 * best['knn_test']:.2f}%" if best else "")
        + f"; {record['images_per_s'] or 0:.0f} images/s; wall {record['wall_s']:.0f} s, "
        f"{100 * (record['outside_training_share'] or 0):.1f}% of it outside training, the kNN "
        f"monitor {100 * (record['monitor_share'] or 0):.1f}%; wrote {path}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
