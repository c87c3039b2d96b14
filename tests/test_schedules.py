"""The one cosine and warm-up every loop uses, against PyTorch's schedulers and BYOL's formula."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_ssl.schedules import cosine, warmup_cosine


def test_cosine_is_cosine_annealing_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=9, eta_min=0.01)
    for t in range(10):
        assert cosine(t / 9, 0.3, 0.01) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert cosine(-1.0, 0.3) == 0.3 and cosine(2.0, 0.3) == 0.0  # clipped to [0, 1]


def test_rising_cosine_is_byols_ema_schedule():
    for step in range(0, 101, 10):
        byol = 1 - (1 - 0.996) * (math.cos(math.pi * step / 100) + 1) / 2
        assert cosine(step / 100, 0.996, 1.0) == pytest.approx(byol, abs=1e-15)


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 20, 1.0, warmup=4, floor=0.1) for s in range(21)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == 1.0 and lrs[20] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(3, 10, 2.0) == pytest.approx(cosine(0.3, 2.0))
