"""Generated data sets in every format the toolkit reads, for tests and benchmarks: image
folders (below), WebDataset shards (:func:`write_shards`), CIFAR's and STL-10's files
(:func:`write_cifar`, :func:`write_stl10`). The image folders: ``<root>/<split>/<class>/<i>.jpg`` of
varying sizes, ImageNet-like in layout and file size (smooth images, so that JPEG compresses
them as it does photographs), with a class signal a network can learn (each class its own hue).
Nothing here is a data set to report numbers on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "write_caption_shards",
    "write_cifar",
    "write_class_folder",
    "write_image_folder",
    "write_shards",
    "write_stl10",
]


def write_image_folder(
    root: str | Path,
    classes: int = 3,
    per_class: dict[str, int] | None = None,
    sizes: tuple[int, int] = (24, 64),
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write JPEGs of side lengths drawn uniformly from ``sizes`` (height and width apart);
    ``per_class`` images per split (default ``{"train": 8, "test": 4}``). Returns ``root``."""
    root = Path(root)
    per_class = per_class or {"train": 8, "test": 4}
    rng = np.random.default_rng(seed)
    hues = np.linspace(0, 1, classes, endpoint=False)
    for split, count in per_class.items():
        for c in range(classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(
                Image.new("HSV", (1, 1), (int(255 * hues[c]), 200, 200)).convert("RGB")
            )[0, 0]
            for i in range(count):
                h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
                coarse = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
                texture = np.asarray(
                    Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
                )
                image = (0.5 * texture + 0.5 * colour).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{i}.jpg", quality=quality)
    return root


def _images(
    classes: int, count: int, side: int, seed: int, tint_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 (side, side, 3) images and their labels, cycling through the classes:
    each image its class's tint, drawn from ``tint_seed`` alone (so class c looks the same in
    every split and file that shares it), averaged with noise drawn from ``seed``."""
    labels = np.arange(count) % classes
    tint = np.random.default_rng([tint_seed, classes]).integers(0, 256, (classes, 1, 1, 3))
    noise = np.random.default_rng(seed).integers(0, 256, (count, side, side, 3))
    return ((noise + tint[labels]) // 2).astype(np.uint8), labels


def write_shards(
    root: str | Path,
    classes: int = 3,
    per_split: dict[str, int] | None = None,
    side: int = 16,
    shards: int = 2,
    seed: int = 0,
) -> str:
    """WebDataset shards ``<root>/<split>-00000N.tar`` of ``<key>.jpg`` + ``<key>.cls``
    (``per_split`` images per split, default ``{"train": 12, "test": 6}``); returns the brace
    pattern of their paths with ``{split}``, as ``data.path`` takes it."""
    import io
    import tarfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for s, (split, count) in enumerate((per_split or {"train": 12, "test": 6}).items()):
        images, labels = _images(classes, count, side, seed + s, seed)
        for shard in range(shards):
            with tarfile.open(root / f"{split}-{shard:06d}.tar", "w") as tar:
                for i in range(shard, count, shards):
                    jpeg = io.BytesIO()
                    Image.fromarray(images[i]).save(jpeg, format="JPEG", quality=95)
                    for suffix, data in (("jpg", jpeg.getvalue()), ("cls", b"%d" % labels[i])):
                        info = tarfile.TarInfo(f"{split}{i:05d}.{suffix}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return str(root / f"{{split}}-{{000000..{shards - 1:06d}}}.tar")


def write_cifar(
    root: str | Path, name: str = "cifar10", per_split: int = 20, seed: int = 0
) -> Path:
    """CIFAR-10 or CIFAR-100 in the "python version" layout that torchvision reads
    (``<root>/cifar-10-batches-py`` with its five training batches, test batch and meta;
    ``cifar-100-python`` with train, test and meta), ``per_split`` 32×32 images per batch
    file. The files are not the real ones, so torchvision's checksums reject them. Returns
    ``root``."""
    import pickle

    root = Path(root)
    ten = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    classes = 10 if ten else 100
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if ten else ["train", "test"]
    for i, file in enumerate(files):
        images, labels = _images(classes, per_split, 32, seed + i, seed)
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(per_split, -1)}
        entry["labels" if ten else "fine_labels"] = labels.tolist()
        (folder / file).write_bytes(pickle.dumps(entry))
    key, meta = ("label_names", "batches.meta") if ten else ("fine_label_names", "meta")
    (folder / meta).write_bytes(pickle.dumps({key: [f"class{c}" for c in range(classes)]}))
    return root


def write_stl10(root: str | Path, per_split: int = 20, seed: int = 0) -> Path:
    """STL-10 in the binary layout that torchvision reads (``<root>/stl10_binary``: train,
    test and unlabeled images, 96×96, column-major; labels 1–10; class names), ``per_split``
    images per split. torchvision's checksums reject them. Returns ``root``."""
    root = Path(root)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "test", "unlabeled")):
        images, labels = _images(10, per_split, 96, seed + i, seed)
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # (N, C, W, H)
        if split != "unlabeled":
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("".join(f"class{c}\n" for c in range(10)))
    return root


def write_caption_shards(
    root: str | Path,
    images: torch.Tensor,
    captions: list[list[str]],
    shards: int = 2,
    split: str = "train",
) -> str:
    """Caption-only WebDataset shards, DataComp- and CC3M-style: ``<key>.png`` (lossless, so
    that small images keep their pixels) and ``<key>.txt`` (one caption per line), no ``.cls``;
    ``images`` uint8 (N, C, H, W), ``captions[i]`` the captions of image i. Returns the brace
    pattern of the shards with ``{split}``."""
    import io
    import tarfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with tarfile.open(root / f"{split}-{shard:06d}.tar", "w") as tar:
            for i in range(shard, len(images), shards):
                png = io.BytesIO()
                pixels = images[i].permute(1, 2, 0).numpy()
                Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
                    png, "PNG"
                )
                text = "\n".join(captions[i]).encode()
                for suffix, data in (("png", png.getvalue()), ("txt", text)):
                    info = tarfile.TarInfo(f"{split}{i:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"{{split}}-{{000000..{shards - 1:06d}}}.tar")


def write_class_folder(
    root: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    split: str = "test",
) -> Path:
    """``<root>/<split>/<class>/<i>.png`` of uint8 ``images`` (N, C, H, W), lossless: a labelled
    data set as an image folder. Returns ``root``."""
    root = Path(root)
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image.permute(1, 2, 0).numpy()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
            folder / f"{i}.png"
        )
    return root
