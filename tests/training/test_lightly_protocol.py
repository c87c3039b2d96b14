"""The packaged recipes of lightly's CIFAR-10 benchmark protocol: their settings are lightly's,
BYOL's rescaled learning rate and weight decay give lightly's BYOL trajectory exactly, and each
recipe trains (tiny, on a generated image folder)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from manifold_ssl.config import apply_overrides, effective_lr, load_recipe
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.methods import build_method
from manifold_ssl.run import train as run_train
from manifold_ssl.runinfo import read_metrics

LIGHTLY = [
    "lightly_cifar10_simclr",
    "lightly_cifar10_byol",
    "lightly_cifar10_barlow_twins",
    "lightly_cifar10_mmcr",
    "lightly_cifar10_clamp",
]


@pytest.mark.parametrize("name", LIGHTLY)
def test_the_protocol_is_lightlys(name):
    cfg = load_recipe(name)
    assert cfg.model.backbone == "resnet18" and cfg.model.width == 64 and cfg.model.small_images
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.knn_every) == (512, 200, 1)
    assert (cfg.eval.knn_k, cfg.eval.knn_temperature) == (200, 0.1)
    o = cfg.optim
    assert (o.name, o.momentum, o.schedule, o.decay_all) == ("sgd", 0.9, "cosine_epoch", True)
    assert o.warmup_epochs == 0 and o.warmup_steps == 0
    # SGD lr 6e-2 x 512/128 and weight decay 5e-4 (BYOL: / 4 and x 4, its loss being 4x)
    scale = 4 if cfg.method.name == "byol" else 1
    assert effective_lr(cfg) * scale == pytest.approx(0.24)
    assert o.weight_decay / scale == pytest.approx(5e-4)


class _Flat(nn.Module):
    out_dim = 12

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(27, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _lightly_byol_step(model: nn.Module, views: torch.Tensor, opt) -> None:
    """lightly's BYOLModel.training_step (cifar10_benchmark.py), written from its code: EMA
    update with m = 0.99 first, then 0.5 (-cos(p0, z1) - cos(p1, z0)) and an SGD step."""
    with torch.no_grad():
        online = [*model.backbone.parameters(), *model.projector.parameters()]
        target = list(model.target.module.parameters())
        for t, p in zip(target, online, strict=True):
            t.mul_(0.99).add_(p, alpha=0.01)
    x0, x1 = views[:, 0], views[:, 1]
    p0 = model.predictor(model.projector(model.backbone(x0)))
    p1 = model.predictor(model.projector(model.backbone(x1)))
    with torch.no_grad():
        z0, z1 = model.target(x0), model.target(x1)
    loss = 0.5 * (-F.cosine_similarity(p0, z1).mean() - F.cosine_similarity(p1, z0).mean())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_byol_with_lr_over_4_and_decay_times_4_follows_lightlys_trajectory():
    torch.manual_seed(0)
    ours = build_method(
        "byol", _Flat(), "16-8", predictor="16-8", momentum=0.99, ema="constant"
    ).double()
    theirs = copy.deepcopy(ours)
    lr, wd = 0.24, 5e-4

    def trainable(m: nn.Module) -> list:
        return [p for n, p in m.named_parameters() if not n.startswith("target.")]

    opt_ours = torch.optim.SGD(trainable(ours), lr=lr / 4, momentum=0.9, weight_decay=4 * wd)
    opt_theirs = torch.optim.SGD(trainable(theirs), lr=lr, momentum=0.9, weight_decay=wd)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        views = torch.randn(16, 2, 3, 3, 3, generator=gen, dtype=torch.float64)
        _lightly_byol_step(theirs, views, opt_theirs)
        loss, _, _ = ours(views)
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()
        ours.update_target(step, 100)  # constant: 0.99 whatever the step
    for a, b in zip(trainable(ours), trainable(theirs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # lightly's EMA lags ours by one update (it updates before its forward): compare one more
    with torch.no_grad():
        for t, p in zip(
            theirs.target.module.parameters(),
            [*theirs.backbone.parameters(), *theirs.projector.parameters()],
            strict=True,
        ):
            t.mul_(0.99).add_(p, alpha=0.01)
    for a, b in zip(ours.target.parameters(), theirs.target.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_image_folder(root / "set", 2, {"train": 40, "test": 8}, (32, 32))


@pytest.mark.parametrize("name", LIGHTLY)
def test_each_recipe_trains(name, folder, tmp_path):
    cfg = apply_overrides(
        load_recipe(name),
        [
            "--data.name=imagefolder",
            f"--data.path={folder}",
            "--data.val_fraction=0.1",
            "--data.workers=0",
            f"--train.out_dir={tmp_path}",
            "--model.width=4",
            "--train.batch_size=16",
            "--train.epochs=2",
            "--train.log_every=1",
            "--train.online_linear=false",
        ],
    )
    result = run_train(cfg, progress=False)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    lrs = [r["lr"] for r in records if "lr" in r]
    # the epoch cosine: flat within an epoch, lower in the second
    assert lrs[0] == lrs[1] and lrs[-1] < lrs[0]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
