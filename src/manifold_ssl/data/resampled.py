"""Training batches from shards read sequentially, resampled (``data.loader: resampled``), as
OpenCLIP reads web-scale data: for remote shards (``http(s)://``, ``pipe:``) that cannot be read
by random access, or local ones read that way on purpose.

Semantics, which differ from the random-access loaders (:mod:`.stream`):

* An epoch is ``data.samples_per_epoch`` samples (global; ``samples_per_epoch // batch`` steps).
* Each process reads ``data.streams`` independent streams ("lanes"). Lane ``l`` of rank ``r`` in
  epoch ``e`` draws shards *with replacement* from a generator seeded by ``(seed, r, e, l)``,
  reads each shard to its end and passes its samples through a shuffle buffer of
  ``data.shuffle_buffer`` samples (from the same generator), which gives its first sample once
  it holds ``data.shuffle_initial`` and then grows, reading two samples for each one it gives
  (``webdataset.shuffle``'s ``initial``): a lane that gives c samples reads at most
  ``min(2c + initial, c + buffer)``, not a full buffer at every epoch's start; step ``k`` of the epoch takes this
  rank's ``batch / world`` samples from lane ``k mod streams``. So the batches are a function
  of the seed, the epoch, the step, the rank and the number of streams alone: not of
  ``data.workers`` (each DataLoader worker reads some of the lanes; the main process puts
  their batches back in step order), and not of where a run was resumed.
* Ranks read different streams: under DDP the global batch is every rank's samples, not a slice
  of one permutation, and a 2-process run does not equal a 1-process run sample for sample
  (the random-access loaders do). Each rank's views take its slice of the global batch's view
  parameters, drawn from ``(seed, epoch, step)``, as the stream loader's.
* Resume is exact: a run resumed at step ``k`` of an epoch re-reads that epoch's lanes from
  their start and discards the samples of its first ``k`` steps without decoding them (their
  bytes are read again: resuming late in a long epoch costs that traffic). Nothing of the
  streams goes into the checkpoint.
* A shard that cannot be read (HTTP error, a failing command, a truncated tar) raises an error
  naming it (``data.shard_errors: raise``), or is skipped, reported on one line and counted for
  the run (``skip``: :attr:`ResampledBatches.shards_skipped` skips, of the distinct shards
  :attr:`ResampledBatches.bad_shards`: shards are drawn with replacement, so one bad shard is
  skipped again; the samples a truncated shard gave before its cut are used; a transient
  failure makes the run
  differ from an uninterrupted one). Reads time out (:data:`~.remote.TIMEOUT_S`); when every
  shard drawn in a row fails, the run stops with an error rather than loop.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..dispatch import host_side
from .files import IMAGE_SUFFIXES, open_rgb, resolve_workers
from .remote import ShardError, shard_samples
from .stream import Layout, _ViewParams, geometric_views
from .views import MultiViewAugment

__all__ = ["ResampledBatches"]

_IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)
_SHARDS = 2  # the generator path of the shard streams (beside the stream loader's 0 and 1)


class _Lane:
    """One stream: shards drawn with replacement, read in order, through a shuffle buffer that
    gives its first sample once it holds ``initial`` samples and then grows to ``buffer``,
    reading two samples for each one it gives (``webdataset.shuffle(bufsize, initial)``)."""

    def __init__(
        self,
        urls: list[str],
        rng: np.random.Generator,
        buffer: int,
        errors: str,
        keep: Any,
        initial: int | None = None,
    ) -> None:
        self.urls, self.rng, self.size, self.errors, self.keep = urls, rng, buffer, errors, keep
        self.initial = min(buffer, buffer if initial is None else initial)
        self.buffer: list[dict[str, bytes]] = []
        self.shard: Iterator[dict[str, bytes]] | None = None
        self.failed_in_a_row = self.barren_in_a_row = 0
        self.skips: list[tuple[str, str]] = []  # (url, error) of each skip, not yet reported
        self.kept_in_shard, self.url = False, ""

    def _read(self) -> dict[str, bytes]:
        """The next sample of the stream (drawing the next shard when one ends)."""
        while True:
            if self.shard is None:
                self.url = self.urls[int(self.rng.integers(len(self.urls)))]
                self.shard, self.kept_in_shard = shard_samples(self.url), False
            try:
                sample = next(self.shard)
            except StopIteration:
                self.shard = None
                self._ended()
                continue
            except OSError as err:
                self.shard = None
                self._failed(err)
                continue
            self.failed_in_a_row = 0
            if self.keep(sample):
                self.kept_in_shard = True
                return sample

    def _ended(self) -> None:
        """A shard read to its end: it must have had a sample of the kept classes, or one of
        the next shards must (never an endless read of shards that give nothing)."""
        self.barren_in_a_row = 0 if self.kept_in_shard else self.barren_in_a_row + 1
        if self.barren_in_a_row >= max(8, 2 * len(self.urls)):
            raise ValueError(
                f"{self.barren_in_a_row} shards in a row (last {self.url}) held no image of the "
                "evaluation data's classes (their .cls values, after data.classes_file)"
            )

    def _failed(self, err: OSError) -> None:
        if self.errors == "raise":
            raise ShardError(str(err)) from None
        self.skips.append((self.url, str(err)))
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= max(8, 2 * len(self.urls)):
            raise OSError(f"{self.failed_in_a_row} shards in a row could not be read; last: {err}")

    def next(self) -> dict[str, bytes]:
        self.buffer.append(self._read())
        if len(self.buffer) < self.size:  # growing: two read for each one given
            self.buffer.append(self._read())
        while len(self.buffer) < self.initial:  # the first fill
            self.buffer.append(self._read())
        i = int(self.rng.integers(len(self.buffer)))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()


class _Shards(IterableDataset):
    """Yields ``(step, views or crops, labels, the errors of the shards skipped for it)`` for
    this worker's steps of ``epoch`` from ``start`` on (in a DataLoader worker, or the main
    process). A step before ``start`` is read again to resume: its skips were counted then."""

    def __init__(
        self,
        urls: list[str],
        classes: list[str],
        views: _ViewParams,
        size: int,
        streams: int,
        steps: int,
        buffer: int,
        errors: str,
        rank: int,
        views_in_workers: bool,
        initial: int | None = None,
    ) -> None:
        self.urls, self.index = urls, {c: i for i, c in enumerate(classes)}
        self.views, self.size, self.streams, self.steps = views, size, streams, steps
        self.buffer, self.errors, self.rank, self.initial = buffer, errors, rank, initial
        self.views_in_workers = views_in_workers
        self.specs = [views.aug.spec_of(k) for k in range(views.aug.num_views)]
        self.epoch = self.start = 0

    def _label(self, sample: dict[str, bytes]) -> str:
        return sample.get("cls", b"").decode().strip()

    def _keep(self, sample: dict[str, bytes]) -> bool:
        """Samples of a kept class with an image (a class list keeps some classes only)."""
        return self._label(sample) in self.index and any(k in sample for k in _IMAGE_KEYS)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, list[str]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        seed = self.views.seed % (1 << 63)
        lanes = {
            lane: _Lane(
                self.urls,
                np.random.default_rng([seed, _SHARDS, self.rank, self.epoch, lane]),
                self.buffer,
                self.errors,
                self._keep,
                self.initial,
            )
            for lane in range(worker, self.streams, workers)
        }
        local = self.views.hi - self.views.lo
        for k in range(self.steps):
            lane = lanes.get(k % self.streams)
            if lane is None:
                continue
            samples = [lane.next() for _ in range(local)]
            skips, lane.skips = lane.skips, []
            if k < self.start:
                continue  # read again to resume exactly, not decoded
            with host_side():  # (never a yield inside: the mark would outlive the batch)
                batch, labels = self._batch(samples, k)
            yield k, batch, labels, skips

    def _batch(self, samples: list[dict[str, bytes]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.views.local(self.epoch, k)
        crops = []
        for n, sample in enumerate(samples):
            image = open_rgb(next(sample[key] for key in _IMAGE_KEYS if key in sample))
            crop = torch.stack([p.crop[n] for p in params])  # (K, attempts, 4)
            flip = torch.stack([p.flip[n] for p in params])  # (K,)
            crops.append(geometric_views(image, crop, flip, self.specs, self.size))
        batch = torch.stack(crops)  # uint8 (b, K, 3, s, s)
        if self.views_in_workers:
            batch = self.views.photometric(batch, self.epoch, k)
        labels = torch.tensor([self.index[self._label(s)] for s in samples], dtype=torch.long)
        return batch, labels


class ResampledBatches:
    """The resampled shard loader: see the module doc. ``labels_on_device``: the class ids of
    the last batch (for the online head), from the shards' ``.cls``."""

    def __init__(
        self,
        urls: list[str],
        classes: list[str],
        aug: MultiViewAugment,
        layout: Layout,
        size: int,
        samples_per_epoch: int,
        streams: int = 8,
        buffer: int = 1000,
        errors: str = "raise",
        workers: int = 0,
        prefetch: int = 2,
        views_in_workers: bool = False,
        initial: int | None = 100,
    ) -> None:
        if not layout.batch <= samples_per_epoch:
            raise ValueError(
                f"data.samples_per_epoch {samples_per_epoch} must be at least train.batch_size "
                f"{layout.batch}"
            )
        layout.check(samples_per_epoch)
        self.num_images, self.channels, self.device = samples_per_epoch, 3, layout.device
        self.seed, self.streams = layout.seed, streams
        self.views = _ViewParams(aug, layout)
        workers = min(resolve_workers(workers), streams)
        self.views_in_workers = views_in_workers and workers > 0
        self.dataset = _Shards(
            urls,
            classes,
            self.views,
            size,
            streams,
            samples_per_epoch // layout.batch,
            buffer,
            errors,
            layout.rank,
            self.views_in_workers,
            initial,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=prefetch if workers > 0 else None,
        )
        self._it: Iterator[Any] | None = None
        self._pending: dict[int, Any] = {}
        self.epoch = self.k = 0
        self.shards_skipped = 0  # reads of an unreadable shard skipped (shard_errors=skip)
        self.bad_shards: set[str] = set()  # the distinct shards those reads were of
        self.last_index = torch.empty(0, dtype=torch.long)  # not indices into a split
        self.index_on_device = self.last_index
        self.labels_on_device = self.last_index

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        self.dataset.epoch, self.dataset.start = epoch, step_in_epoch
        self.epoch, self.k, self._pending = epoch, step_in_epoch, {}
        with host_side():  # the loader draws its workers' seeds on the host
            self._it = iter(self.loader)

    def next_views(self) -> torch.Tensor:
        if self._it is None:
            raise RuntimeError("start_epoch must be called before next_views")
        while self.k not in self._pending:  # the workers' batches, back in step order
            k, batch, labels, skips = next(self._it)
            self._pending[k] = (batch, labels)
            for url, cause in skips:  # one line each, counted for the run (not per stream)
                self.shards_skipped += 1
                self.bad_shards.add(url)
                print(  # shards are drawn with replacement: one bad shard is met again
                    f"skipped an unreadable shard (skip {self.shards_skipped} this run, of "
                    f"{len(self.bad_shards)} distinct shards; data.shard_errors=skip): {cause}",
                    file=sys.stderr,
                )
        batch, labels = self._pending.pop(self.k)
        batch = batch.to(self.device, non_blocking=True)
        self.labels_on_device = labels.to(self.device, non_blocking=True)
        self.k += 1
        if self.views_in_workers:
            return batch
        return self.views.photometric(batch, self.epoch, self.k - 1)

    def state_dict(self) -> dict[str, Any]:
        # the epoch and step are the loop's; the streams restart from them (module doc)
        return {
            "resampled_seed": self.seed,
            "shards_skipped": self.shards_skipped,
            "bad_shards": sorted(self.bad_shards),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "resampled_seed" not in state:
            raise ValueError(
                "the checkpoint lacks the resampled loader's state: it was not written by a "
                "data.loader=resampled run"
            )
        self.shards_skipped = int(state["shards_skipped"])
        self.bad_shards = set(state.get("bad_shards", ()))  # absent before helper 16
