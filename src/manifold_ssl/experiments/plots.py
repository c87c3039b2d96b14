"""Figures of a sweep like Schaeffer et al.'s, each also written as data.

- Fig. 3: pretraining percent error against P, a line per D, a panel per K, the P = D points
  marked; and a P × D heat map per K (``fig3_double_descent.png``, ``fig3_heatmap.png``,
  ``double_descent.json`` with the tables and how many row and column curves peak at P = D).
- Fig. 4: percent error against cumulative training FLOPs (log–log), a panel per (P, D), a line
  per K, with a power law E = a·C^(−b) fitted by least squares in log–log space over the fit
  range (the FLOPs after the first 10% of the run: the warm-up transient excluded), the exponent's
  95% bootstrap interval (resampling the logged points), R², and a saturating E∞ + a·C^(−b) as a
  check (``fig4_scaling.png``, ``scaling.json``, ``scaling.md`` comparing on- and off-diagonal
  exponents and initial errors).
- Fig. 5 and Fig. 7 (multimodal sweeps, trials evaluated): zero-shot top-1 against the batch
  N, a line per method, N = D marked; and the two diagnostics of Fig. 7 against N, the
  complement of the mean squared centroid norm ``1 − ‖μ‖²`` and the percent error
  (``fig5_zero_shot.png``, ``fig7_diagnostics.png``, ``zero_shot.json``: mean and standard
  deviation over seeds).

For a run, :func:`plot_run` draws its probes (:mod:`manifold_ssl.probes`) and CLAMP's packing
dynamics (Zhang et al. Sec. 5, Fig. 3).

Fits with NumPy and SciPy's ``curve_fit``; figures with matplotlib (Agg).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..probes.settings import PROBE_METRICS
from ..runinfo import atomic_write_text, read_metrics, write_json

__all__ = [
    "double_descent_tables",
    "fit_power_law",
    "plot_run",
    "plot_sweep",
    "scaling_fits",
    "zero_shot_tables",
]

FIT_START = 0.1  # fraction of a run's FLOPs excluded from the fit (warm-up transient)


def _finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("percent_error") is not None and r.get("status") == "done"]


def double_descent_tables(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per K: the P × D table of percent error (seeds averaged), and for every row (fixed P)
    and column (fixed D) whose range contains the diagonal, whether its maximum is at P = D."""
    by_k: dict[int, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in _finished(rows):
        by_k[r["K"]][(r["P"], r["D"])].append(r["percent_error"])
    out: dict[str, Any] = {}
    for k, cells in sorted(by_k.items()):
        ps = sorted({p for p, _ in cells})
        ds = sorted({d for _, d in cells})
        table = [
            [float(np.mean(cells[(p, d)])) if (p, d) in cells else None for d in ds] for p in ps
        ]
        peaks = {"rows": 0, "rows_with_diagonal": 0, "columns": 0, "columns_with_diagonal": 0}
        for i, p in enumerate(ps):
            vals = table[i]
            if p in ds and all(v is not None for v in vals):
                peaks["rows_with_diagonal"] += 1
                peaks["rows"] += int(ds[int(np.argmax(np.array(vals, dtype=float)))] == p)
        for j, d in enumerate(ds):
            vals = [table[i][j] for i in range(len(ps))]
            if d in ps and all(v is not None for v in vals):
                peaks["columns_with_diagonal"] += 1
                peaks["columns"] += int(ps[int(np.argmax(np.array(vals, dtype=float)))] == d)
        out[str(k)] = {"P": ps, "D": ds, "percent_error": table, "peaks_on_diagonal": peaks}
    return out


_ZERO_SHOT_KEYS = ("zero_shot_test_accuracy", "centroid_norm_complement", "percent_error")


def zero_shot_tables(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method (and D; per recipe when a ``recipe`` axis gives one method twice): for every
    batch N, the mean and standard deviation over seeds of
    zero-shot test top-1, ``1 − ‖μ‖²`` and percent error, and the number of seeds."""
    cells: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    done = [
        r
        for r in rows
        if r.get("status") == "done" and r.get("zero_shot_test_accuracy") is not None
    ]
    recipes = defaultdict(set)  # a method under two recipes gets a line per recipe
    for r in done:
        recipes[r["method"]].add(r.get("recipe"))
    for r in done:
        name = r["method"] if len(recipes[r["method"]]) == 1 else f"{r['method']} {r['recipe']}"
        cells[(name, r["D"])][r["P"]].append(r)
    out: dict[str, Any] = {}
    for (method, d), by_p in sorted(cells.items()):
        ps = sorted(by_p)
        entry: dict[str, Any] = {"method": method, "D": d, "N": ps, "seeds": []}
        for key in _ZERO_SHOT_KEYS:
            vals = [[r[key] for r in by_p[p] if r.get(key) is not None] for p in ps]
            entry[key] = [float(np.mean(v)) if v else None for v in vals]
            entry[f"{key}_std"] = [float(np.std(v)) if v else None for v in vals]
        entry["seeds"] = [len(by_p[p]) for p in ps]
        out[f"{method} D={d}"] = entry
    return out


def _plot_zero_shot(tables: dict[str, Any], out: Path, plt: Any, label: str) -> list[Path]:
    """Fig. 5 (zero-shot top-1 against N) and Fig. 7 (its diagnostics against N)."""
    panels = [
        ("zero_shot_test_accuracy", "zero-shot top-1, test (%)", "fig5_zero_shot.png"),
        ("centroid_norm_complement", "1 − ‖μ‖² (training batches, %)", "fig7_diagnostics.png"),
        ("percent_error", "percent error (training batches, %)", "fig7_diagnostics.png"),
    ]
    fig5, ax5 = plt.subplots(figsize=(5.2, 3.8))
    fig7, ax7 = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, label, _) in zip([ax5, *ax7], panels, strict=True):
        for name, t in tables.items():
            mean = np.array([np.nan if v is None else 100 * v for v in t[key]])
            std = np.array([np.nan if v is None else 100 * v for v in t[f"{key}_std"]])
            ax.errorbar(t["N"], mean, yerr=std, fmt="o-", ms=3, capsize=2, label=name)
        for d in sorted({t["D"] for t in tables.values()}):
            ax.axvline(d, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size N (dashed: N = D)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax5.legend(fontsize=8)
    context = f" ({label})" if label else ""
    ax5.set_title("zero-shot classification against batch size" + context, fontsize=9)
    ax7[0].legend(fontsize=8)
    _suptitle(fig7, "Fig. 7 diagnostics of the image-caption centroids" + context, 10)
    written = []
    for fig, name in ((fig5, "fig5_zero_shot.png"), (fig7, "fig7_diagnostics.png")):
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


def fit_power_law(
    flops: np.ndarray, error: np.ndarray, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """E = a·C^(−b) by least squares on (log C, log E); b's 95% bootstrap interval; R² in log
    space; and a saturating E∞ + a·C^(−b) (SciPy ``curve_fit``) as a check, with
    ``e_inf_identified`` false where the data show no floor (E∞ within two standard errors of
    its bound 0, which scaling.md prints as "no floor" rather than 0.0%)."""
    from scipy.optimize import curve_fit

    x, y = np.log(flops), np.log(error)
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    r2 = 1.0 - np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-300)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0:
            boots.append(-np.polyfit(x[idx], y[idx], 1)[0])
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
    out: dict[str, Any] = {
        "exponent": float(-slope),
        "exponent_95": [float(lo), float(hi)],
        "prefactor": float(np.exp(intercept)),
        "r2": float(r2),
        "points": len(x),
        "flops_range": [float(flops.min()), float(flops.max())],
    }
    try:
        c0 = flops.min()

        def saturating(c: np.ndarray, e_inf: float, a: float, b: float) -> np.ndarray:
            return e_inf + a * (c / c0) ** (-b)

        params, cov = curve_fit(
            saturating,
            flops,
            error,
            p0=(0.5 * error.min(), error.max(), max(-slope, 0.1)),
            bounds=([0.0, 0.0, 0.0], [1.0, np.inf, 10.0]),
            maxfev=20000,
        )
        out["saturating"] = {
            "e_inf": float(params[0]),
            "a": float(params[1]),
            "b": float(params[2]),
            # a floor the data show: E∞ above twice its standard error (and not negligible
            # against the errors); a fit pinned at its bound 0 shows none
            "e_inf_identified": bool(
                params[0] > max(2 * np.sqrt(max(cov[0, 0], 0.0)), 1e-3 * error.min())
                and params[0] < 1 - 1e-9
            ),
        }
    except (RuntimeError, ValueError) as err:  # no convergence: say so rather than guess
        out["saturating"] = {"error": str(err)}
    return out


def scaling_fits(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One power-law fit per finished trial, on its logged (cumulative FLOPs, percent error)."""
    fits = []
    for r in _finished(rows):
        records = read_metrics(sweep_dir / "trials" / r["trial"] / "metrics.jsonl")
        pts = np.array(
            [(m["flops"], m["percent_error"]) for m in records if "flops" in m and "loss" in m],
            dtype=float,
        )
        if len(pts) < 4:
            continue
        keep = (pts[:, 0] >= FIT_START * pts[-1, 0]) & (pts[:, 1] > 0)
        fit = fit_power_law(pts[keep, 0], pts[keep, 1])
        fits.append(
            {
                **{k: r[k] for k in ("trial", "P", "D", "K", "seed")},
                "diagonal": r["P"] == r["D"],
                "initial_error": float(pts[0, 1]),
                "curve": pts.tolist(),
                **fit,
            }
        )
    return fits


def _scaling_table(fits: list[dict[str, Any]]) -> str:
    lines = [
        f"Power laws E = a·C^(-b) fitted over the FLOPs after the first {FIT_START:.0%} of each "
        "run (log-log least squares; 95% bootstrap interval of b).",
        "",
        "| K | P = D | trials | mean b | median R² | mean initial error |",
        "|---|---|---|---|---|---|",
    ]
    for k in sorted({f["K"] for f in fits}):
        for diag in (True, False):
            sel = [f for f in fits if f["K"] == k and f["diagonal"] == diag]
            if not sel:
                continue
            lines.append(
                f"| {k} | {'yes' if diag else 'no'} | {len(sel)} | "
                f"{np.mean([f['exponent'] for f in sel]):.3f} | "
                f"{np.median([f['r2'] for f in sel]):.3f} | "
                f"{100 * np.mean([f['initial_error'] for f in sel]):.1f}% |"
            )
    lines += ["", "| P | D | K | b | 95% | R² | E∞ (saturating) |", "|---|---|---|---|---|---|---|"]
    for f in fits:
        sat = f["saturating"].get("e_inf")
        if sat is None:
            e_inf = "-"
        elif not f["saturating"].get("e_inf_identified", True):
            e_inf = "no floor"
        else:
            e_inf = f"{100 * sat:.1f}%"
        lines.append(
            f"| {f['P']} | {f['D']} | {f['K']} | {f['exponent']:.3f} | "
            f"[{f['exponent_95'][0]:.3f}, {f['exponent_95'][1]:.3f}] | {f['r2']:.3f} | "
            f"{e_inf} |"
        )
    return "\n".join(lines) + "\n"


#: Grid axes each figure draws (P, D, K) or lays out itself (seeds are averaged, with their
#: spread); every other grid axis splits the figures into one set per value.
DRAWN_AXES = ("P", "D", "K", "seed")


def figure_groups(
    sweep_dir: Path, rows: list[dict[str, Any]], drawn: tuple[str, ...] = ()
) -> list[tuple[str, list[Any]]]:
    """The rows split by every grid axis the figures do not draw (``optim.lr``, ``recipe`` …):
    ``[(label, rows)]``, one group with label ``""`` when no such axis has two values. The axes
    come from ``sweep.json`` (absent: every key of the trials' grid points); ``drawn``: more
    axes the figures draw themselves."""
    spec_file = sweep_dir / "sweep.json"
    if spec_file.exists():
        axes = list(json.loads(spec_file.read_text())["spec"]["grid"])
    else:
        axes = sorted(
            {
                k
                for f in (sweep_dir / "trials").glob("*.json")
                for k in json.loads(f.read_text())["point"]
            }
        )
    split = [
        a for a in axes if a not in DRAWN_AXES + drawn and len({repr(r.get(a)) for r in rows}) > 1
    ]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[", ".join(f"{a}={r.get(a)}" for a in split)].append(r)
    return sorted(groups.items())


def _group_dir(out: Path, label: str) -> Path:
    """``figures/`` for the only group, else ``figures/<axis=value_...>`` (path-safe)."""
    if not label:
        return out
    safe = "".join(c if c.isalnum() or c in "._=-" else "_" for c in label.replace(", ", "_"))
    return out / safe


def _suptitle(fig: Any, text: str, width_in: float) -> None:
    """A suptitle wrapped to the figure's width (one narrow panel clipped long titles)."""
    import textwrap

    fig.suptitle(textwrap.fill(text, max(30, int(width_in * 11))), fontsize=10)


def plot_sweep(sweep_dir: str | Path) -> list[Path]:
    """Write every figure of :data:`SWEEP_FIGURES` and its data into ``sweep_dir/figures``
    (one sub-directory per value of each grid axis a figure does not draw:
    :func:`figure_groups`); returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    rows = json.loads((sweep_dir / "summary.json").read_text())
    out = sweep_dir / "figures"
    out.mkdir(exist_ok=True)
    written: list[Path] = []
    labels: set[str] = set()
    for figure in SWEEP_FIGURES.values():
        trials = figure.trials(rows)
        if not trials:
            continue
        for label, group in figure_groups(sweep_dir, trials, figure.drawn):
            target = _group_dir(out, label)
            target.mkdir(exist_ok=True)
            files = figure.draw(FigureContext(sweep_dir, target, label, plt), group)
            written += files
            labels.update([label] if files else [])
    if len(labels) > 1:
        write_json(out / "groups.json", {lb: _group_dir(out, lb).name for lb in sorted(labels)})
        written.append(out / "groups.json")
    if not written:
        raise ValueError(f"{sweep_dir}: no finished trial with a percent error to plot")
    return written


def _monitor_curves(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(method label, monitor records) of every trial that logged the kNN monitor."""
    out = []
    for r in rows:
        if "trial" not in r:
            continue
        records = read_metrics(sweep_dir / "trials" / r["trial"] / "metrics.jsonl")
        monitored = [m for m in records if "knn_val_accuracy" in m and "train_seconds" in m]
        if monitored:
            out.append((str(r.get("recipe") or r.get("method")), monitored))
    return out


def _plot_sweep_accuracy(
    curves: list[tuple[str, list[Any]]], out: Path, plt: Any, label: str
) -> Path:
    """kNN (solid) and online-linear (dashed) validation top-1 of every trial against the
    training clock and against FLOPs, a colour per method (its seeds share it)."""
    methods = sorted({m for m, _ in curves})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x_key, x_label in (
        (axes[0], "train_seconds", "training wall-clock (s)"),
        (axes[1], "flops", "training FLOPs"),
    ):
        seen = set()
        for method, records in curves:
            xs = [m[x_key] for m in records]
            name = None if method in seen else method
            seen.add(method)
            ax.plot(
                xs,
                [100 * m["knn_val_accuracy"] for m in records],
                "-",
                color=colours[method],
                label=name,
            )
            online = [m.get("online_linear_val_accuracy") for m in records]
            if any(v is not None for v in online):
                ys = [np.nan if v is None else 100 * v for v in online]
                ax.plot(xs, ys, "--", color=colours[method])
        ax.set(xlabel=x_label, ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8, title="kNN solid, online head dashed", title_fontsize=7)
    context = f" ({label})" if label else ""
    _suptitle(fig, "Time and compute to accuracy, every trial" + context, 11)
    fig.tight_layout()
    path = out / "accuracy_vs_compute.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _methods(rows: list[dict[str, Any]], label: str) -> tuple[str, str]:
    """The methods of a group of trials, and the group's label as a title's context."""
    methods = ", ".join(sorted({str(r.get("method", "")) for r in _finished(rows)} - {""}))
    return methods, f" ({label})" if label else ""


def _draw_double_descent(ctx: FigureContext, rows: list[dict[str, Any]]) -> list[Path]:
    """Fig. 3: percent error against P, a line per D and a panel per K (P = D starred), and
    the P × D heat map per K, with their tables (``double_descent.json``)."""
    tables = double_descent_tables(rows)
    if not tables:
        return []
    out, plt = ctx.out, ctx.plt
    methods, context = _methods(rows, ctx.label)
    write_json(out / "double_descent.json", tables)
    ks = sorted(tables, key=int)
    width = 4.5 * len(ks)
    fig, axes = plt.subplots(1, len(ks), figsize=(width, 3.9), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        t = tables[k]
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(t["D"])))
        for j, d in enumerate(t["D"]):
            ys = [t["percent_error"][i][j] for i in range(len(t["P"]))]
            pct = [100 * y if y is not None else np.nan for y in ys]
            ax.plot(t["P"], pct, "o-", color=colours[j], ms=3, label=f"D = {d}")
            if d in t["P"] and ys[t["P"].index(d)] is not None:
                ax.plot(d, 100 * ys[t["P"].index(d)], "*", color=colours[j], ms=12, mec="k")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of manifolds P (batch size)")
        ax.set_ylabel("pretraining percent error (%)")
        ax.set_title(f"K = {k} views (★: P = D)")
    axes[0][-1].legend(fontsize=7, loc="best")
    what = "pretraining percent error against P, one line per embedding dimension D"
    _suptitle(fig, f"{methods} {what}{context}", width)
    lines = _saved(fig, out / "fig3_double_descent.png", plt)
    fig, axes = plt.subplots(1, len(ks), figsize=(width, 4.1), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        t = tables[k]
        grid = [[np.nan if v is None else 100 * v for v in row] for row in t["percent_error"]]
        im = ax.imshow(np.array(grid), origin="lower", cmap="magma")
        ax.set_xticks(range(len(t["D"])), t["D"])
        ax.set_yticks(range(len(t["P"])), t["P"])
        ax.set_xlabel("embedding dimension D")
        ax.set_ylabel("number of manifolds P")
        ax.set_title(f"K = {k}: percent error (%)")
        fig.colorbar(im, ax=ax)
    _suptitle(fig, f"{methods} pretraining percent error{context}", width)
    return [out / "double_descent.json", lines, _saved(fig, out / "fig3_heatmap.png", plt)]


def _draw_scaling(ctx: FigureContext, rows: list[dict[str, Any]]) -> list[Path]:
    """Fig. 4: percent error against FLOPs with its power-law fit per trial (``scaling.json``,
    ``scaling.md``)."""
    fits = scaling_fits(ctx.sweep_dir, rows)
    if not fits:
        return []
    out = ctx.out
    write_json(out / "scaling.json", [{k: v for k, v in f.items() if k != "curve"} for f in fits])
    atomic_write_text(out / "scaling.md", _scaling_table(fits))
    methods, context = _methods(rows, ctx.label)
    figure = _plot_scaling(fits, out / "fig4_scaling.png", ctx.plt, methods + context)
    return [out / "scaling.json", out / "scaling.md", figure]


def _draw_zero_shot(ctx: FigureContext, rows: list[dict[str, Any]]) -> list[Path]:
    """Figs. 5 and 7 of a multimodal sweep, with their tables (``zero_shot.json``)."""
    tables = zero_shot_tables(rows)
    if not tables:
        return []
    write_json(ctx.out / "zero_shot.json", tables)
    return [ctx.out / "zero_shot.json", *_plot_zero_shot(tables, ctx.out, ctx.plt, ctx.label)]


def _draw_accuracy(ctx: FigureContext, rows: list[dict[str, Any]]) -> list[Path]:
    """Time to accuracy: the kNN monitor and online probe against wall-clock and FLOPs."""
    curves = _monitor_curves(ctx.sweep_dir, rows)
    return [_plot_sweep_accuracy(curves, ctx.out, ctx.plt, ctx.label)] if curves else []


def _saved(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_scaling(fits: list[dict[str, Any]], path: Path, plt: Any, title: str) -> Path:
    ps = sorted({f["P"] for f in fits})
    ds = sorted({f["D"] for f in fits})
    fig, axes = plt.subplots(
        len(ps),
        len(ds),
        figsize=(2.2 * len(ds), 1.9 * len(ps)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    colours = {k: plt.cm.tab10(i) for i, k in enumerate(sorted({f["K"] for f in fits}))}
    for f in fits:
        ax = axes[ps.index(f["P"])][ds.index(f["D"])]
        c = np.array(f["curve"])
        ax.loglog(c[:, 0], 100 * c[:, 1], color=colours[f["K"]], lw=1, label=f"K = {f['K']}")
        lo, hi = f["flops_range"]
        xs = np.geomspace(lo, hi, 20)
        fit = 100 * f["prefactor"] * xs ** (-f["exponent"])
        ax.loglog(xs, fit, "--", color=colours[f["K"]], lw=0.8)
        ax.set_title(f"P={f['P']} D={f['D']}" + (" (P = D)" if f["diagonal"] else ""), fontsize=7)
        if f["diagonal"]:
            for side in ax.spines.values():
                side.set_edgecolor("red")
    for ax in axes[-1]:
        ax.set_xlabel("training FLOPs", fontsize=7)
    for row in axes:
        row[0].set_ylabel("percent error (%)", fontsize=7)
    axes[0][-1].legend(fontsize=6)
    _suptitle(
        fig,
        f"{title}: percent error against compute; dashed: power-law fits (red frame: P = D)",
        2.2 * len(ds),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class FigureContext:
    """Where a sweep figure draws: the sweep, the folder of its group of trials, the group's
    label (its values of the axes the figure does not draw) and pyplot."""

    sweep_dir: Path
    out: Path
    label: str
    plt: Any


@dataclass(frozen=True)
class SweepFigure:
    """A figure of a sweep: the summary columns it reads (from
    :data:`~manifold_ssl.experiments.columns.COLUMNS`), which trials it draws, the grid axes
    it draws itself (every other axis splits it into one figure per value), and ``draw``, which
    writes it and its data for one group of trials and returns the files ([] when the group has
    nothing to draw)."""

    columns: tuple[str, ...]
    trials: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    draw: Callable[[FigureContext, list[dict[str, Any]]], list[Path]]
    drawn: tuple[str, ...] = ()


def _image_trials(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials of image views (a multimodal trial's figures are Figs. 5 and 7)."""
    return [r for r in _finished(rows) if r.get("zero_shot_test_accuracy") is None]


def _zero_shot_trials(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("zero_shot_test_accuracy") is not None]


#: Every figure ``plot`` draws for a sweep (the multimodal ones draw the methods as lines).
SWEEP_FIGURES: dict[str, SweepFigure] = {
    "double_descent": SweepFigure(("percent_error",), _image_trials, _draw_double_descent),
    "scaling": SweepFigure(("percent_error",), _image_trials, _draw_scaling),
    "zero_shot": SweepFigure(
        _ZERO_SHOT_KEYS, _zero_shot_trials, _draw_zero_shot, drawn=("recipe",)
    ),
    "accuracy_vs_compute": SweepFigure(
        (), lambda rows: [r for r in rows if "trial" in r], _draw_accuracy, drawn=("recipe",)
    ),
}


PROBE_PANELS = tuple(PROBE_METRICS.items())  # the probe's own table


def plot_run(run_dir: str | Path) -> list[Path]:
    """A run's probes (``probes.every_steps``) against step: every ``probe/`` metric, and CLAMP's
    dynamics (neighbours, size against epoch; pair-distance histograms at the first and last
    probe, Fig. 3c). Figures and ``probes.json`` into ``run_dir/figures``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    probes = [r for r in records if "probe/seconds" in r]
    monitored = [r for r in records if "knn_val_accuracy" in r and "train_seconds" in r]
    if not probes and not monitored:
        raise ValueError(
            f"{run_dir} has no probe or monitor records; pretrain with --probes.every_steps=N "
            "or --train.knn_every=N"
        )
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    written = [_plot_accuracy(monitored, out, plt, run_dir.name)] if monitored else []
    return written + (_plot_probes(run_dir, probes, out, plt) if probes else [])


def _plot_accuracy(records: list[dict[str, Any]], out: Path, plt: Any, name: str) -> Path:
    """Time to accuracy: the kNN monitor's and the online head's validation top-1 against the
    training wall-clock (evaluation excluded) and the training FLOPs."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, x_key, label in (
        (axes[0], "train_seconds", "training wall-clock (s)"),
        (axes[1], "flops", "training FLOPs"),
    ):
        xs = [r[x_key] for r in records]
        ax.plot(xs, [100 * r["knn_val_accuracy"] for r in records], "o-", ms=3, label="kNN")
        online = [r.get("online_linear_val_accuracy") for r in records]
        if any(v is not None for v in online):
            ys = [np.nan if v is None else 100 * v for v in online]
            ax.plot(xs, ys, "s--", ms=3, label="online linear head")
        ax.set(xlabel=label, ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xscale("log")
    _suptitle(fig, f"{name}: accuracy against training time and compute", 10)
    fig.tight_layout()
    path = out / "accuracy_vs_compute.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probe_records(source: Path, probes: list[dict[str, Any]], out: Path) -> list[Path]:
    """The probes' figures of ``probes`` (records with ``step``, ``epoch`` and ``probe/...``
    values; the pair-distance histograms from ``source/probes``) into ``out``: a run's probes
    (:func:`plot_run`) or a run's kept checkpoints probed after it
    (:mod:`manifold_ssl.experiments.history`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    return _plot_probes(source, probes, out, plt)


def _integer_ticks(*axes: Any) -> None:
    """Integer x ticks (steps and epochs are counts: no tick at step 2.5)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_probes(run_dir: Path, probes: list[dict[str, Any]], out: Path, plt: Any) -> list[Path]:
    """The probes' figures (see :func:`plot_run`)."""
    write_json(out / "probes.json", probes)
    panels = [(k, label) for k, label in PROBE_PANELS if f"probe/{k}" in probes[0]]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    steps = [r["step"] for r in probes]
    for ax, (key, label) in zip(list(axes.flat)[: len(panels)], panels, strict=True):
        ax.plot(steps, [r[f"probe/{key}"] for r in probes], "o-", ms=3)
        ax.set_xlabel("training step")
        ax.set_title(label, fontsize=9)
        _integer_ticks(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"probes of {run_dir.name} (fixed validation images and views)")
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=110)
    plt.close(fig)

    hists = read_metrics(run_dir / "probes" / "pair_distances.jsonl")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    # against the step: a probe's epoch is the epoch it fell in (steps 0 and 9 both epoch 0)
    axes[0].plot(steps, [r["probe/neighbours"] for r in probes], "o-", ms=3)
    axes[0].set(
        xlabel="training step", ylabel="neighbours per sub-manifold", title="(a) neighbours"
    )
    axes[1].plot(steps, [r["probe/size"] for r in probes], "o-", ms=3)
    axes[1].set(xlabel="training step", ylabel="sub-manifold size", title="(b) size")
    _integer_ticks(axes[0], axes[1])
    for rec, name in ((hists[0], "first probe"), (hists[-1], "last probe")) if hists else ():
        counts = np.array(rec["counts"])
        lo, hi = rec["edges"]
        edges = np.linspace(lo, hi, len(counts) + 1)
        axes[2].stairs(counts / max(counts.sum(), 1), edges, label=f"{name} (step {rec['step']})")
    axes[2].set(
        xlabel="distance between normalised embeddings",
        ylabel="fraction of pairs",
        title="(c) pair distances",
    )
    axes[2].legend(fontsize=8)
    fig.suptitle(f"CLAMP training dynamics of {run_dir.name} (Zhang et al. Fig. 3)")
    fig.tight_layout()
    fig.savefig(out / "clamp_dynamics.png", dpi=110)
    plt.close(fig)
    written = [out / "probes.json", out / "probes.png", out / "clamp_dynamics.png"]
    groups = [
        g
        for g in ("all", "first", "last", "shuffled")
        if f"probe/coherence/{g}/within" in probes[0]
    ]
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 3.0), squeeze=False)
        for ax, group in zip(axes[0], groups, strict=True):
            for side, style in (("within", "o-"), ("across", "s--")):
                ax.plot(
                    steps,
                    [r[f"probe/coherence/{group}/{side}"] for r in probes],
                    style,
                    ms=3,
                    label=f"{side} class",
                )
            title = {
                "all": "all parameters",
                "first": "first layer",
                "last": "last layer",
                "shuffled": "control: shuffled labels",
            }[group]
            ax.set(xlabel="training step", ylabel="gradient cosine", title=title)
            _integer_ticks(ax)
            ax.legend(fontsize=8)
        fig.suptitle("gradient coherence (Yerxa et al. Fig. 3)")
        fig.tight_layout()
        fig.savefig(out / "coherence.png", dpi=110)
        plt.close(fig)
        written.append(out / "coherence.png")
    return written
