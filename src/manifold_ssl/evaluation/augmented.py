"""The papers' linear probe on augmented images (Yerxa et al. App. G).

A linear classifier on the frozen backbone, trained on features of *augmented* training images
(the pretraining augmentations, one view, a new one every epoch) with Adam, batch 1024,
learning rate 0.1 decayed by a cosine over 50 epochs (per epoch, as ``CosineAnnealingLR`` in
the authors' ``train_linear_classifier.py``), weight decay 1e-6 as there; validation and test
on the un-augmented view, after the last epoch. Two things the authors' code does differently,
left out on purpose: it runs the frozen backbone in training mode, so its BatchNorm normalises
with batch statistics and drifts its running statistics towards augmented images; and it keeps
the best *test* accuracy over epochs. Here the backbone is in eval mode and the final epoch is
reported. Slower than the L-BFGS probe on features extracted once (``evaluation.linear``): every
epoch runs the backbone over the training set, which streams from files like pretraining does.
``eval.augmented_probe=true`` adds it to the evaluation as the row ``augmented_probe``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..data.splits import DataSplits
from ..data.stream import Layout, make_batches
from ..data.views import AugmentSpec, MultiViewAugment
from .classifier import fit_classifier
from .features import extract_features, inference_copy
from .settings import EvalConfig

__all__ = ["augmented_linear_probe"]


def augmented_linear_probe(
    e: EvalConfig,
    encoder: nn.Module,
    splits: DataSplits,
    device: torch.device | str,
    spec: AugmentSpec,
    image_size: int,
    seed: int = 0,
    workers: int = 0,
    prefetch: int = 2,
    views_on: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Validation and test accuracy of the probe described in the module doc, on views of
    ``spec`` at ``image_size`` (the pretraining's first view distribution), the head
    initialised from ``seed``; ``workers``, ``prefetch``, ``views_on``: the stream loader's."""
    device = torch.device(device)
    mean, std = splits.normalisation
    batch = min(e.augmented_batch, len(splits.train))
    source = make_batches(
        splits.train,
        MultiViewAugment((spec,), 1),
        Layout(batch, seed=seed + 7, device=device),  # not the pretraining order
        image_size,
        workers,
        prefetch,
        views_on,
    )
    model = inference_copy(encoder).to(device)
    with torch.no_grad():
        width = model(torch.zeros(1, splits.channels, image_size, image_size, device=device))
    with torch.random.fork_rng(devices=[]):  # the head's initialisation follows train.seed
        torch.manual_seed(seed)
        head = nn.Linear(width.shape[1], splits.num_classes).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=e.augmented_lr, weight_decay=e.augmented_wd)
    steps = len(splits.train) // batch
    labels = splits.train.labels

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        source.start_epoch(epoch, 0)
        for _ in range(steps):
            all_views = source.next_views()
            assert isinstance(all_views, torch.Tensor)  # image views only
            with torch.no_grad():  # the frozen backbone's features of one new view
                views = all_views[:, 0].contiguous(memory_format=torch.channels_last)
                x = model(views).float()
            yield x, labels[source.last_index].to(device)

    # the cosine per epoch, as the authors' CosineAnnealingLR (module doc)
    label = "augmented probe" if progress else None
    fit_classifier(head, opt, batches, e.augmented_epochs, steps, per_epoch=True, progress=label)
    out: dict[str, Any] = {}
    for name, split in (("val", splits.val), ("test", splits.test)):
        feats = extract_features(encoder, split, mean, std, device=device, workers=workers)
        with torch.no_grad():
            pred = head(feats.to(device)).argmax(1).cpu()
        out[f"linear_{name}_accuracy"] = float((pred == split.labels).float().mean())
    return out
