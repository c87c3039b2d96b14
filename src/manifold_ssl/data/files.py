"""Image sets indexed on disk and decoded when read: folders, tar archives, WebDataset shards.

:class:`ImageFiles` is the lazy twin of :class:`~manifold_ssl.data.datasets.ImageTensors`:
labels and classes in memory, images as an index of byte ranges, decoded one at a time (by the
streaming loader's workers, or by :meth:`ImageFiles.load` into a uint8 tensor for the memory
path). Sources:

* a folder ``<path>/<split>/<class>/<image>`` (images of any size);
* a ``.tar`` archive of the same layout, read by offset; a ``.tar.gz``/``.tgz`` is decompressed
  once into the cache (gzip cannot seek);
* WebDataset shards (``<key>.jpg`` + ``<key>.cls``), a brace pattern such as
  ``shards/{split}-{000000..000127}.tar``, or a glob (``shards/{split}-*.tar``) where the splits
  have different shard counts.

Why not ``webdataset.WebDataset`` to read shards: it reads them sequentially with a shuffle
buffer, so a run cannot draw one seeded permutation of the whole training set or resume
exactly mid-epoch. Shards are indexed once (member offsets, with the ``tarfile`` module) and
then read by random access like any archive; ``webdataset.TarWriter`` writes them and
``braceexpand`` (its dependency) expands the pattern.

The index of each (source, split) is cached under ``<root>/cache`` as tensors (no Python
string per image, so forked workers share it without copying), keyed by the source's path
and the modification times of its folders or archives.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .._atomic import atomic_file
from .cache import cache_prefix, remove_stale, save_cache
from .paths import DataPath, check_disjoint, split_path
from .tars import file_end_problem
from .tensors import ImageTensors

#: The one class of caption-only shards (no ``.cls``): multimodal pretraining reads their
#: captions; a run evaluates on another labelled data set (``eval.zero_shot_data``).
UNLABELLED = "unlabelled"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
#: The data sources read from files (indexed here; decoded or streamed), the rest are tensors.

__all__ = [
    "ImageFiles",
    "centre_view",
    "index_images",
    "index_shards",
    "open_rgb",
    "resolve_workers",
    "to_tensor",
]


@dataclass
class ImageFiles:
    """``len`` images of a split as byte ranges, their labels and the class names.

    ``members[i] = (archive, offset, size)`` with ``archive = -1`` for a plain file whose path
    is ``names[i]``; otherwise the bytes ``offset:offset + size`` of ``archives[archive]``.
    ``size`` and ``crop_fraction`` define the un-augmented view (:func:`centre_view`) that
    evaluation, probes and :meth:`load` use.
    """

    names: np.ndarray  # (N,) np.bytes_ (UTF-8): file paths or member names
    members: np.ndarray  # (N, 3) int64
    archives: tuple[str, ...]
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    size: int | None = None
    crop_fraction: float = 1.0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageFiles:
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.numpy()
        return replace(
            self, names=self.names[rows], members=self.members[rows], labels=self.labels[idx]
        )

    def read(self, i: int) -> bytes:
        archive, offset, size = (int(v) for v in self.members[i])
        if archive < 0:
            return Path(os.fsdecode(self.names[i])).read_bytes()
        return _read_range(self.archives[archive], offset, size)

    def open(self, i: int) -> Image.Image:
        """Image ``i`` decoded, as an RGB PIL image at its own size."""
        try:
            return open_rgb(self.read(i))
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            name = self.names[i].decode(errors="replace")
            raise ValueError(f"cannot decode image {name}: {err}") from None

    def view(self, i: int) -> torch.Tensor:
        """Image ``i``'s un-augmented view: uint8 (3, size, size), or its own size if None."""
        image = to_tensor(self.open(i))
        return image if self.size is None else centre_view(image, self.size, self.crop_fraction)

    def batches(self, batch_size: int, workers: int = 0) -> Iterator[torch.Tensor]:
        """The un-augmented views in order, as uint8 (b, 3, s, s) batches decoded by
        ``workers`` DataLoader processes."""
        loader = DataLoader(
            _Views(self),
            batch_size=batch_size,
            num_workers=resolve_workers(workers),
            collate_fn=_stack_views,
            persistent_workers=False,
        )
        yield from loader

    def load(self, workers: int = 0) -> ImageTensors:
        """Every image decoded into memory at its un-augmented view (the memory path)."""
        from tqdm.auto import tqdm

        batches = self.batches(256, workers)
        total = -(-len(self) // 256)
        quiet = len(self) < 5000  # the normalisation sample, probe images: no bar
        bar = tqdm(batches, total=total, desc="decoding", unit="batch", leave=False, disable=quiet)
        chunks = list(bar)
        if not chunks:
            raise FileNotFoundError("no images to load")
        return ImageTensors(torch.cat(chunks), self.labels.clone(), self.classes)

    def with_view(self, size: int | None, crop_fraction: float = 1.0) -> ImageFiles:
        return replace(self, size=size, crop_fraction=crop_fraction)


class _Views(Dataset[torch.Tensor]):
    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.files.view(i)


def _stack_views(views: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) > 1:
        raise ValueError(
            f"the images differ in size ({sorted(shapes)[:3]} ...): set data.image_size, the "
            "side they are resized to (the memory loader once into its cache, the stream "
            "loader as it reads them)"
        )
    return torch.stack(views)


def resolve_workers(workers: int) -> int:
    """``data.workers``: -1 is one per CPU core (at most 8)."""
    return min(8, os.cpu_count() or 1) if workers < 0 else workers


# --------------------------------------------------------------------------- decoding
def open_rgb(data: bytes) -> Image.Image:
    """A decoded RGB PIL image of encoded ``data`` (any format Pillow reads)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) of an RGB PIL image."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def centre_view(image: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """Resize the shorter side to ``size / crop_fraction`` and take the central size×size (the
    evaluation view of the papers: ImageNet 224 of 256 is ``crop_fraction`` 0.875)."""
    from torchvision.transforms.v2 import functional as TF

    short = round(size / crop_fraction)
    if min(image.shape[-2:]) != short:
        image = TF.resize(image, [short], antialias=True)
    return TF.center_crop(image, [size, size])


_HANDLES: dict[str, int] = {}  # per process (each DataLoader worker opens its own)


def _read_range(archive: str, offset: int, size: int) -> bytes:
    fd = _HANDLES.get(archive)
    if fd is None:
        fd = _HANDLES[archive] = os.open(archive, os.O_RDONLY)
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    with open(archive, "rb") as f:  # pragma: no cover - platforms without pread
        f.seek(offset)
        return f.read(size)


# --------------------------------------------------------------------------- indexing
def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def read_class_list(path: str | None) -> list[str] | None:
    """Class names, one per line (``#`` comments, blank lines ignored): a class subset such as
    the ImageNet-100 list of Yerxa et al."""
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.classes_file {file} does not exist")
    names = [ln.split("#")[0].strip() for ln in file.read_text().splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"data.classes_file {file} must list distinct class names, one per line")
    return names


def _keep_classes(found: list[str], subset: list[str] | None, where: str) -> list[str]:
    if subset is None:
        return found
    missing = sorted(set(subset) - set(found))
    if missing:
        raise ValueError(
            f"data.classes_file names classes that {where} lacks: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}"
        )
    return sorted(subset)


def _folder_items(base: Path, split: str) -> Iterator[tuple[str, str]]:
    folder = base / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: no folder {folder} (expected <path>/{split}/<class>/<image>)"
        )
    for cls in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
        for entry in sorted(os.scandir(folder / cls), key=lambda e: e.name):
            if entry.is_file() and _is_image(entry.name):
                yield cls, entry.path


def _tar_items(archive: Path, split: str) -> Iterator[tuple[str, str, int, int]]:
    """(class, member name, offset, size) of ``<...>/<split>/<class>/<image>`` members."""
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise ValueError(
            f"imagefolder: data.path {archive} is neither a folder nor a readable .tar/.tar.gz "
            f"archive ({err})"
        ) from None
    with tar:
        try:
            for m in tar:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 3 and parts[-3] == split and _is_image(m.name):
                    yield parts[-2], m.name, m.offset_data, m.size
            problem = file_end_problem(tar)  # tarfile ends a cut archive silently
        except tarfile.TarError as err:  # cut inside a member
            problem = f"not a readable .tar ({err})"
    if problem:
        raise ValueError(f"imagefolder: data.path {archive} is {problem}")


def _fingerprint(paths: Iterable[Path]) -> str:
    digest = hashlib.sha1()
    for p in paths:
        st = p.stat()
        digest.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _seekable(path: Path, root: Path) -> Path:
    """``path`` itself, or for a gzipped tar its decompressed copy in ``<root>/cache``."""
    if not path.name.endswith((".gz", ".tgz")):
        return path
    content = _fingerprint([path])
    out = (
        root
        / "cache"
        / f"{cache_prefix(path.name.split('.')[0], str(path.resolve()))}{content}.tar"
    )
    if not out.exists():
        try:
            with gzip.open(path, "rb") as src, atomic_file(out, "wb", shared=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            remove_stale(out, content)  # an edited archive's old copy
        except (OSError, EOFError) as err:
            raise ValueError(
                f"imagefolder: data.path {path} is neither a folder nor a readable .tar/.tar.gz "
                f"archive ({err})"
            ) from None
    return out


def _cached_index(
    cache: Path, build: Iterator[tuple[str, str, int, int, int]], content: str
) -> dict:
    """Index rows (class, name, archive, offset, size) from ``cache``, or built and saved (and
    the index of the source's earlier ``content`` removed)."""
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            names = bytes(blob["names"].numpy()).decode().split("\0") if len(blob["cls"]) else []
            return {
                "cls": list(blob["cls"]),
                "names": names,
                "members": blob["members"].numpy(),
            }
        except Exception as err:
            warnings.warn(f"the index {cache} cannot be read ({err}); indexing again", stacklevel=3)
    cls, names, members = [], [], []
    for c, name, archive, offset, size in build:
        cls.append(c)
        names.append(name)
        members.append((archive, offset, size))
    table = np.asarray(members, dtype=np.int64).reshape(-1, 3)
    joined = np.frombuffer("\0".join(names).encode(), dtype=np.uint8).copy()
    blob = {"cls": cls, "names": torch.from_numpy(joined), "members": torch.from_numpy(table)}
    save_cache(blob, cache, content)
    return {"cls": cls, "names": names, "members": table}


def _files(
    rows: dict,
    classes: list[str],
    archives: tuple[str, ...],
    split: str,
    where: str,
    subset: bool,
) -> ImageFiles:
    """The rows of ``classes``; a class of another split that the training split lacks is an
    error, unless a class list chose the classes."""
    lookup = {c: i for i, c in enumerate(classes)}
    keep = [i for i, c in enumerate(rows["cls"]) if c in lookup]
    foreign = sorted({c for c in rows["cls"] if c not in lookup})
    if foreign and not subset:
        raise ValueError(
            f"imagefolder: class {foreign[0]!r} of split {split!r} is not a class of the "
            f"training split (classes: {classes[:20]})"
        )
    if not keep:
        raise FileNotFoundError(f"{where}: no images for split {split!r}")
    names = np.array([rows["names"][i].encode() for i in keep], dtype=np.bytes_)
    labels = torch.tensor([lookup[rows["cls"][i]] for i in keep], dtype=torch.int64)
    return ImageFiles(names, rows["members"][keep], archives, labels, classes)


def index_images(
    path: str | os.PathLike[str],
    split: str,
    root: str | os.PathLike[str] = "data",
    classes_file: str | None = None,
) -> ImageFiles:
    """Index ``<path>/<split>/<class>/<image>`` (a folder or a .tar/.tar.gz archive). Labels
    number the training split's classes (or those of ``classes_file``) in sorted order, so
    that label i means the same class in every split."""
    src = Path(path).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"imagefolder: data.path {src} does not exist")
    root = Path(root)
    subset = read_class_list(classes_file)
    if src.is_dir():
        stamp = [src / s for s in ("train", split) if (src / s).is_dir()]
        stamp += [d for s in stamp for d in (s.iterdir()) if d.is_dir()]
        archives: tuple[str, ...] = ()

        def rows(s: str) -> Iterator[tuple[str, str, int, int, int]]:
            return ((c, p, -1, 0, 0) for c, p in _folder_items(src, s))
    else:
        tar = _seekable(src, root)
        stamp, archives = [tar], (str(tar.resolve()),)

        def rows(s: str) -> Iterator[tuple[str, str, int, int, int]]:
            return ((c, n, 0, o, z) for c, n, o, z in _tar_items(tar, s))

    content = _fingerprint(stamp)
    key = f"{cache_prefix(src.name.split('.')[0], str(src.resolve()))}{content}"
    cache = root / "cache" / "index"
    train = _cached_index(cache / f"{key}-train.pt", rows("train"), content)
    found = sorted(set(train["cls"]))
    if not found:
        raise FileNotFoundError(f"imagefolder: {src} has no images under a 'train/<class>/' folder")
    classes = _keep_classes(found, subset, str(src))
    table = (
        train
        if split == "train"
        else _cached_index(cache / f"{key}-{split}.pt", rows(split), content)
    )
    return _files(table, classes, archives, split, f"imagefolder {src}", subset is not None)


def _shard_rows(shard: Path, archive: int) -> Iterator[tuple[str, str, int, int, int]]:
    """(class, key, archive, offset, size) of each sample's image in a WebDataset shard; the
    class is the text of its ``.cls`` member, or :data:`UNLABELLED` in a shard without any
    (caption-only shards, DataComp- and CC3M-style: ``<key>.jpg`` + ``<key>.txt``)."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, str] = {}
    try:
        tar = tarfile.open(shard)
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"webdataset: shard {shard} is not a readable .tar ({err})") from None
    with tar:
        try:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if ext == "cls":
                    handle = tar.extractfile(m)
                    labels[key] = (handle.read() if handle else b"").decode().strip()
                elif _is_image(m.name) and key not in images:
                    images[key] = (m.offset_data, m.size)
            problem = file_end_problem(tar)  # tarfile ends a cut archive silently
        except tarfile.TarError as err:  # cut inside a member
            problem = f"not a readable .tar ({err})"
    if problem:
        raise ValueError(f"webdataset: shard {shard} is {problem}")
    if labels and len(labels) < len(images):
        key = next(k for k in images if k not in labels)
        raise ValueError(
            f"webdataset: sample {key} of {shard} has no .cls label, but others have (a shard "
            "is labelled throughout, or caption-only: no .cls at all)"
        )
    for key, (offset, size) in images.items():
        yield labels.get(key, UNLABELLED), key, archive, offset, size


def _label_order(name: str) -> tuple[int, str]:
    return (int(name), name) if name.lstrip("-").isdigit() else (1 << 62, name)


def index_shards(
    pattern: DataPath,
    split: str,
    root: str | os.PathLike[str] = "data",
    classes_file: str | None = None,
) -> ImageFiles:
    """Index the WebDataset shards of ``split``: its pattern (``{split}`` replaced by
    ``split``, or ``pattern[split]`` of a mapping), brace expanded or globbed. Classes are the
    ``.cls`` values of the training shards, integers in numeric order (label = position),
    names in sorted order. A split that reads training shards is refused
    (:func:`~.paths.check_disjoint`)."""
    from braceexpand import braceexpand

    def shards(s: str) -> list[Path]:
        named = split_path(pattern, s)
        if "://" in named or named.startswith("pipe:"):
            raise ValueError(
                f"webdataset: {named!r} is remote; the random-access readers take files "
                "(data.loader=resampled reads remote shards, and fetches the evaluation's)"
            )
        if any(c in named for c in "*?["):  # a glob: each split has its own shard count
            paths = [Path(p) for p in sorted(glob.glob(os.path.expanduser(named)))]
            if not paths:
                raise FileNotFoundError(f"webdataset: no shard matches {named}")
            return paths
        paths = [Path(p).expanduser() for p in braceexpand(named)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"webdataset: shards not found: {missing[:5]} (splits with different shard "
                "counts: a glob such as shards/{split}-*.tar)"
            )
        return paths

    root = Path(root)
    cache = root / "cache" / "index"

    def table(s: str) -> tuple[dict, tuple[str, ...]]:
        paths = shards(s)
        content = _fingerprint(paths)
        key = f"{cache_prefix('wds', str(pattern))}{content}"
        rows = (r for i, p in enumerate(paths) for r in _shard_rows(p, i))
        index = _cached_index(cache / f"{key}-{s}.pt", rows, content)
        return index, tuple(str(p.resolve()) for p in paths)

    train, archives = table("train")
    found = sorted(set(train["cls"]), key=_label_order)
    subset = read_class_list(classes_file)
    classes = sorted(_keep_classes(found, subset, str(pattern)), key=_label_order)
    if split != "train":
        train_archives = archives
        rows, archives = table(split)
        check_disjoint(split, archives, train_archives)
    else:
        rows = train
    return _files(rows, classes, archives, split, f"webdataset {pattern}", subset is not None)
