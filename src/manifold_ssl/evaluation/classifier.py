"""The one loop that trains a classifier on images' labels: fine-tuning (encoder and head) and
the augmented probe (a head on frozen features) both call :func:`fit_classifier`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..schedules import cosine

__all__ = ["fit_classifier"]

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def fit_classifier(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Batches,
    epochs: int,
    steps_per_epoch: int,
    per_epoch: bool = False,
    progress: str | None = None,
) -> None:
    """Cross-entropy training of ``model`` (inputs to logits) for ``epochs`` epochs of
    ``batches(epoch)`` (``(inputs, labels)``, ``steps_per_epoch`` of them), each param group's
    learning rate following a cosine from its initial value to 0: over the steps, or over the
    epochs (``per_epoch``, ``CosineAnnealingLR(T_max=epochs)`` stepped at epoch ends).
    ``progress``: a bar's label (none when ``None``)."""
    base = [g["lr"] for g in opt.param_groups]
    total = epochs * steps_per_epoch
    bar = tqdm(total=total, disable=progress is None, desc=progress, unit="step", leave=False)
    for epoch in range(epochs):
        model.train()
        for k, (x, y) in enumerate(batches(epoch)):
            at = epoch / epochs if per_epoch else (epoch * steps_per_epoch + k) / total
            for group, lr in zip(opt.param_groups, base, strict=True):
                group["lr"] = cosine(at, lr)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
