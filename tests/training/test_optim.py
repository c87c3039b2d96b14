"""LARS and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from manifold_ssl.config import config_from_dict
from manifold_ssl.run.build import lr_at_step
from manifold_ssl.training.optim import LARS, param_groups


def test_lars_adapts_weights_and_leaves_biases_and_norms_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    w0 = model[0].weight.detach().clone()
    b0 = model[0].bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt = LARS(param_groups(model, weight_decay=0.1), lr=0.5, momentum=0.9, eta=0.01)
    opt.step()
    # weight: g = 1 + 0.1 w, scaled by η‖w‖/‖g‖
    g = torch.ones_like(w0) + 0.1 * w0
    expected = w0 - 0.5 * g * (0.01 * w0.norm() / g.norm())
    torch.testing.assert_close(model[0].weight.detach(), expected)
    # bias and BatchNorm parameters: plain SGD step, no weight decay, no trust ratio
    torch.testing.assert_close(model[0].bias.detach(), b0 - 0.5)
    torch.testing.assert_close(model[1].weight.detach(), torch.ones(3) - 0.5)


def test_schedule_warmup_then_cosine():
    cfg = config_from_dict(
        {
            "optim": {"lr": 1.0, "warmup_epochs": 2, "min_lr_ratio": 0.1},
            "train": {"epochs": 10, "batch_size": 256},
        }
    )
    spe = 5  # steps per epoch
    lrs = [lr_at_step(cfg, s, spe) for s in range(50)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    mid = 10 + 20
    assert lrs[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # noqa: RUF007
    assert lr_at_step(cfg, 50, spe) == pytest.approx(0.1)


def test_cosine_epoch_is_torchs_epoch_scheduler():
    # lightly's benchmarks: CosineAnnealingLR(optim, max_epochs) stepped at each epoch's end
    cfg = config_from_dict(
        {
            "optim": {"name": "sgd", "lr": 0.24, "schedule": "cosine_epoch"},
            "train": {"epochs": 7, "batch_size": 8},
        }
    )
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.24)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    spe = 3
    for epoch in range(7):
        for i in range(spe):
            assert lr_at_step(cfg, epoch * spe + i, spe) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_decay_all_is_plain_sgd_on_every_parameter():
    from manifold_ssl.run.build import optimizer_for

    cfg = config_from_dict(
        {"optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.05, "decay_all": True}}
    )
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    theirs = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    theirs.load_state_dict(ours.state_dict())
    opts = [
        optimizer_for(cfg, ours),
        torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05),
    ]
    for step in range(3):
        for model, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            model(
                torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
            ).square().sum().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # by default biases and norms are not decayed
    default = param_groups(ours, 0.05)
    assert (
        default[1]["weight_decay"] == 0.0
        and param_groups(ours, 0.05, True)[1]["weight_decay"] == 0.05
    )
