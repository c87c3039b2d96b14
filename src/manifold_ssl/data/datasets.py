"""Datasets as uint8 tensors: decoded once, cached on disk, served from memory or the device.

Every dataset yields :class:`ImageTensors` ``(images uint8 (N, C, H, W), labels int64 (N,),
classes)``. Decoding happens once per (dataset, split) into ``<root>/cache/*.pt`` (written
atomically, loaded with ``weights_only=True``); later runs read the cache in well under a second.

Registry (``DATASETS``):

* ``digits``: scikit-learn's 8×8 handwritten digits (1,797 images, ships with scikit-learn, no
  download). There is no official test split: a fixed stratified 20% (seed 0) is the test set.
* ``cifar10``, ``cifar100``: the "python version" batches under ``<root>/cifar-10-batches-py``
  (``cifar-100-python``); downloaded by torchvision where a network exists.
* ``stl10``: the binary files under ``<root>/stl10_binary``; ``split="unlabeled"`` too.
* ``imagefolder``: ``<path>/<split>/<class>/<image>``, as a folder or a ``.tar``/``.tar.gz``
  archive (a leading folder inside the archive, like ``cifar10/``, is allowed).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["DATASETS", "ImageTensors", "load_dataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ImageTensors:
    """A labelled image set held as tensors."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64; -1 where unlabeled
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.images[index], self.labels[index], self.classes)

    def to(self, device: torch.device | str) -> ImageTensors:
        return ImageTensors(self.images.to(device), self.labels.to(device), self.classes)


Loader = Callable[[Path, str, "str | None"], ImageTensors]
DATASETS: dict[str, Loader] = {}


def _register(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return wrap


def load_dataset(
    name: str, split: str, root: str | os.PathLike[str] = "data", path: str | None = None
) -> ImageTensors:
    """Load ``split`` of dataset ``name``, decoding it into the cache on first use.

    ``root`` holds raw downloads and the cache; ``path`` is the folder or archive of the
    ``imagefolder`` dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    root = Path(root)
    key = name if path is None else f"{name}-{_source_key(path)}"
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
    data = DATASETS[name](root, split, path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        torch.save({"images": data.images, "labels": data.labels, "classes": data.classes}, tmp)
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return data


def _source_key(path: str) -> str:
    """Cache key of an image folder or archive: its resolved path and a fingerprint of its
    contents' listing (names, sizes and modification times), so that an edited data set (a new
    class folder, a replaced image) is decoded again instead of served stale."""
    src = Path(path).expanduser().resolve()
    digest = hashlib.sha1(str(src).encode())
    if src.is_dir():
        for file in sorted(src.rglob("*")):
            if file.is_file():
                st = file.stat()
                digest.update(f"{file.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif src.exists():
        st = src.stat()
        digest.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
    return f"{src.name.split('.')[0]}-{digest.hexdigest()[:12]}"


# --------------------------------------------------------------------------- digits
@_register("digits")
def _digits(root: Path, split: str, path: str | None) -> ImageTensors:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', got {split!r}")
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
    if split not in ("train", "test"):
        raise ValueError(f"{name} has splits 'train' and 'test', got {split!r}")
    cls, folder, archive = {
        "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz"),
    }[name]
    ds = _torchvision_set(cls, root, folder, archive, train=split == "train")
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # type: ignore[attr-defined]
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)  # type: ignore[attr-defined]
    return ImageTensors(images, labels, list(ds.classes))  # type: ignore[attr-defined]


@_register("cifar10")
def _cifar10(root: Path, split: str, path: str | None) -> ImageTensors:
    return _cifar("cifar10", root, split)


@_register("cifar100")
def _cifar100(root: Path, split: str, path: str | None) -> ImageTensors:
    return _cifar("cifar100", root, split)


@_register("stl10")
def _stl10(root: Path, split: str, path: str | None) -> ImageTensors:
    if split not in ("train", "test", "unlabeled"):
        raise ValueError(f"stl10 has splits 'train', 'test' and 'unlabeled', got {split!r}")
    ds = _torchvision_set("STL10", root, "stl10_binary", "stl10_binary.tar.gz", split=split)
    labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)  # type: ignore[attr-defined]
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # type: ignore[attr-defined]
    return ImageTensors(images, labels, list(ds.classes))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- image folders
def _folder_classes(path: Path, split: str) -> list[str]:
    base = path / split
    if not base.is_dir():
        raise FileNotFoundError(
            f"imagefolder: no folder {base} (expected <path>/{split}/<class>/<image>)"
        )
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def _iter_folder(path: Path, split: str) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    for cls in _folder_classes(path, split):
        for file in sorted((path / split / cls).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield cls, str(file), file.read_bytes


def _tar_image_parts(name: str, split: str) -> tuple[str, ...] | None:
    parts = Path(name).parts
    if len(parts) < 3 or parts[-3] != split or Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return parts


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except (tarfile.TarError, OSError) as err:
        raise ValueError(
            f"imagefolder: data.path {path} is neither a folder nor a readable .tar/.tar.gz "
            f"archive ({err})"
        ) from None


def _tar_classes(path: Path, split: str) -> list[str]:
    with _open_tar(path) as tar:
        names = {
            parts[-2]
            for m in tar
            if m.isfile() and (parts := _tar_image_parts(m.name, split)) is not None
        }
    if not names:
        raise FileNotFoundError(
            f"imagefolder: the archive {path} has no images under a '{split}/<class>/' folder"
        )
    return sorted(names)


def _iter_tar(path: Path, split: str) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    with _open_tar(path) as tar:
        found = False
        for member in tar:
            parts = _tar_image_parts(member.name, split) if member.isfile() else None
            if parts is None:
                continue
            found = True
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            yield parts[-2], f"{path}:{member.name}", lambda d=data: d  # type: ignore[misc]
        if not found:
            raise FileNotFoundError(
                f"imagefolder: the archive {path} has no images under a '{split}/<class>/' folder"
            )


@_register("imagefolder")
def _imagefolder(root: Path, split: str, path: str | None) -> ImageTensors:
    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise ValueError(
            "imagefolder needs data.path: a folder or .tar/.tar.gz of <split>/<class>/<image>"
        )
    src = Path(path).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"imagefolder: data.path {src} does not exist")
    # one class list for every split, the training split's: label i means the same class in
    # train, val and test, also when a split lacks a class
    classes = _folder_classes(src, "train") if src.is_dir() else _tar_classes(src, "train")
    lookup = {c: i for i, c in enumerate(classes)}
    items = _iter_folder(src, split) if src.is_dir() else _iter_tar(src, split)
    arrays, names, shape = [], [], None
    for cls, name, read in tqdm(
        items, desc=f"decoding {src.name} {split}", unit="img", leave=False
    ):
        if cls not in lookup:
            raise ValueError(
                f"imagefolder: class {cls!r} of split {split!r} ({name}) is not a class of the "
                f"training split (classes: {classes})"
            )
        try:
            with Image.open(io.BytesIO(read())) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"imagefolder: cannot decode image {name}: {err}") from None
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ValueError(
                f"imagefolder: image {name} is {arr.shape[1]}x{arr.shape[0]}, but earlier images are "
                f"{shape[1]}x{shape[0]}; resize the dataset to one size first"
            )
        arrays.append(arr)
        names.append(cls)
    if not arrays:
        raise FileNotFoundError(f"imagefolder: no images under {src} for split {split!r}")
    images = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    labels = torch.tensor([lookup[c] for c in names], dtype=torch.int64)
    return ImageTensors(images, labels, classes)
