"""Datasets as uint8 tensors: decoded once, cached on disk, served from memory or the device.

Every dataset yields :class:`ImageTensors` ``(images uint8 (N, C, H, W), labels int64 (N,),
classes)``. Decoding happens once per (dataset, split) into ``<root>/cache/*.pt`` (written
atomically, loaded with ``weights_only=True``); later runs read the cache in well under a second.

Registry (``DATASETS``: name → :class:`DataSource`, its loader, splits, file index and an
``example`` that writes a tiny data set in its format; every source is tested from it):

* ``digits``: scikit-learn's 8×8 handwritten digits (1,797 images, ships with scikit-learn, no
  download). There is no official test split: a fixed stratified 20% (seed 0) is the test set.
* ``cifar10``, ``cifar100``: the "python version" batches under ``<root>/cifar-10-batches-py``
  (``cifar-100-python``); downloaded by torchvision where a network exists.
* ``stl10``: the binary files under ``<root>/stl10_binary``; ``split="unlabeled"`` too.
* ``imagefolder``: ``<path>/<split>/<class>/<image>``, as a folder or a ``.tar``/``.tar.gz``
  archive (a leading folder inside the archive, like ``cifar10/``, is allowed);
* ``webdataset``: shards of ``<key>.jpg`` + ``<key>.cls``, ``data.path`` a brace pattern with
  ``{split}``.

The last two are indexed by :mod:`manifold_ssl.data.files` and can also be streamed
(``data.loader: stream``); decoded here they need one image size or ``data.image_size``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import cache_prefix, save_cache
from .files import ImageFiles, centre_view, index_images, index_shards, read_class_list
from .paths import DataPath, patterns
from .tensors import ImageTensors

__all__ = ["DATASETS", "DataSource", "ImageTensors", "file_sources", "load_dataset"]

Loader = Callable[..., ImageTensors]  # (root, split, path, **options)
Indexer = Callable[..., ImageFiles]  # (path, split, root, classes_file)


@dataclass(frozen=True)
class DataSource:
    """A data set by name (``data.name``).

    ``load(root, split, path, size=, classes_file=, crop_fraction=, workers=)`` its split as
    uint8 tensors; ``splits`` the splits it has (``()``: those its files hold); ``index(path, split, root, classes_file)``, for
    a source of image files, the split as :class:`~manifold_ssl.data.files.ImageFiles` (what the
    stream loader reads; such a source resizes and selects classes as it indexes); ``path`` what
    ``data.path`` holds ("" when the source takes none); ``example(folder)`` writes a tiny data
    set in the source's format under ``folder`` and returns the ``root``/``path`` keywords of
    :func:`load_dataset` that read it (the tests load every source from it)."""

    load: Loader
    splits: tuple[str, ...]
    example: Callable[[Path], dict[str, str]]
    index: Indexer | None = None
    path: str = ""


DATASETS: dict[str, DataSource] = {}


def _register(name: str, **source: Any) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = DataSource(fn, **source)
        return fn

    return wrap


def file_sources() -> list[str]:
    """The sources read from image files: indexed, streamable (``data.loader=stream``)."""
    return [name for name, source in DATASETS.items() if source.index is not None]


def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] = "data",
    path: DataPath | None = None,
    size: int | None = None,
    classes_file: str | None = None,
    crop_fraction: float = 1.0,
    workers: int = 0,
) -> ImageTensors:
    """Load ``split`` of dataset ``name``, decoding it into the cache on first use.

    ``root`` holds raw downloads and the cache; ``path`` is the folder, archive or shard
    pattern of the ``imagefolder`` and ``webdataset`` datasets. ``size`` resizes every image
    (shorter side to ``size / crop_fraction``, antialiased, then the central size×size) once,
    into the cache: downsampled data for the memory path. ``classes_file`` keeps the classes it
    lists (labels renumbered in sorted order).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    source = DATASETS[name]
    if source.splits and split not in source.splits:
        raise ValueError(f"{name} has splits {list(source.splits)}, got {split!r}")
    root = Path(root)
    content = ""
    key = name
    if path is not None:
        prefix, content = _source_key(path)
        key = f"{name}-{prefix}{content}"
    if size is not None:
        key += f"-{size}px" + ("" if crop_fraction == 1.0 else f"-crop{crop_fraction:g}")
    if classes_file is not None:
        key += "-classes-" + "".join(_source_key(classes_file))
    cache = root / "cache" / f"{key}-{split}.pt"
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            return ImageTensors(blob["images"], blob["labels"], list(blob["classes"]))
        except Exception as err:  # a truncated or foreign file: decode again
            warnings.warn(
                f"the dataset cache {cache} cannot be read ({type(err).__name__}: {err}); "
                "decoding the dataset again",
                stacklevel=2,
            )
    opts = {"size": size, "classes_file": classes_file, "crop_fraction": crop_fraction}
    data = source.load(root, split, path, **opts, workers=workers)
    if source.index is None:
        data = _resize_and_select(data, size, crop_fraction, classes_file)
    blob = {"images": data.images, "labels": data.labels, "classes": data.classes}
    save_cache(blob, cache, content)
    return data


