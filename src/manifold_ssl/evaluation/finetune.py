"""Semi-supervised fine-tuning on a fraction of the labels (Yerxa App. G, after Bardes et al.).

The pretrained backbone and a new linear head are trained together with cross-entropy on a
class-stratified ``fraction`` of the training labels, with one augmented view per image (the
run's first view distribution), SGD with momentum 0.9 and weight decay 1e-6, the backbone's
learning rate one tenth of the head's, and cosine decay. Validation and test accuracy are
reported after the last epoch (the test split is evaluated once).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..data.splits import DataSplits, as_tensors, stratified_split
from ..data.views import AugmentSpec, MultiViewAugment
from .classifier import fit_classifier
from .features import normalise_images
from .settings import EvalConfig

__all__ = ["finetune"]


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
) -> float:
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], 512):
        x = normalise_images(images[start : start + 512].to(device), mean, std)
        correct += int((model(x).argmax(1).cpu() == labels[start : start + 512]).sum())
    return correct / max(1, images.shape[0])


def finetune(
    settings: EvalConfig,
    backbone: nn.Module,
    splits: DataSplits,
    fraction: float,
    spec: AugmentSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune a copy of ``backbone`` on ``fraction`` of the training labels, on views of
    ``spec`` (``eval.finetune_epochs`` epochs, head lr ``eval.finetune_lr``, backbone /10)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    _, labelled = (
        stratified_split(splits.train.labels, fraction, seed)
        if fraction < 1
        else (None, torch.arange(len(splits.train)))
    )
    images, labels = (
        as_tensors(splits.train.subset(labelled)).images.to(device),
        splits.train.labels[labelled].to(device),
    )
    aug = MultiViewAugment((spec,), 1)
    encoder = copy.deepcopy(backbone).to(device)
    with torch.random.fork_rng():  # the head's initialisation follows ``seed``, not global state
        torch.manual_seed(seed)
        head = nn.Linear(encoder.out_dim, splits.num_classes)  # type: ignore[arg-type]
    model = nn.Sequential(encoder, head).to(device)
    lr = settings.finetune_lr
    opt = torch.optim.SGD(
        [
            {"params": encoder.parameters(), "lr": lr / 10},
            {"params": model[1].parameters(), "lr": lr},
        ],
        momentum=0.9,
        weight_decay=1e-6,
    )
    batch = min(batch_size, images.shape[0])
    gen = torch.Generator().manual_seed(seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, images.shape[0] - batch + 1, batch):
            idx = perm[start : start + batch].to(device)
            yield aug(images[idx], gen)[:, 0], labels[idx]

    per_epoch = max(1, images.shape[0] // batch)
    fit_classifier(model, opt, batches, settings.finetune_epochs, per_epoch)
    return {
        "fraction": fraction,
        "labelled_images": int(labelled.numel()),
        "val_accuracy": _accuracy(
            model, as_tensors(splits.val).images, splits.val.labels, spec.mean, spec.std, device
        ),
        "test_accuracy": _accuracy(
            model, as_tensors(splits.test).images, splits.test.labels, spec.mean, spec.std, device
        ),
    }
