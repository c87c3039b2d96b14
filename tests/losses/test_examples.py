"""Every objective's ``nn.Module`` documents a runnable example, and the examples run (issue 29:
lightly documents each loss with ``Args:``, shapes and an example)."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest
import torch

import manifold_ssl.losses as losses

CLASSES = [n for n in losses.__all__ if inspect.isclass(getattr(losses, n))]


def test_every_loss_class_has_an_example():
    missing = [n for n in CLASSES if ">>>" not in (inspect.getdoc(getattr(losses, n)) or "")]
    assert not missing and len(CLASSES) >= 15


@pytest.mark.parametrize("module", sorted({getattr(losses, n).__module__ for n in CLASSES}))
def test_the_examples_run(module):
    torch.manual_seed(0)
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
