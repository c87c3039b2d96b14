"""Every sweep figure and summary column, tested for free: a figure reads only columns that
``summarise`` writes, and draws its files from a sweep whose trials it applies to."""

from __future__ import annotations

import json

import pytest

from manifold_ssl.experiments.columns import COLUMNS
from manifold_ssl.experiments.plots import SWEEP_FIGURES, FigureContext, figure_groups
from manifold_ssl.runinfo import write_json


def _sweep(tmp_path):
    """Trials of an image method and of an image-caption one over P and D, with logged curves
    (percent error as a power law of FLOPs, the kNN monitor against the clock)."""
    rows = []
    for recipe, method in (("digits_mmcr", "mmcr"), ("digits_clip", "clip")):
        for p in (16, 32):
            for d in (16, 32):
                trial = f"{recipe}-{p}-{d}"
                lines = [
                    {"step": s, "loss": 1.0 / s, "flops": s * 1e9, "percent_error": 0.4 * s**-0.2}
                    for s in range(1, 31)
                ]
                lines += [
                    {"step": 10 * e, "epoch": e, "flops": 1e10 * e, "train_seconds": 2.0 * e}
                    | {"knn_val_accuracy": 0.2 * e}
                    for e in (1, 2)
                ]
                (tmp_path / "trials" / trial).mkdir(parents=True)
                (tmp_path / "trials" / trial / "metrics.jsonl").write_text(
                    "".join(f"{json.dumps(x)}\n" for x in lines)
                )
                row = {"trial": trial, "status": "done", "recipe": recipe, "method": method}
                row |= {"P": p, "D": d, "K": 2, "seed": 0}
                row |= {name: 0.3 for name in COLUMNS}
                if method == "mmcr":
                    row["zero_shot_test_accuracy"] = None
                rows.append(row)
    write_json(tmp_path / "summary.json", rows)
    write_json(
        tmp_path / "sweep.json", {"spec": {"grid": {"recipe": ["a", "b"], "P": [], "D": []}}}
    )
    return rows


@pytest.mark.parametrize("name", sorted(SWEEP_FIGURES))
def test_every_figure_reads_summary_columns_and_draws_its_trials(name, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = SWEEP_FIGURES[name]
    assert set(figure.columns) <= set(COLUMNS), f"{name} reads columns summarise never writes"
    trials = figure.trials(_sweep(tmp_path))
    open_before = set(plt.get_fignums())  # (other tests' figures may be open)
    assert trials, f"{name} applies to no trial of a sweep of both kinds of method"
    for label, group in figure_groups(tmp_path, trials, figure.drawn):
        out = tmp_path / "figures" / (label or "all")
        out.mkdir(parents=True)
        files = figure.draw(FigureContext(tmp_path, out, label, plt), group)
        assert files, f"{name} drew nothing for {label!r}"
        assert all(f.parent == out and f.stat().st_size > 0 for f in files)
    assert set(plt.get_fignums()) == open_before  # every figure it opened, closed


def test_summarise_writes_the_registered_columns_of_every_trial(tmp_path):
    from manifold_ssl.config import load_recipe, save_config
    from manifold_ssl.experiments.sweep import summarise

    trial = tmp_path / "trials" / "t0"
    trial.mkdir(parents=True)
    write_json(tmp_path / "trials" / "t0.json", {"point": {"P": 16}})
    save_config(load_recipe("digits_mmcr"), trial / "config.yaml")
    lines = [{"step": s, "loss": float(s), "percent_error": 0.1 * s} for s in range(1, 21)]
    (trial / "metrics.jsonl").write_text("".join(f"{json.dumps(x)}\n" for x in lines))
    (row,) = summarise(tmp_path)
    assert set(COLUMNS) <= set(row)
    assert row["loss"] == pytest.approx(19.5) and row["percent_error"] == pytest.approx(1.95)
    assert row["knn_test_accuracy"] is None  # not evaluated
    results = {"pretrained": {"knn_test_accuracy": 0.5, "linear_test_accuracy": 0.6}}
    write_json(trial / "eval.json", {"results": results})
    (row,) = summarise(tmp_path)
    assert (row["knn_test_accuracy"], row["linear_test_accuracy"]) == (0.5, 0.6)
    assert row["zero_shot_test_accuracy"] is None
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert set(COLUMNS) <= set(header)
