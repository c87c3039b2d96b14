"""The run report: loss and accuracy curves (PNG) and a Markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runinfo import atomic_write_text, read_metrics

__all__ = ["PROTOCOLS", "transfer_line", "write_report", "zero_shot_line"]


def _plot_curves(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    knn = [r for r in records if "knn_val_accuracy" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps])
    axes[0].set(xlabel="step", ylabel="loss", title="pretraining loss (training batches)")
    if steps and "percent_error" in steps[0]:
        axes[1].plot([r["step"] for r in steps], [100 * r["percent_error"] for r in steps])
    axes[1].set(
        xlabel="step", ylabel="percent error (%)", title="percent error of the batch centroids"
    )
    axes[2].plot([r["epoch"] for r in knn], [100 * r["knn_val_accuracy"] for r in knn], "o-")
    axes[2].set(xlabel="epoch", ylabel="kNN accuracy (%)", title="kNN accuracy, validation split")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name, fontsize=9)
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


#: What each row of the results table measures (printed under it).
PROTOCOLS = (
    "Protocols: pretrained / random_init / raw_pixels: weighted kNN on frozen features and the "
    "offline linear probe (L-BFGS on frozen features, weight decay chosen on validation, test "
    "computed once); online_linear: the linear head trained during pretraining on detached "
    "features (SGD, as solo-learn's and lightly's tables report); finetune_*: the backbone "
    "fine-tuned on a fraction of the labels."
)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, float) else "-"


def zero_shot_line(r: dict[str, Any]) -> str:
    """One line for the zero-shot results of :func:`manifold_ssl.run.zero_shot`."""
    top5 = r.get("zero_shot_test_top5")
    extra = f"top-5 test {_pct(top5)}%; " if top5 is not None else ""
    return (
        f"zero-shot top-1: val {_pct(r.get('zero_shot_val_accuracy'))}%, test "
        f"{_pct(r.get('zero_shot_test_accuracy'))}% ({extra}chance {_pct(r.get('chance'))}%; "
        f"{len(r.get('templates', []))} held-out prompt templates)"
    )


def transfer_line(r: dict[str, Any]) -> str:
    """One line for the zero-shot transfer of :func:`manifold_ssl.run.evaluate.zero_shot_transfer`."""
    split = r["split"]
    top5 = r.get(f"zero_shot_{split}_top5")
    extra = f", top-5 {_pct(top5)}%" if top5 is not None else ""
    return (
        f"zero-shot transfer to {r['dataset']} ({split}, {r['images']} images): top-1 "
        f"{_pct(r[f'zero_shot_{split}_accuracy'])}%{extra} (chance {_pct(r['chance'])}%; "
        f"{len(r['templates'])} prompt templates ensembled)"
    )


def write_report(
    run_dir: Path,
    results: dict[str, dict[str, Any]],
    extra: dict[str, Any],
    filename: str = "report.md",
) -> Path:
    figures = _plot_curves(run_dir)
    lines = [f"# Run report: {run_dir.name}", ""]
    for key, value in extra.items():
        lines.append(f"- **{key}**: {value}")
    rows = {name: r for name, r in results.items() if not name.startswith("zero_shot")}
    if rows:
        lines += [
            "",
            "| encoder | kNN val % | kNN test % | linear val % | linear test % |",
            "| --- | --- | --- | --- | --- |",
        ]
    else:  # a one-class (caption-only) run: no table to fill, only zero-shot
        lines += ["", "No kNN or linear-probe table: the run's data has one class.", ""]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {_pct(r.get('knn_val_accuracy'))} | {_pct(r.get('knn_test_accuracy'))} | "
            f"{_pct(r.get('linear_val_accuracy'))} | {_pct(r.get('linear_test_accuracy'))} |"
        )
    if rows:
        lines += ["", PROTOCOLS, ""]
    if "zero_shot" in results:
        zs = results["zero_shot"]
        lines += [f"- {zero_shot_line(zs)}: " + "; ".join(f"`{t}`" for t in zs["templates"]), ""]
    if "zero_shot_transfer" in results:
        lines += [f"- {transfer_line(results['zero_shot_transfer'])}", ""]
    lines += [f"![curves]({f.name})" for f in figures]
    path = run_dir / filename
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
