"""Generated image folders for tests and benchmarks: ``<root>/<split>/<class>/<i>.jpg`` of
varying sizes, ImageNet-like in layout and file size (smooth images, so that JPEG compresses
them as it does photographs), with a class signal a network can learn (each class its own hue).
Nothing here is a data set to report numbers on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_image_folder"]


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
