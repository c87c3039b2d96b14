"""Training batches: K views per image, from memory or streamed from files.

Both sources give the training loop the same thing, ``next_views()`` → (b, K, C, s, s) float
views of this process's slice of the global batch, and the same semantics: one seeded
permutation of the training set per epoch, the view parameters drawn for the global batch, each
rank taking its contiguous slice (so the loss equals one process's), exact resume from
``state_dict()``.

* :class:`TensorBatches` (``data.loader: memory``): the images are one uint8 tensor on the
  device; two stateful generators (data order, views), as every run before streaming existed.
* :class:`StreamBatches` (``data.loader: stream``): DataLoader workers read and decode each
  image and make the geometric part of its K views (``RandomResizedCrop`` to
  ``data.image_size`` with torchvision's algorithm on the image's own size, antialiased
  resize, flip); the photometric part (jitter, grayscale, blur, solarisation) is applied to the
  batch on the device, or, when the device is the CPU (``data.views_on``), to the batch in
  its worker, where it runs in parallel with the other workers' batches. The permutation of epoch e and the parameters of step t are drawn from
  generators seeded by (seed, e) and (seed, e, t), so a run resumed mid-epoch, or read by any
  number of workers, sees the same batches, and the workers' read-ahead leaves nothing to
  checkpoint.

Why a hand-written sampler and dataset around ``torch.utils.data.DataLoader``: the per-image
random crop must come from parameters drawn for the global batch on the main process (DDP
equivalence and exact resume), which torchvision's transforms, drawing inside each worker,
cannot give.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..dispatch import host_side
from .files import ImageFiles, resolve_workers
from .tensors import ImageTensors
from .views import AugmentSpec, MultiViewAugment, ViewParams, crop_boxes

__all__ = [
    "Batch",
    "Layout",
    "StreamBatches",
    "TensorBatches",
    "TrainBatches",
    "derived_generator",
    "geometric_views",
    "make_batches",
    "resolve_workers",
]


#: A training batch: the views (b, K, C, s, s), or views and caption tokens (b, L)
#: (:class:`~manifold_ssl.data.pairs.CaptionBatches`).
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class TrainBatches(Protocol):
    """What the training loop asks of its data."""

    num_images: int
    channels: int
    last_index: torch.Tensor  # this rank's images (indices into the split) of the last batch
    index_on_device: torch.Tensor  # the same, on the training device (copied asynchronously)

    # batches that are not indices into the split (the resampled shards) also carry
    # ``labels_on_device``: the class ids of the last batch

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None: ...
    def next_views(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Layout:
    """The global batch, this process's place in it, the seed and the device."""

    batch: int
    rank: int = 0
    world: int = 1
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def lo(self) -> int:
        return self.rank * (self.batch // self.world)

    @property
    def hi(self) -> int:
        return (self.rank + 1) * (self.batch // self.world)

    def check(self, n: int) -> None:
        if self.batch % self.world:
            raise ValueError(
                f"train.batch_size {self.batch} must be divisible by the {self.world} processes"
            )
        if self.batch > n:
            raise ValueError(f"train.batch_size {self.batch} exceeds the {n} training images")


class TensorBatches:
    """The memory path: see the module doc."""

    def __init__(self, images: torch.Tensor, aug: MultiViewAugment, layout: Layout) -> None:
        self.images = images.to(layout.device)
        self.num_images, self.channels = int(images.shape[0]), int(images.shape[1])
        layout.check(self.num_images)
        self.aug, self.batch, self.device = aug, layout.batch, layout.device
        self.lo, self.hi = layout.lo, layout.hi
        self.data_gen = torch.Generator().manual_seed(layout.seed)
        self.aug_gen = torch.Generator().manual_seed(layout.seed + 1)
        self.perm = torch.empty(0, dtype=torch.long)
        self.k = 0
        self.last_index = torch.empty(0, dtype=torch.long)  # this rank's images of the last batch
        self.index_on_device = self.last_index

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        if step_in_epoch == 0:
            self.perm = torch.randperm(self.num_images, generator=self.data_gen)
        self.k = step_in_epoch

    def next_views(self) -> torch.Tensor:
        b, k = self.batch, self.k
        _, _, height, width = self.images.shape
        params = self.aug.sample(b, height, width, self.aug_gen)  # the global batch's views
        with host_side():  # the permutation and the parameters live on the host
            self.last_index = self.perm[k * b : (k + 1) * b][self.lo : self.hi]
            local = [p.slice(self.lo, self.hi) for p in params]
            index = self.last_index.pin_memory() if self.device.type == "cuda" else self.last_index
        self.index_on_device = index.to(self.device, non_blocking=True)
        x = self.images[self.index_on_device]
        self.k += 1
        return self.aug.apply(x, local)

    def state_dict(self) -> dict[str, Any]:
        return {
            "data_rng": self.data_gen.get_state(),
            "aug_rng": self.aug_gen.get_state(),
            "perm": self.perm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require(state, ("data_rng", "aug_rng", "perm"), "memory")
        self.data_gen.set_state(state["data_rng"])
        self.aug_gen.set_state(state["aug_rng"])
        self.perm = state["perm"]


def _require(state: dict[str, Any], keys: tuple[str, ...], loader: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"the checkpoint lacks {missing}: it was not written by a data.loader={loader} run"
        )


def derived_generator(seed: int, *path: int) -> torch.Generator:
    """A generator seeded by ``(seed, *path)`` through NumPy's ``SeedSequence`` (distinct,
    well-mixed streams for every epoch and step)."""
    words = [seed % (1 << 63), *path]
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


_PERMUTATION, _VIEWS = 0, 1


Item = tuple[int, torch.Tensor, torch.Tensor, int, int]  # index, crop, flip, epoch, step


class _Geometric(Dataset[tuple[torch.Tensor, int, int]]):
    """Item ``(index, crop (K, attempts, 4), flip (K,), epoch, step)`` → ``(uint8 (K, 3, s, s),
    epoch, step)``: the image read, decoded, and cropped, resized and flipped K times (in a
    DataLoader worker)."""

    def __init__(self, files: ImageFiles, specs: list[AugmentSpec], size: int) -> None:
        self.files, self.specs, self.size = files, specs, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, int, int]:
        with host_side():  # a loader worker's work, on host memory
            return self._views(item)

    def _views(self, item: Item) -> tuple[torch.Tensor, int, int]:
        index, crop, flip, epoch, step = item
        return (
            geometric_views(self.files.open(index), crop, flip, self.specs, self.size),
            epoch,
            step,
        )


def geometric_views(
    image: Image.Image, crop: torch.Tensor, flip: torch.Tensor, specs: list[AugmentSpec], size: int
) -> torch.Tensor:
    """The geometric part of K views of one RGB image: view k is cropped with the uniforms
    ``crop[k]`` (attempts, 4) by torchvision's RandomResizedCrop algorithm on the image's own
    size, resized to ``size`` (antialiased bilinear) and flipped where ``flip[k]``; uint8
    (K, 3, size, size)."""
    w, h = image.size
    out = np.empty((len(specs), size, size, 3), dtype=np.uint8)
    for k, spec in enumerate(specs):
        i, j, hh, ww = crop_boxes(crop[k : k + 1], h, w, spec.crop_scale, spec.crop_ratio)[0]
        # crop, then antialiased bilinear resize: RandomResizedCrop on a PIL image
        box = (int(j), int(i), int(j + ww), int(i + hh))
        view = image.crop(box).resize((size, size), Image.Resampling.BILINEAR)
        if flip[k]:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[k] = np.asarray(view)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


class _ViewParams:
    """The view parameters of every step, from (seed, epoch, step) alone, and the photometric
    part of a batch's views: small, so that a worker can hold it."""

    def __init__(self, aug: MultiViewAugment, layout: Layout) -> None:
        self.aug, self.seed, self.batch = aug, layout.seed, layout.batch
        self.lo, self.hi = layout.lo, layout.hi

    def params(self, epoch: int, k: int) -> list[ViewParams]:
        """Every view parameter of the global batch of step ``k`` of ``epoch`` (crops as
        uniforms: the workers turn them into boxes on each image's own size)."""
        gen = derived_generator(self.seed, _VIEWS, epoch, k)
        return self.aug.sample(self.batch, None, None, gen)

    def local(self, epoch: int, k: int) -> list[ViewParams]:
        return [p.slice(self.lo, self.hi) for p in self.params(epoch, k)]

    def photometric(self, crops: torch.Tensor, epoch: int, k: int) -> torch.Tensor:
        """The views of step ``k`` of ``epoch`` from its crops (uint8 (b, K, 3, s, s))."""
        return self.aug.apply_cropped(crops, self.local(epoch, k))


class _Collate:
    """Stack a batch's crops (uint8 (b, K, 3, s, s)); with ``views`` also make its photometric
    part there, in the worker, batched (float views): the CPU route, where the workers are the
    only parallel compute."""

    def __init__(self, views: _ViewParams | None) -> None:
        self.views = views

    def __call__(self, samples: list[tuple[torch.Tensor, int, int]]) -> torch.Tensor:
        crops = torch.stack([c for c, _, _ in samples])
        if self.views is None:
            return crops
        _, epoch, step = samples[0]
        return self.views.photometric(crops, epoch, step)


class _StepSampler:
    """Yields, for each remaining step of the epoch, this rank's slice of the global batch as
    items of :class:`_Geometric`; runs in the main process (a DataLoader ``batch_sampler``)."""

    def __init__(self, views: _ViewParams, num_images: int) -> None:
        self.views, self.num_images = views, num_images
        self.steps_per_epoch = num_images // views.batch
        self.epoch, self.start = 0, 0

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = derived_generator(self.views.seed, _PERMUTATION, epoch)
        return torch.randperm(self.num_images, generator=gen)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def __iter__(self) -> Iterator[list[Item]]:
        v = self.views
        perm = self.permutation(self.epoch)
        for k in range(self.start, self.steps_per_epoch):
            idx = perm[k * v.batch : (k + 1) * v.batch][v.lo : v.hi]
            params = v.local(self.epoch, k)
            crop = torch.stack([p.crop for p in params], dim=1)  # (local, K, attempts, 4)
            flip = torch.stack([p.flip for p in params], dim=1)  # (local, K)
            yield [(int(i), crop[n], flip[n], self.epoch, k) for n, i in enumerate(idx.tolist())]


class StreamBatches:
    """The streaming path: see the module doc."""

    def __init__(
        self,
        files: ImageFiles,
        aug: MultiViewAugment,
        layout: Layout,
        size: int,
        workers: int = 0,
        prefetch: int = 2,
        views_in_workers: bool = False,
    ) -> None:
        self.files, self.aug, self.seed = files, aug, layout.seed
        self.batch, self.device = layout.batch, layout.device
        self.num_images, self.channels, self.size = len(files), 3, size
        layout.check(self.num_images)
        self.lo, self.hi = layout.lo, layout.hi
        self.views = _ViewParams(aug, layout)
        self.sampler = _StepSampler(self.views, self.num_images)  # no cycle back to self
        specs = [aug.spec_of(k) for k in range(aug.num_views)]
        workers = resolve_workers(workers)
        self.views_in_workers = views_in_workers and workers > 0
        self.loader = DataLoader(
            _Geometric(files, specs, size),
            batch_sampler=self.sampler,
            collate_fn=_Collate(self.views if self.views_in_workers else None),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None,
        )
        self._it: Iterator[torch.Tensor] | None = None
        self.epoch = self.k = 0
        self._perm, self._perm_epoch = torch.empty(0, dtype=torch.long), -1
        self.last_index = torch.empty(0, dtype=torch.long)  # this rank's images of the last batch
        self.index_on_device = self.last_index

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        self.sampler.epoch, self.sampler.start = epoch, step_in_epoch
        self.epoch, self.k = epoch, step_in_epoch
        with host_side():  # the loader draws its workers' seeds on the host
            self._it = iter(self.loader)

    def next_views(self) -> torch.Tensor:
        if self._it is None:
            raise RuntimeError("start_epoch must be called before next_views")
        batch = next(self._it).to(self.device, non_blocking=True)
        with host_side():
            if self._perm_epoch != self.epoch:
                self._perm, self._perm_epoch = self.sampler.permutation(self.epoch), self.epoch
            b = self.batch
            self.last_index = self._perm[self.k * b : (self.k + 1) * b][self.lo : self.hi]
            index = self.last_index.pin_memory() if self.device.type == "cuda" else self.last_index
        self.index_on_device = index.to(self.device, non_blocking=True)
        self.k += 1
        if self.views_in_workers:
            return batch
        return self.views.photometric(batch, self.epoch, self.k - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"stream_seed": self.seed}  # epoch and step are the loop's

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _require(state, ("stream_seed",), "stream")


def make_batches(
    split: ImageTensors | ImageFiles,
    aug: MultiViewAugment,
    layout: Layout,
    size: int,
    workers: int = -1,
    prefetch: int = 2,
    views_on: str = "auto",
) -> TrainBatches:
    """Batches of K views of ``split``: from memory for a tensor split, streamed for files
    (``views_on``: the photometric part on the device, in the workers, or ``auto``: in the
    workers when the device is the CPU)."""
    if isinstance(split, ImageFiles):
        cpu = layout.device.type == "cpu"
        in_workers = views_on == "workers" or (views_on == "auto" and cpu)
        return StreamBatches(split, aug, layout, size, workers, prefetch, in_workers)
    return TensorBatches(split.images, aug, layout)
