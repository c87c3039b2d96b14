"""``manifold-ssl simulate``: Fig. 2 of Schaeffer et al. on a small grid, and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from manifold_ssl.cli import main
from manifold_ssl.experiments import simulate_uniform


@pytest.fixture(scope="module")
def small_grid():
    sizes = [8, 16, 32, 64, 128]
    return simulate_uniform(sizes, sizes, repeats=3, seed=1, progress=False)


def test_percent_error_peaks_at_p_equals_d_and_falls_on_either_side(small_grid):
    for d in small_grid.D:
        errors = {p: small_grid.cell(p, d)["percent_error_mean"] for p in small_grid.P}
        assert max(errors, key=errors.get) == d
        below = [errors[p] for p in small_grid.P if p <= d]
        above = [errors[p] for p in small_grid.P if p >= d]
        assert below == sorted(below) and above == sorted(above, reverse=True)


def test_square_case_matches_marchenko_pastur(small_grid):
    # singular values of a square matrix with unit rows follow the quarter circle on [0, 2]:
    # mean 8/(3π), so the percent error tends to 1 − 8/(3π) ≈ 15.1%
    limit = 1 - 8 / (3 * math.pi)
    assert small_grid.cell(128, 128)["percent_error_mean"] == pytest.approx(limit, abs=0.01)


def test_every_draw_respects_the_bound(small_grid):
    for row in small_grid.rows:
        assert 0 <= row["nuclear_norm"] <= row["bound"] * (1 + 1e-12)


def test_same_seed_same_numbers():
    a = simulate_uniform([16, 40], [24], repeats=2, seed=3, progress=False)
    b = simulate_uniform([16, 40], [24], repeats=2, seed=3, progress=False)
    c = simulate_uniform([16, 40], [24], repeats=2, seed=4, progress=False)
    key = [r["nuclear_norm"] for r in a.rows]
    assert key == [r["nuclear_norm"] for r in b.rows]
    assert key != [r["nuclear_norm"] for r in c.rows]


def test_large_cells_are_skipped_and_listed():
    result = simulate_uniform([8, 64], [8, 64], repeats=1, max_min_dim=32, progress=False)
    assert result.skipped == [(64, 64)]
    assert result.cell(64, 64) is None and result.cell(64, 8) is not None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="P"):
        simulate_uniform([], [4])
    with pytest.raises(ValueError, match="repeats"):
        simulate_uniform([4], [4], repeats=0)


def test_cli_writes_run_directory(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--P",
            "8:32",
            "--D",
            "4,8,16,32",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    (run,) = tmp_path.iterdir()
    for name in ("config.json", "meta.json", "results.json", "heatmap.png", "lines.png"):
        assert (run / name).stat().st_size > 0
    results = json.loads((run / "results.json").read_text())
    assert len(results["rows"]) == 3 * 4 * 2 and results["P"] == [8, 16, 32]
    assert json.loads((run / "config.json").read_text())["repeats"] == 2
    assert "P=D" in capsys.readouterr().out


def test_cli_rejects_bad_lists(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--P", "ten"])
    assert "expected positive integers" in capsys.readouterr().err


def test_the_heat_map_labels_do_not_overlap_on_the_papers_grid(tmp_path, monkeypatch):
    # issue 18.22: the x tick labels of an 11 × 11 grid ran into each other
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from manifold_ssl.experiments.simulate import SimulationResult, plot_simulation

    grid = [10, 20, 40, 79, 158, 316, 631, 1259, 2512, 5012, 10000]
    rows = [{"P": p, "D": d, "percent_error": 0.1, "nuclear_norm": 1.0} for p in grid for d in grid]
    result = SimulationResult(grid, grid, 1, 0, 10**6, rows)
    saved = []
    monkeypatch.setattr(plt, "close", lambda fig: saved.append(fig))
    plot_simulation(result, tmp_path)
    fig = saved[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a, b in itertools.pairwise(boxes):
            assert not a.overlaps(b)
