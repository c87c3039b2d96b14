"""Sweep figures: the double-descent tables, the power-law fits, and the files written."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import manifold_ssl
from manifold_ssl.experiments.plots import double_descent_tables, fit_power_law, plot_sweep
from manifold_ssl.runinfo import write_json


def _rows(peak_on_diagonal: bool = True) -> list[dict]:
    rows = []
    for k in (2, 4):
        for p in (16, 32, 64):
            for d in (16, 32, 64):
                err = 0.5 - 0.1 * abs(np.log2(p / d)) if peak_on_diagonal else 0.1 * np.log2(p)
                rows.append(
                    {
                        "trial": f"{p}-{d}-{k}",
                        "status": "done",
                        "P": p,
                        "D": d,
                        "K": k,
                        "seed": 0,
                        "percent_error": err,
                    }
                )
    return rows


def test_double_descent_tables_count_peaks_on_the_diagonal():
    t = double_descent_tables(_rows())
    assert set(t) == {"2", "4"}
    assert t["2"]["peaks_on_diagonal"] == {
        "rows": 3,
        "rows_with_diagonal": 3,
        "columns": 3,
        "columns_with_diagonal": 3,
    }
    assert t["2"]["percent_error"][1][1] == pytest.approx(0.5)
    monotone = double_descent_tables(_rows(peak_on_diagonal=False))["4"]["peaks_on_diagonal"]
    assert monotone["columns"] == 1 and monotone["rows"] == 1  # only P = D = 64 / the flat rows


def test_power_law_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    c = np.geomspace(1e9, 1e12, 60)
    e = 3.0 * (c / 1e9) ** -0.3 * np.exp(0.02 * rng.standard_normal(60))
    fit = fit_power_law(c, e, bootstrap=300)
    assert fit["exponent"] == pytest.approx(0.3, abs=0.01)
    assert fit["exponent_95"][0] < 0.3 < fit["exponent_95"][1]
    assert fit["r2"] > 0.99
    sat = fit_power_law(c, 0.2 + 0.5 * (c / 1e9) ** -0.5, bootstrap=10)["saturating"]
    assert sat["e_inf"] == pytest.approx(0.2, abs=1e-3) and sat["b"] == pytest.approx(0.5, abs=1e-2)
    assert sat["e_inf_identified"]
    assert not fit["saturating"]["e_inf_identified"]  # a pure power law has no floor


def test_plot_sweep_writes_figures_and_their_data(tmp_path):
    rows = _rows()
    _curves(tmp_path, rows)  # a logged curve per trial: error falling as a power law of FLOPs
    write_json(tmp_path / "summary.json", rows)
    files = {f.name for f in plot_sweep(tmp_path)}
    assert {
        "fig3_double_descent.png",
        "fig3_heatmap.png",
        "fig4_scaling.png",
        "scaling.json",
        "scaling.md",
        "double_descent.json",
    } <= files
    fits = json.loads((tmp_path / "figures" / "scaling.json").read_text())
    assert len(fits) == len(rows)
    assert all(f["exponent"] == pytest.approx(0.2, abs=1e-6) for f in fits)


def _imports(package: Path) -> set[str]:
    names = set()
    for file in package.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                names.add(node.module.split(".")[0])
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("manifold_ssl.")
            ):
                names.add(node.module.split(".")[1])
    return names


def test_training_and_evaluation_do_not_import_each_other():
    root = Path(manifold_ssl.__file__).parent
    assert "evaluation" not in _imports(root / "training")
    assert "training" not in _imports(root / "evaluation")


def _curves(tmp_path: Path, rows: list[dict]) -> None:
    for r in rows:
        trial = tmp_path / "trials" / r["trial"]
        trial.mkdir(parents=True)
        lines = [
            {
                "step": s,
                "loss": 0.0,
                "flops": s * 1e9,
                "percent_error": r["percent_error"] * s**-0.2,
            }
            for s in range(1, 31)
        ]
        (trial / "metrics.jsonl").write_text("".join(f"{json.dumps(x)}\n" for x in lines))


def test_every_other_grid_axis_gets_its_own_figures_never_a_mean(tmp_path):
    # issue 18.2: a grid over optim.lr (or recipe) was averaged into one line per D
    rows = []
    for lr, scale in ((0.001, 1.0), (0.1, 0.5)):
        for r in _rows():
            rows.append(
                {
                    **r,
                    "trial": f"{r['trial']}-{lr}",
                    "optim.lr": lr,
                    "method": "mmcr",
                    "percent_error": scale * r["percent_error"],
                }
            )
    _curves(tmp_path, rows)
    write_json(tmp_path / "summary.json", rows)
    spec = {"recipe": "digits_mmcr", "grid": {"optim.lr": [0.001, 0.1], "P": [16], "D": [16]}}
    write_json(tmp_path / "sweep.json", {"spec": spec})
    plot_sweep(tmp_path)
    figures = tmp_path / "figures"
    groups = json.loads((figures / "groups.json").read_text())
    assert groups == {"optim.lr=0.001": "optim.lr=0.001", "optim.lr=0.1": "optim.lr=0.1"}
    for name, scale in (("optim.lr=0.001", 1.0), ("optim.lr=0.1", 0.5)):
        t = json.loads((figures / name / "double_descent.json").read_text())
        assert t["2"]["percent_error"][1][1] == pytest.approx(0.5 * scale)  # not the mean
        assert (figures / name / "fig3_double_descent.png").exists()
        assert "no floor" in (figures / name / "scaling.md").read_text()
    assert not (figures / "double_descent.json").exists()


def test_a_recipe_axis_splits_the_percent_error_figures_by_method(tmp_path):
    rows = [
        {**r, "trial": f"{r['trial']}-{name}", "recipe": name, "method": name.split("_")[1]}
        for name in ("digits_mmcr", "digits_clamp")
        for r in _rows()
    ]
    _curves(tmp_path, rows)
    write_json(tmp_path / "summary.json", rows)
    write_json(
        tmp_path / "sweep.json", {"spec": {"grid": {"recipe": ["digits_mmcr", "digits_clamp"]}}}
    )
    files = plot_sweep(tmp_path)
    assert {f.parent.name for f in files if f.suffix == ".png"} == {
        "recipe=digits_clamp",
        "recipe=digits_mmcr",
    }


def test_titles_fit_their_figure_with_one_k_panel(tmp_path, monkeypatch):
    # issue 18.22: with one K panel the suptitle ran off both sides of the figure
    import matplotlib.pyplot as plt

    rows = [r for r in _rows() if r["K"] == 2]
    _curves(tmp_path, rows)
    write_json(tmp_path / "summary.json", rows)
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    plot_sweep(tmp_path)
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        if fig._suptitle is not None:
            box = fig._suptitle.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width, fig._suptitle.get_text()


def test_a_sweep_over_methods_draws_time_to_accuracy_in_one_figure(tmp_path):
    # issue 19: kNN and online accuracy against wall-clock and FLOPs, a colour per method
    rows = []
    for recipe in ("digits_mmcr", "digits_clamp"):
        for seed in (0, 1):
            r = {"trial": f"{recipe}-{seed}", "status": "done", "recipe": recipe, "seed": seed}
            rows.append({**r, "method": recipe.split("_")[1], "P": 16, "D": 16, "K": 2})
            trial = tmp_path / "trials" / r["trial"]
            trial.mkdir(parents=True)
            lines = [
                {"step": s, "loss": 0.0, "flops": s * 1e9, "percent_error": 0.3} for s in (1, 2)
            ]
            lines += [
                {
                    "step": 10 * e,
                    "epoch": e,
                    "flops": 1e10 * e,
                    "train_seconds": 3.0 * e,
                    "knn_val_accuracy": 0.1 * e,
                    "online_linear_val_accuracy": 0.08 * e,
                }
                for e in (1, 2, 3)
            ]
            (trial / "metrics.jsonl").write_text("".join(f"{json.dumps(x)}\n" for x in lines))
    for r in rows:
        r["percent_error"] = 0.3
    write_json(tmp_path / "summary.json", rows)
    write_json(tmp_path / "sweep.json", {"spec": {"grid": {"recipe": ["a", "b"]}}})
    files = plot_sweep(tmp_path)
    assert tmp_path / "figures" / "accuracy_vs_compute.png" in files


def test_the_speedrun_sweep_is_every_method_at_one_budget():
    from manifold_ssl.experiments.sweep import expand, load_spec

    trials = expand(load_spec("cifar10_speedrun"))
    assert len(trials) == 6 * 3
    assert {t.cfg.train.time_budget_s for t in trials} == {600}
    assert len({t.cfg.method.name for t in trials}) == 6


def test_clamp_dynamics_are_drawn_against_the_step_with_integer_ticks(tmp_path, monkeypatch):
    # issue 27.17b/c: steps 0 and 9 were both drawn at epoch 0, without a title; step ticks at
    # fractions (2.5)
    from matplotlib.figure import Figure

    from manifold_ssl.experiments.plots import plot_probe_records

    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def keep(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    steps = [0, 1, 2, 3]  # one epoch of 10 steps: every probe is at epoch 0
    probes = [
        {
            "step": s,
            "epoch": 0,
            "probe/seconds": 0.1,
            "probe/neighbours": 10.0 - s,
            "probe/size": 1.0 + s,
            "probe/coherence/all/within": 0.5,
            "probe/coherence/all/across": 0.2,
        }
        for s in steps
    ]
    plot_probe_records(tmp_path, probes, tmp_path / "out")
    fig = saved["clamp_dynamics.png"]
    assert "CLAMP" in fig._suptitle.get_text()
    for ax in fig.axes[:2]:
        assert list(ax.lines[0].get_xdata()) == steps and ax.get_xlabel() == "training step"
    for name in ("clamp_dynamics.png", "probes.png", "coherence.png"):
        for ax in saved[name].axes:
            if ax.get_xlabel() == "training step":
                ticks = ax.xaxis.get_major_locator()()
                assert all(float(t).is_integer() for t in ticks), (name, ticks)
