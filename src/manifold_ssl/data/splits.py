"""The splits of a run: train (pretraining, probe fitting), val (carved from train, for
selection), test (final numbers only); in memory (:class:`ImageTensors`) or on disk
(:class:`~manifold_ssl.data.files.ImageFiles`, ``data.loader: stream``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from .datasets import DATASETS, ImageTensors, file_sources, load_dataset
from .files import UNLABELLED, ImageFiles
from .paths import DataPath

__all__ = [
    "DataSplits",
    "Split",
    "as_tensors",
    "check_same_data",
    "data_identity",
    "index_files",
    "load_splits",
    "stratified_split",
]

Split = ImageTensors | ImageFiles


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
    """train (for pretraining and probe fitting), val (selection), test (final numbers);
    ``unlabeled``: more pretraining images without labels (STL-10's 100,000)."""

    train: Split
    val: Split
    test: Split
    unlabeled: Split | None = None
    #: the shards left out of a remote run's local copy (``data.shard_errors=skip``), each
    #: with its error: the copy holds fewer images than the shard set
    shards_skipped: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def channels(self) -> int:
        return 3 if isinstance(self.train, ImageFiles) else int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """The side of the un-augmented images (files: their view's size)."""
        t = self.train
        if isinstance(t, ImageFiles):
            if t.size is None:
                raise ValueError("streamed images need data.image_size")
            return t.size
        return int(t.images.shape[-1])

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, ImageFiles)

    @cached_property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Channel means and standard deviations of the training images, in [0, 1] units: what
        the views and the frozen-feature evaluation standardise with. They belong to the data
        (an image folder gets its own), not to the augmentation preset. Files: measured on the
        un-augmented views of 1,000 training images chosen with a fixed seed."""
        train = self.train
        if isinstance(train, ImageFiles):
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            images = train.subset(pick[:1000]).load().images
        else:
            images = train.images
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

    def pretraining(self) -> Split:
        """The images pretraining reads: train, and the unlabeled split where there is one."""
        if self.unlabeled is None:
            return self.train
        a, b = self.train, self.unlabeled
        if isinstance(a, ImageTensors) and isinstance(b, ImageTensors):
            return ImageTensors(
                torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.classes
            )
        raise ValueError("data.unlabeled is supported by the memory loader only")


def as_tensors(split: Split, workers: int = 0) -> ImageTensors:
    """``split`` in memory: itself, or its files decoded at their un-augmented view."""
    return split if isinstance(split, ImageTensors) else split.load(workers)


def _split_identity(split: Split) -> dict[str, Any]:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(split.labels.numpy().tobytes())
    digest.update("\0".join(split.classes).encode())
    if isinstance(split, ImageTensors):
        digest.update(str(tuple(split.images.shape)).encode())
        digest.update(split.images.contiguous().numpy().data)
    else:  # names without their folders (the data may move), byte sizes, the view
        for name in split.names:
            digest.update(os.path.basename(os.fsdecode(name)).encode() + b"\0")
        digest.update(np.ascontiguousarray(split.members[:, 2]).tobytes())
        digest.update(f"{split.size} {split.crop_fraction}".encode())
    return {"images": len(split), "classes": len(split.classes), "digest": digest.hexdigest()}


def data_identity(splits: DataSplits) -> dict[str, Any]:
    """What identifies a run's data: per split (train, unlabeled, test), the number of images
    and classes and a digest of their contents (in memory: pixels and labels; files: names,
    byte sizes and labels). Every checkpoint records it; resume and evaluation refuse other
    data (:func:`check_same_data`)."""
    parts = {"train": splits.train, "unlabeled": splits.unlabeled, "test": splits.test}
    return {name: _split_identity(split) for name, split in parts.items() if split is not None}


def check_same_data(recorded: dict[str, Any] | None, splits: DataSplits, what: str) -> None:
    """Raise when ``splits`` are not the data a checkpoint recorded (None: an older checkpoint
    without a record, accepted)."""
    if recorded is None:
        return
    now = data_identity(splits)
    changed = [
        f"{name}: {old['images']} images of {old['classes']} classes then, "
        + (f"{now[name]['images']} of {now[name]['classes']} now" if name in now else "none now")
        + ("" if name not in now or now[name]["images"] != old["images"] else " (other contents)")
        for name, old in recorded.items()
        if now.get(name) != old
    ]
    changed += [f"{name}: none then" for name in now if name not in recorded]
    if changed:
        raise ValueError(
            f"the data set changed since the checkpoint was written ({'; '.join(changed)}): "
            f"{what} needs the run's own data (restore it, or start a new run)"
        )


def index_files(
    name: str, split: str, root: str, path: DataPath | None, classes_file: str | None
) -> ImageFiles:
    """The index of ``split`` of a data set read from files (a source with an ``index``:
    ``imagefolder``, ``webdataset``)."""
    index = DATASETS[name].index if name in DATASETS else None
    if index is None:
        raise ValueError(
            f"data.loader=stream reads files: data.name must be one of {file_sources()}, got "
            f"{name!r} (use the memory loader, or the dataset as an image folder)"
        )
    if path is None:
        raise ValueError(f"{name} needs data.path: {DATASETS[name].path}")
    return index(path, split, root, classes_file)


def load_splits(
    name: str,
    root: str = "data",
    path: DataPath | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    *,
    loader: str = "memory",
    image_size: int | None = None,
    crop_fraction: float = 1.0,
    classes_file: str | None = None,
    test_split: str = "test",
    unlabeled: bool = False,
    memory_limit_gb: float = 8.0,
    workers: int = 0,
) -> DataSplits:
    """The splits of dataset ``name`` (see :class:`~manifold_ssl.config.DataConfig` for the
    options). ``loader="auto"`` streams an image folder or shards whose decoded training
    images (at ``image_size``, or the first image's size) exceed ``memory_limit_gb``, and
    keeps everything else in memory. The test split never reads the training split's images:
    ``test_split="train"``, or files of the training split, are refused."""
    if test_split == "train":
        raise ValueError(
            "data.test_split=train would measure the final numbers on the training images: "
            "name another split (test, val)"
        )
    if loader == "auto":
        loader = "memory"
        if name in file_sources():
            files = index_files(name, "train", root, path, classes_file)
            side = image_size or max(files.open(0).size)
            if len(files) * 3 * side * side > memory_limit_gb * 1e9:
                loader = "stream"
    if loader == "stream":
        if unlabeled:
            raise ValueError("data.unlabeled is supported by the memory loader only")
        files = index_files(name, "train", root, path, classes_file)
        image_size = image_size or _common_side(files)
        full: Split = files.with_view(image_size, crop_fraction)

        def read_test() -> Split:
            test = index_files(name, test_split, root, path, classes_file)
            return test.with_view(image_size, crop_fraction)
    else:
        kw = {"size": image_size, "classes_file": classes_file, "crop_fraction": crop_fraction}
        full = load_dataset(name, "train", root, path, **kw, workers=workers)  # type: ignore[arg-type]

        def read_test() -> Split:
            if name in file_sources():  # the index (cached) refuses the training split's files
                index_files(name, test_split, root, path, classes_file)
            return load_dataset(name, test_split, root, path, **kw, workers=workers)  # type: ignore[arg-type]

    keep, held = stratified_split(full.labels, val_fraction, split_seed)
    try:
        test = read_test()
    except FileNotFoundError:
        if full.classes != [UNLABELLED]:
            raise
        test = full.subset(held)  # caption-only data has no test split: the held-out images
    extra = None
    if unlabeled:
        opts = {"size": image_size, "crop_fraction": crop_fraction}
        extra = load_dataset(name, "unlabeled", root, path, **opts, workers=workers)  # type: ignore[arg-type]
    return DataSplits(full.subset(keep), full.subset(held), test, extra)


def _common_side(files: ImageFiles, sample: int = 64) -> int:
    """The side of square images of one size (checked on ``sample`` seeded images): what the
    stream loader reads them at when ``data.image_size`` is not given."""
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:sample]
    sizes = {files.open(int(i)).size for i in pick}
    if len(sizes) > 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        raise ValueError(
            f"the images are not all square of one size ({sorted(sizes)[:3]} ...): set "
            "data.image_size, the side the stream loader resizes them to"
        )
    return int(next(iter(sizes))[0])
