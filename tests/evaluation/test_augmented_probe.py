"""The papers' linear probe on augmented images (Yerxa App. G), from memory and streamed."""

from __future__ import annotations

import pytest
import torch

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data import load_splits
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.evaluation.augmented import augmented_linear_probe
from manifold_ssl.models import build_backbone
from manifold_ssl.run.build import view_specs

FAST = ["--eval.augmented_epochs=20", "--eval.augmented_batch=64", "--data.workers=0"]


def test_augmented_probe_on_digits_beats_chance_and_repeats(tmp_path):
    cfg = apply_overrides(load_recipe("digits_mmcr"), [f"--data.root={tmp_path}", *FAST])
    splits = load_splits("digits", str(tmp_path))
    torch.manual_seed(0)
    encoder = build_backbone("convnet", 1, width=8)
    spec = view_specs(cfg, splits)[0]
    a = augmented_linear_probe(cfg.eval, encoder, splits, "cpu", spec, 8, workers=0)
    b = augmented_linear_probe(cfg.eval, encoder, splits, "cpu", spec, 8, workers=0)
    assert a == b  # seeded views and order
    assert a["linear_test_accuracy"] > 0.4  # 10 classes: chance is 0.1


def test_augmented_probe_streams_files(tmp_path):
    folder = write_image_folder(tmp_path / "f", 3, {"train": 24, "test": 8}, (20, 40))
    cfg = apply_overrides(
        load_recipe("digits_mmcr"),
        [f"--data.root={tmp_path}", "--views.preset=cifar", "--data.image_size=16", *FAST],
    )
    splits = load_splits(
        "imagefolder", str(tmp_path), str(folder), 0.25, loader="stream", image_size=16
    )
    torch.manual_seed(0)
    encoder, spec = build_backbone("convnet", 3, width=4), view_specs(cfg, splits)[0]
    result = augmented_linear_probe(cfg.eval, encoder, splits, "cpu", spec, 16, workers=0)
    assert result["linear_test_accuracy"] > 0.6  # each class its own hue; chance is 1/3


def test_evaluation_adds_the_augmented_probe_row(tmp_path):
    import json

    from helpers import tiny_run_args

    from manifold_ssl.cli import main

    args = tiny_run_args(
        tmp_path,
        "--train.epochs=1",
        "--train.knn_every=0",
        "--eval.baselines=false",
        "--eval.augmented_probe=true",
        "--eval.augmented_epochs=2",
        "--eval.augmented_batch=256",
    )
    assert main(["pretrain", "--quiet", *args]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    results = json.loads((run / "eval.json").read_text())["results"]
    assert set(results["augmented_probe"]) == {"linear_val_accuracy", "linear_test_accuracy"}
    assert "augmented_probe" in (run / "report.md").read_text()


@pytest.mark.parametrize("per_epoch", [False, True])
def test_the_classifier_loop_follows_its_cosine_and_learns(per_epoch):
    # the one loop of fine-tuning and the augmented probe: the learning rate at each step, per
    # step or per epoch (CosineAnnealingLR(T_max=epochs), the authors' probe)
    import math

    from manifold_ssl.evaluation.classifier import fit_classifier

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    y = (x[:, 0] > 0).long()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = torch.nn.Linear(5, 2)
    before = torch.nn.functional.cross_entropy(head(x), y).item()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    seen = []
    opt.register_step_pre_hook(lambda o, *_: seen.append(o.param_groups[0]["lr"]))
    fit_classifier(head, opt, lambda e: [(x[:32], y[:32]), (x[32:], y[32:])], 3, 2, per_epoch)
    at = [s // 2 / 3 if per_epoch else s / 6 for s in range(6)]
    assert seen == pytest.approx([0.25 * (1 + math.cos(math.pi * a)) for a in at])
    assert torch.nn.functional.cross_entropy(head(x), y).item() < 0.8 * before
