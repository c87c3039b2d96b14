"""Validation splits carved from the training set (the test split is for final numbers only)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .datasets import ImageTensors, load_dataset

__all__ = ["DataSplits", "load_splits", "stratified_split"]


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(keep, held_out)``: ``fraction`` of each class held out, chosen with ``seed``."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = round(fraction * len(idx))
        held.append(rng.permutation(idx)[:n])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(held_idx)


@dataclass
class DataSplits:
    """train (for pretraining and probe fitting), val (selection), test (final numbers)."""

    train: ImageTensors
    val: ImageTensors
    test: ImageTensors

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @cached_property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Channel means and standard deviations of the training images, in [0, 1] units: what
        the views and the frozen-feature evaluation standardise with. They belong to the data
        (an image folder gets its own), not to the augmentation preset."""
        images = self.train.images
        c = images.shape[1]
        total = torch.zeros(c, dtype=torch.float64)
        squares = torch.zeros(c, dtype=torch.float64)
        for start in range(0, images.shape[0], 4096):
            x = images[start : start + 4096].to(torch.float64).div_(255.0).transpose(0, 1)
            total += x.reshape(c, -1).sum(1)
            squares += x.reshape(c, -1).pow(2).sum(1)
        n = images.numel() // c
        mean = total / n
        std = (squares / n - mean**2).clamp_min(1e-12).sqrt()
        return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_splits(
    name: str,
    root: str = "data",
    path: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    full = load_dataset(name, "train", root, path)
    keep, held = stratified_split(full.labels, val_fraction, split_seed)
    test = load_dataset(name, "test", root, path)
    return DataSplits(full.subset(keep), full.subset(held), test)
