"""The GPU paths, exercised on the CPU: bf16 autocast, channels-last memory, torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manifold_ssl.run import train as pretrain
from manifold_ssl.training.metrics import read_metrics


def _losses(result) -> list[float]:
    return [r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]


def _flops(result) -> list[int]:
    return [r["flops"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]


@pytest.fixture
def eager(tiny_cfg):
    return pretrain(tiny_cfg("--train.max_steps=4"), progress=False)


@pytest.fixture
def reference(eager):
    return _losses(eager)


def test_channels_last_follows_the_contiguous_loss_curve(tiny_cfg, reference):
    result = pretrain(tiny_cfg("--train.max_steps=4", "--train.channels_last=true"), progress=False)
    conv = next(m for m in result.method.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(_losses(result), reference, rtol=1e-4)


def test_bf16_autocast_on_the_cpu_stays_near_the_float32_curve(tiny_cfg, reference):
    result = pretrain(tiny_cfg("--train.max_steps=4", "--train.amp_cpu=true"), progress=False)
    losses = _losses(result)
    assert all(np.isfinite(losses))
    # bf16 keeps 8 bits of mantissa: the first loss (same weights, same views) to 1%
    assert losses[0] == pytest.approx(reference[0], rel=1e-2)
    assert losses != reference  # autocast did run
    assert all(p.dtype == torch.float32 for p in result.method.parameters())  # master weights


def test_compiled_model_follows_the_eager_loss_curve(tiny_cfg, eager):
    result = pretrain(tiny_cfg("--train.max_steps=4", "--train.compile=true"), progress=False)
    np.testing.assert_allclose(_losses(result), _losses(eager), rtol=1e-4)
    assert _flops(result) == _flops(eager)  # counted through the compiled graph too
