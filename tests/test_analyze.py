"""``manifold-ssl analyze`` on features, an untrained model and a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_run_args

from manifold_ssl.cli import main

SMALL = ["--per-class", "10", "--n-exemplars", "12", "--n-augment", "6", "--n-t", "50", "--quiet"]
FILES = ("analysis.json", "analysis.md", "spectrum.png", "similarity.png", "tsne.png")


def test_analyze_features_with_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = rng.standard_normal((4, 16))[y] * 3 + rng.standard_normal((120, 16))
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert (
        main(["analyze", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "y.npy"), *SMALL]) == 0
    )
    out = tmp_path / "f-analysis"
    for name in FILES:
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["manifolds"]["features"]["capacity"] > 0
    # one manifold per class: every pair is of different classes, not split into an empty side
    assert -1 <= result["similarity"]["centroid_cosine"] <= 1
    assert result["settings"]["per_class"] == 10 and result["settings"]["input_shape"] == [120, 16]
    assert main(["analyze", str(tmp_path / "f.npy")]) == 2  # (N, F) without labels
    assert "--labels" in capsys.readouterr().err


def test_analyze_of_the_default_digits_run_works_with_default_options(tmp_path):
    # the README's examples on the main job: its test split has about 36 images per class,
    # fewer than the default 50 per class manifold
    args = tiny_run_args(tmp_path, "--train.epochs=1", "--train.knn_every=0")
    assert main(["pretrain", "--quiet", "--no-eval", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    small = ["--n-exemplars", "8", "--n-augment", "4", "--n-t", "30", "--quiet"]
    assert main(["analyze", str(run), *small]) == 0
    result = json.loads((run / "analysis" / "analysis.json").read_text())
    assert 30 <= result["settings"]["per_class"] < 50
    assert result["settings"]["classes"] == list(range(10))  # every digit class
    gc = result["gradient_coherence"]  # Yerxa Fig. 3, with its shuffled-label control
    assert {
        f"{g}/{s}" for g in ("all", "first", "last", "shuffled") for s in ("within", "across")
    } == set(gc)
    assert "gradient coherence" in (run / "analysis" / "analysis.md").read_text()
    # issue 27.1: the encoder's layers, which the objective reaches (not the online head)
    layers = result["gradient_coherence_layers"]
    assert all(n.startswith("backbone.") for n in layers.values()), layers
    assert gc["last/within"] != 0 and gc["last/across"] != 0


def test_analyze_untrained_model_and_trained_run(tmp_path):
    assert (
        main(
            ["analyze", "--untrained", "digits_mmcr", "--out", str(tmp_path / "untrained"), *SMALL]
        )
        == 0
    )
    untrained = json.loads((tmp_path / "untrained" / "analysis.json").read_text())
    assert (
        untrained["layers"][-1] == "pool"
        and (tmp_path / "untrained" / "capacity_by_layer.png").exists()
    )
    args = [
        "pretrain",
        "--quiet",
        "--no-eval",
        *tiny_run_args(tmp_path, "--train.epochs=1", "--train.knn_every=0"),
    ]
    assert main(args) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert main(["analyze", str(run), *SMALL]) == 0
    trained = json.loads((run / "analysis" / "analysis.json").read_text())
    for row in trained["manifolds"].values():
        for kind in ("class", "augmentation"):
            assert row[kind]["capacity"] > 0 and row[kind]["dimension"] >= 0


def test_analyze_rejects_missing_inputs(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing.npy")]) == 2
    assert main(["analyze"]) == 2
    assert "analyze needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not "all but the last 5" any more
        main(["analyze", "--untrained", "digits_mmcr", "--per-class", "-5"])
    assert "expected a positive integer, got '-5'" in capsys.readouterr().err


def test_every_figure_names_its_axes_and_the_t_sne_its_classes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = {}
    savefig = Figure.savefig

    def record(fig, path, *args, **kwargs):
        saved[Path(path).name] = [
            (ax.get_xlabel(), ax.get_ylabel(), ax.get_title(), ax.get_legend() is not None)
            for ax in fig.axes
        ]
        return savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    assert main(["analyze", "--untrained", "digits_mmcr", "--out", str(tmp_path), *SMALL]) == 0
    assert set(saved) == {"capacity_by_layer.png", "spectrum.png", "similarity.png", "tsne.png"}
    for name, axes in saved.items():
        for xlabel, ylabel, title, legend in axes:
            assert title, name
            if name == "tsne.png":  # t-SNE coordinates have no units; its legend names classes
                assert legend
            else:
                assert xlabel and ylabel, (name, title)
    assert "pool" in saved["spectrum.png"][0][2]  # the layer the spectrum is of


def test_default_class_manifolds_keep_every_class_of_an_imbalanced_split(tmp_path):
    # issue 18.1: the default size was the second *largest* class, so only the largest classes
    # formed manifolds (2 of 10 digit classes; here 2 of 5)
    from manifold_ssl.evaluation.features import default_per_class

    rng = np.random.default_rng(0)
    sizes = (100, 60, 45, 40, 30)
    y = np.repeat(np.arange(5), sizes)
    x = rng.standard_normal((5, 16))[y] * 3 + rng.standard_normal((len(y), 16))
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert (
        main(
            [
                "analyze",
                str(tmp_path / "f.npy"),
                "--labels",
                str(tmp_path / "y.npy"),
                "--n-t",
                "30",
                "--quiet",
            ]
        )
        == 0
    )
    settings = json.loads((tmp_path / "f-analysis" / "analysis.json").read_text())["settings"]
    assert settings["per_class"] == 30 and settings["classes"] == [0, 1, 2, 3, 4]
    import torch

    assert default_per_class(torch.tensor([0] * 37 + [1] * 36 + [2] * 80)) == 36
    assert default_per_class(torch.tensor([0] * 9 + [1] * 1 + [2] * 80)) == 9  # a singleton
    assert default_per_class(torch.tensor([0] * 90 + [1] * 80)) == 50