def _resize_and_select(
    data: ImageTensors, size: int | None, crop_fraction: float, classes_file: str | None
) -> ImageTensors:
    subset = read_class_list(classes_file)
    if subset is not None:
        missing = sorted(set(subset) - set(data.classes))
        if missing:
            raise ValueError(f"data.classes_file names classes the dataset lacks: {missing[:10]}")
        keep = sorted(subset)
        old = torch.tensor([data.classes.index(c) for c in keep])
        mask = torch.isin(data.labels, old)
        relabel = torch.full((len(data.classes),), -1, dtype=torch.int64)
        relabel[old] = torch.arange(len(keep))
        labels = data.labels[mask]
        data = ImageTensors(
            data.images[mask], torch.where(labels >= 0, relabel[labels.clamp_min(0)], labels), keep
        )
    if size is not None and tuple(data.images.shape[-2:]) != (size, size):
        chunks = [
            centre_view(data.images[i : i + 1024], size, crop_fraction)
            for i in range(0, len(data), 1024)
        ]
        data = ImageTensors(torch.cat(chunks), data.labels, data.classes)
    return data


def _source_key(path: DataPath) -> tuple[str, str]:
    """Cache key of an image folder, archive or shard pattern, as ``(prefix, content)``: the
    prefix names the source (:func:`cache_prefix`), the content fingerprints its listing (names,
    sizes and modification times), so that an edited data set (a new class folder, a replaced
    image or shard) is decoded again instead of served stale, and its old cache removed."""
    digest = hashlib.sha1()
    if not isinstance(path, str):  # a mapping from split to shard pattern
        for file in sorted({f for p in patterns(path) for f in _pattern_files(p)}):
            st = file.stat()
            digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return cache_prefix("wds", repr(sorted(path.items()))), digest.hexdigest()[:12]
    src = Path(path).expanduser().resolve()
    if src.is_dir():
        for file in sorted(src.rglob("*")):
            if file.is_file():
                st = file.stat()
                digest.update(f"{file.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        for file in _pattern_files(path):
            st = file.stat()
            digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return cache_prefix(src.name.split(".")[0], str(src)), digest.hexdigest()[:12]


def _pattern_files(path: str) -> list[Path]:
    """The files a path names: itself, or every split's shards of a pattern with ``{split}``,
    brace ranges or glob characters."""
    found: set[Path] = set()
    for split in ("train", "test", "val", "unlabeled"):
        named = os.path.expanduser(path.replace("{split}", split))
        if "{" in named:  # a brace range (braceexpand: a WebDataset dependency)
            from braceexpand import braceexpand

            names: Any = braceexpand(named)
        else:
            names = [named]
        for name in names:
            found.update(Path(p).resolve() for p in glob.glob(name) if Path(p).is_file())
    return sorted(found)


# --------------------------------------------------------------------------- digits
def _no_files(folder: Path) -> dict[str, str]:
    return {"root": str(folder)}


@_register("digits", splits=("train", "test"), example=_no_files)
def _digits(root: Path, split: str, path: str | None, **opts: Any) -> ImageTensors:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        index, test_size=0.2, random_state=0, stratify=bunch.target
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return ImageTensors(
        torch.from_numpy(images[idx]),
        torch.from_numpy(bunch.target[idx].astype(np.int64)),
        [str(c) for c in bunch.target_names],
    )


# --------------------------------------------------------------------------- torchvision sets
def _torchvision_set(
    cls_name: str, root: Path, folder: str, download_hint: str, **kwargs: object
) -> object:
    """Open a torchvision dataset from ``root``, downloading it only when the files are missing."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        return cls(str(root), download=False, **kwargs)
    except RuntimeError:
        pass
    try:
        return cls(str(root), download=True, **kwargs)
    except Exception as err:  # no network, or a refused download
        raise FileNotFoundError(
            f"{cls_name} was not found under {root / folder} and could not be downloaded "
            f"({type(err).__name__}: {err}). Put {download_hint} in {root} (extracted, so that "
            f"{root / folder} exists), pass --data.root=<that folder>, or use "
            f"--data.name=imagefolder --data.path=<folder or .tar.gz of <split>/<class>/<image>>."
        ) from None


def _cifar(name: str, root: Path, split: str) -> ImageTensors:
    cls, folder, archive = {
        "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz"),
    }[name]
    ds = _torchvision_set(cls, root, folder, archive, train=split == "train")
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # type: ignore[attr-defined]
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)  # type: ignore[attr-defined]
    return ImageTensors(images, labels, list(ds.classes))  # type: ignore[attr-defined]


def _cifar_example(name: str) -> Callable[[Path], dict[str, str]]:
    from .synthetic import write_cifar

    return lambda folder: {"root": str(write_cifar(folder, name))}


@_register("cifar10", splits=("train", "test"), example=_cifar_example("cifar10"))
def _cifar10(root: Path, split: str, path: str | None, **opts: Any) -> ImageTensors:
    return _cifar("cifar10", root, split)


@_register("cifar100", splits=("train", "test"), example=_cifar_example("cifar100"))
def _cifar100(root: Path, split: str, path: str | None, **opts: Any) -> ImageTensors:
    return _cifar("cifar100", root, split)


def _stl10_example(folder: Path) -> dict[str, str]:
    from .synthetic import write_stl10

    return {"root": str(write_stl10(folder))}


@_register("stl10", splits=("train", "test", "unlabeled"), example=_stl10_example)
def _stl10(root: Path, split: str, path: str | None, **opts: Any) -> ImageTensors:
    ds = _torchvision_set("STL10", root, "stl10_binary", "stl10_binary.tar.gz", split=split)
    labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)  # type: ignore[attr-defined]
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # type: ignore[attr-defined]
    return ImageTensors(images, labels, list(ds.classes))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- image files
def _file_set(kind: str, index: Callable[..., ImageFiles], expected: str) -> Loader:
    def load(root: Path, split: str, path: str | None, **opts: Any) -> ImageTensors:
        if path is None:
            raise ValueError(f"{kind} needs data.path: {expected}")
        return _decode_all(index(path, split, root, opts.get("classes_file")), opts)

    return load


def _folder_example(folder: Path) -> dict[str, str]:
    from .synthetic import write_image_folder

    per_class = {"train": 4, "test": 2}
    images = write_image_folder(folder / "images", 3, per_class, (16, 16))
    return {"root": str(folder), "path": str(images)}


def _shards_example(folder: Path) -> dict[str, str]:
    from .synthetic import write_shards

    per_split = {"train": 12, "test": 6}
    return {"root": str(folder), "path": write_shards(folder / "shards", 3, per_split)}


_FOLDER = "a folder or .tar/.tar.gz of <split>/<class>/<image>"
_SHARDS = "a shard pattern such as shards/{split}-{000000..000099}.tar"
_register(
    "imagefolder",
    splits=(),
    example=_folder_example,
    index=index_images,
    path=_FOLDER,
)(_file_set("imagefolder", index_images, _FOLDER))
_register(
    "webdataset",
    splits=(),
    example=_shards_example,
    index=index_shards,
    path=_SHARDS,
)(_file_set("webdataset", index_shards, _SHARDS))


def _decode_all(files: ImageFiles, opts: dict[str, Any]) -> ImageTensors:
    """Decode indexed files into one tensor, at ``size`` (resized and centre-cropped) or at
    their own size, which must then be one size."""
    files = files.with_view(opts.get("size"), opts.get("crop_fraction", 1.0))
    return files.load(opts.get("workers", 0))
