"""The splits of a run: train (pretraining, probe fitting), val (carved from train, for
selection), test (final numbers only); in memory (:class:`ImageTensors`) or on disk
(:class:`~manifold_ssl.data.files.ImageFiles`, ``data.loader: stream``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .captions import (
    ZERO_SHOT_TEMPLATES,
    Captions,
    GeneratedCaptions,
    ImageAttributes,
    class_words,
    read_captions,
)
from .datasets import ImageTensors, load_dataset
from .files import ImageFiles, index_images, index_shards
from .stream import resolve_workers

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "DataSplits",
    "Split",
    "as_tensors",
    "captions_of",
    "check_same_data",
    "check_zero_shot_words",
    "data_identity",
    "load_splits",
    "splits_of",
    "stratified_split",
    "zero_shot_prompts",
    "zero_shot_words",
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


FILE_SETS = ("imagefolder", "webdataset")


def _index(
    name: str, split: str, root: str, path: str | None, classes_file: str | None
) -> ImageFiles:
    if name not in FILE_SETS:
        raise ValueError(
            f"data.loader=stream reads files: data.name must be one of {list(FILE_SETS)}, got "
            f"{name!r} (use the memory loader, or the dataset as an image folder)"
        )
    if path is None:
        raise ValueError(f"{name} needs data.path")
    index = index_images if name == "imagefolder" else index_shards
    return index(path, split, root, classes_file)


def load_splits(
    name: str,
    root: str = "data",
    path: str | None = None,
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
    keeps everything else in memory."""
    if loader == "auto":
        loader = "memory"
        if name in FILE_SETS:
            files = _index(name, "train", root, path, classes_file)
            side = image_size or max(files.open(0).size)
            if len(files) * 3 * side * side > memory_limit_gb * 1e9:
                loader = "stream"
    if loader == "stream":
        if unlabeled:
            raise ValueError("data.unlabeled is supported by the memory loader only")
        files = _index(name, "train", root, path, classes_file)
        image_size = image_size or _common_side(files)
        full: Split = files.with_view(image_size, crop_fraction)
        test: Split = _index(name, test_split, root, path, classes_file).with_view(
            image_size, crop_fraction
        )
    else:
        kw = {"size": image_size, "classes_file": classes_file, "crop_fraction": crop_fraction}
        full = load_dataset(name, "train", root, path, **kw, workers=workers)  # type: ignore[arg-type]
        test = load_dataset(name, test_split, root, path, **kw, workers=workers)  # type: ignore[arg-type]
    keep, held = stratified_split(full.labels, val_fraction, split_seed)
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


def captions_of(cfg: Config, splits: DataSplits) -> Captions:
    """The captions of the pretraining images (``text.captions``; see
    :mod:`manifold_ssl.data.captions`), in the order of ``splits.pretraining()``."""
    d = cfg.data
    mode = _caption_mode(cfg)
    if d.unlabeled:
        raise ValueError("multimodal pretraining does not read data.unlabeled (no captions)")
    if mode == "files":
        # the training split's files, in the order both loaders keep them
        files = _index(d.name, "train", d.root, d.path, d.classes_file)
        keep, _ = stratified_split(files.labels, d.val_fraction, d.split_seed)
        return read_captions(files.subset(keep))
    train = splits.train
    if not isinstance(train, ImageTensors):
        raise ValueError(
            "text.captions=generated measures the images in memory: use data.loader=memory "
            "(or text.captions=files with <key>.txt captions)"
        )
    return GeneratedCaptions(train, ImageAttributes.fit(train.images, train.labels))


def zero_shot_prompts(cfg: Config, splits: DataSplits) -> tuple[list[str], list[str]]:
    """The class words and the prompt templates of zero-shot evaluation (``{label}`` in each):
    ``text.zero_shot_templates``, else the held-out templates of the images' kind; the words
    as :func:`zero_shot_words` gives them."""
    kind = "grey" if splits.channels == 1 else "colour"
    templates = cfg.text.zero_shot_templates or list(ZERO_SHOT_TEMPLATES[kind])
    return zero_shot_words(cfg, splits.train.classes), templates


def zero_shot_words(cfg: Config, classes: list[str]) -> list[str]:
    """The class words prompts use: ``text.class_names`` (in label order), else the class
    names as words. Captions read from files are written in words, so class names that are
    ids (WebDataset ``.cls`` numbers) cannot prompt them: that is an error naming
    ``text.class_names``, not a chance-level accuracy. (Generated captions are made from the
    same names, ids or not, so they prompt them.)"""
    names = cfg.text.class_names
    if names:
        if len(names) != len(classes):
            raise ValueError(
                f"text.class_names has {len(names)} names, but the data set has "
                f"{len(classes)} classes ({', '.join(classes[:10])})"
            )
        return list(names)
    if _caption_mode(cfg) == "files" and all(c.lstrip("-").isdigit() for c in classes):
        raise ValueError(
            f"zero-shot prompts need class words, but the classes of {cfg.data.path} are the "
            f"ids {', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''} and its captions "
            "are files: set text.class_names to their names in label order (e.g. "
            "--text.class_names='[airplane, automobile, ...]'), or pretrain with --no-eval "
            "--train.knn_every=0"
        )
    return class_words(classes)


def check_zero_shot_words(cfg: Config) -> None:
    """:func:`zero_shot_words` before a run starts (from the files' index: no decoding), so
    that a multimodal run without class words is refused before it trains, not after."""
    from ..methods import MULTIMODAL

    if cfg.method.name in MULTIMODAL and _caption_mode(cfg) == "files":
        d = cfg.data
        zero_shot_words(cfg, _index(d.name, "train", d.root, d.path, d.classes_file).classes)


def _caption_mode(cfg: Config) -> str:
    mode = cfg.text.captions
    return ("files" if cfg.data.name in FILE_SETS else "generated") if mode == "auto" else mode


def splits_of(cfg: Config) -> DataSplits:
    """The splits ``cfg.data`` describes."""
    d = cfg.data
    return load_splits(
        d.name,
        d.root,
        d.path,
        d.val_fraction,
        d.split_seed,
        loader=d.loader,
        image_size=d.image_size,
        crop_fraction=d.crop_fraction,
        classes_file=d.classes_file,
        test_split=d.test_split,
        unlabeled=d.unlabeled,
        memory_limit_gb=d.memory_limit_gb,
        workers=resolve_workers(d.workers),
    )
