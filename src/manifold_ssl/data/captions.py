"""Captions for images: generated from what the pixels show, or read from ``<key>.txt`` files.

Multimodal pretraining (``method.name: multimodal_mmcr | clip``) pairs every training image
with a caption. Two sources, one interface (:class:`Captions`: ``len(captions)`` images,
``text(index, choice)`` one caption per image, ``choice`` picking among its variants):

* :class:`GeneratedCaptions` (``text.captions: generated``, the built-in labelled datasets):
  the class name plus attributes *measured from the image* and put into words by
  :class:`ImageAttributes`, in one of several templates. Grey images (digits): stroke thickness
  (ink mass) and slant (the ink's x–y shear); colour images (CIFAR, STL-10): brightness (mean
  luma) and dominant colour (the saturation-weighted hue of the colourful pixels). Thickness,
  slant and brightness are put into words by tertiles fitted on the training images (thickness
  and slant within each class: a "thick one" is thick for a one), so each word is a third of
  the images and carries information the class alone does not. The class-name-only templates
  of :data:`ZERO_SHOT_TEMPLATES` never occur in training: zero-shot evaluation prompts with
  held-out wording.
* :class:`FileCaptions` (``text.captions: files``, image folders and WebDataset shards): the
  text of ``<key>.txt`` beside each image (a file, or a member of the same archive or shard);
  several lines are several captions of the image, one drawn per step.

``text.captions: auto`` (:func:`manifold_ssl.run.build.caption_source`) takes the files when
every training image has one (:func:`count_captions`), and generates captions otherwise.

What generated captions can and cannot show: they test whether an objective aligns an image
tower with a text tower that sees words for class and measured attributes, at a scale a CPU
trains in a minute. They are not web alt-text: no noise, no long tail of concepts, a tiny
vocabulary, so absolute zero-shot numbers say nothing about DataComp or ImageNet.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .files import ImageFiles
from .tensors import ImageTensors

__all__ = [
    "CAPTION_TEMPLATES",
    "ZERO_SHOT_TEMPLATES",
    "Captions",
    "FileCaptions",
    "GeneratedCaptions",
    "ImageAttributes",
    "caption_choices",
    "class_words",
    "count_captions",
    "fill",
    "read_captions",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Training templates by image kind ("grey": strokes on a dark ground; "colour": photographs).
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "grey": (
        "a {thickness}, {slant} handwritten {label}",
        "the digit {label} written with {thickness} strokes",
        "a handwritten {label} that is {slant}",
        "{label}, {slant}, drawn with a {thickness} pen",
        "a scanned {label} in {thickness} ink, {slant}",
    ),
    "colour": (
        "a {brightness} photo of a {colour} {label}",
        "a {colour} {label} in a {brightness} picture",
        "a picture of a {label}, mostly {colour}",
        "{brightness} image: a {label}, {colour} tones",
        "a small {colour} {label}, {brightness} lighting",
    ),
}

#: Held-out prompts for zero-shot classification: class name only, wording never trained on.
ZERO_SHOT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "grey": ("a photo of the number {label}.", "an image of a {label}.", "the numeral {label}."),
    "colour": ("a photo of the {label}.", "an image showing a {label}.", "this is a {label}."),
}

_WORDS = {
    "thickness": ("thin", "regular", "thick"),
    "slant": ("left-leaning", "upright", "right-leaning"),
    "brightness": ("dark", "medium-lit", "bright"),
}
# hue sectors (turns) of the dominant-colour names; below the saturation floor: grey
_HUES = (
    (0.042, "red"),
    (0.11, "orange"),
    (0.19, "yellow"),
    (0.45, "green"),
    (0.54, "teal"),
    (0.72, "blue"),
    (0.92, "purple"),
    (1.0, "red"),
)
_SATURATED, _COLOURFUL_SHARE = 0.25, 0.1


# "a" before a vowel sound: a vowel letter, except where it sounds as a consonant ("one",
# "unicorn", "user", "european")
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])(?!one\b|uni|use|usu|eu)", re.IGNORECASE)


def fill(template: str, **words: str) -> str:
    """``template`` with its ``{name}`` fields filled, "a" before a vowel sound made "an"
    ("a {colour} {label}" → "an orange airplane", but "a one")."""
    return _ARTICLE.sub(r"\1n ", template.format(**words))


def class_words(classes: Sequence[str]) -> list[str]:
    """Class names as words for captions and prompts: digits ``"0"``–``"9"`` spelled out,
    underscores as spaces (``"n01440764"``-style names are kept as they are)."""
    if list(classes) == [str(i) for i in range(10)]:
        return list(DIGIT_WORDS)
    return [c.replace("_", " ") for c in classes]


def _grey_measures(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ink mass and slant of grey images (n, 1, H, W): ``thickness`` the mean intensity;
    ``slant`` the ink-weighted shear cov(x, y) / var(y), y pointing up (> 0: leaning right)."""
    x = images[:, 0].to(torch.float64) / 255.0
    n, h, w = x.shape
    mass = x.sum(dim=(1, 2)).clamp_min(1e-9)
    ys = torch.arange(h, dtype=torch.float64).flip(0).view(1, h, 1)  # up is +
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    my = (x * ys).sum(dim=(1, 2)) / mass
    mx = (x * xs).sum(dim=(1, 2)) / mass
    cov = (x * (xs - mx.view(n, 1, 1)) * (ys - my.view(n, 1, 1))).sum(dim=(1, 2)) / mass
    var_y = (x * (ys - my.view(n, 1, 1)) ** 2).sum(dim=(1, 2)) / mass
    return {"thickness": x.mean(dim=(1, 2)), "slant": cov / var_y.clamp_min(1e-9)}


def _colour_measures(images: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Mean luma of colour images (n, 3, H, W) and the name of their dominant colour."""
    x = images.to(torch.float64) / 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = (0.2989 * r + 0.587 * g + 0.114 * b).mean(dim=(1, 2))
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    sat = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-9), torch.zeros_like(hi))
    d = (hi - lo).clamp_min(1e-9)
    hue = (
        torch.where(
            hi == r, ((g - b) / d) % 6, torch.where(hi == g, (b - r) / d + 2, (r - g) / d + 4)
        )
        / 6.0
    )  # turns in [0, 1)
    weight = sat * (sat > _SATURATED) * (hi > 0.2)
    # the saturation-weighted circular mean of the colourful pixels' hue
    angle = 2 * torch.pi * hue
    c = (weight * torch.cos(angle)).sum(dim=(1, 2))
    s = (weight * torch.sin(angle)).sum(dim=(1, 2))
    mean_hue = (torch.atan2(s, c) / (2 * torch.pi)) % 1.0
    colourful = (weight > 0).to(torch.float64).mean(dim=(1, 2)) >= _COLOURFUL_SHARE
    names = []
    for h, ok in zip(mean_hue.tolist(), colourful.tolist(), strict=True):
        names.append(next(name for edge, name in _HUES if h < edge) if ok else "grey")
    return luma, names


@dataclass
class ImageAttributes:
    """Words for what images show, with tertile edges fitted on training images
    (:meth:`fit`), so that any split is described on the same scale."""

    kind: str  # "grey" | "colour"
    edges: dict[str, torch.Tensor]  # measure -> (2,) edges, or (classes, 2) within each class

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor) -> ImageAttributes:
        kind = "grey" if images.shape[1] == 1 else "colour"
        q = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
        if kind == "colour":
            luma, _ = _colour_measures(images)
            return cls(kind, {"brightness": torch.quantile(luma, q)})
        edges = {}
        for name, values in _grey_measures(images).items():
            per_class = [
                torch.quantile(values[labels == c], q) if bool((labels == c).any()) else q * 0
                for c in range(int(labels.max()) + 1)
            ]
            edges[name] = torch.stack(per_class)  # (classes, 2)
        return cls(kind, edges)

    def describe(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[str]]:
        """Attribute words of ``images`` (n, C, H, W) uint8 with class ``labels`` (n,)."""
        out: dict[str, list[str]] = {}
        if self.kind == "colour":
            luma, out["colour"] = _colour_measures(images)
            measures = {"brightness": luma}
        else:
            measures = _grey_measures(images)
        for name, values in measures.items():
            e = self.edges[name]
            e = e[labels.clamp_min(0)] if e.ndim == 2 else e.expand(values.shape[0], 2)
            # below the lower edge, above the upper one, or between (ties: the middle word)
            level = 1 + (values > e[:, 1]).long() - (values < e[:, 0]).long()
            out[name] = [_WORDS[name][i] for i in level.tolist()]
        return out


class Captions(Protocol):
    """Captions of ``len`` images: ``text(index, choice)`` is one caption per image of
    ``index``, ``choice`` (same length, any non-negative integers) picking among its variants."""

    def __len__(self) -> int: ...
    def text(self, index: Sequence[int], choice: Sequence[int]) -> list[str]: ...


class GeneratedCaptions:
    """Captions from templates filled with the class word and measured attributes."""

    def __init__(
        self,
        split: ImageTensors,
        attributes: ImageAttributes,
        templates: Sequence[str] | None = None,
    ) -> None:
        self.templates = tuple(templates or CAPTION_TEMPLATES[attributes.kind])
        self.words = class_words(split.classes)
        self.labels = split.labels.tolist()
        self.attributes = attributes.describe(split.images, split.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def text(self, index: Sequence[int], choice: Sequence[int]) -> list[str]:
        out = []
        for i, c in zip(index, choice, strict=True):
            words = {name: values[i] for name, values in self.attributes.items()}
            label = self.words[self.labels[i]] if self.labels[i] >= 0 else "thing"
            out.append(fill(self.templates[c % len(self.templates)], label=label, **words))
        return out


class FileCaptions:
    """Captions read from files: ``lines[i]`` the captions of image i (one per line)."""

    def __init__(self, lines: list[list[str]]) -> None:
        self.lines = lines

    def __len__(self) -> int:
        return len(self.lines)

    def text(self, index: Sequence[int], choice: Sequence[int]) -> list[str]:
        return [self.lines[i][c % len(self.lines[i])] for i, c in zip(index, choice, strict=True)]


def _caption_lines(raw: bytes, where: str) -> list[str]:
    lines = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"the caption {where} is empty")
    return lines


def _caption_files(files: ImageFiles, read: bool) -> tuple[list[list[str] | None], list[str]]:
    """Per image of ``files``, its ``<key>.txt`` caption lines (``read``; else ``[]`` for a
    caption that exists) or None where it has none, and where each missing one was looked for:
    the file beside it, or the member of the same archive or shard (one pass over each
    archive's headers)."""
    lines: list[list[str] | None] = [None] * len(files)
    missing: list[str] = []
    by_archive: dict[int, list[int]] = {}
    for i, (archive, _, _) in enumerate(files.members.tolist()):
        if archive < 0:
            path = Path(os.fsdecode(files.names[i])).with_suffix(".txt")
            if not path.exists():
                missing.append(f"image {path.with_suffix('')} has no {path}")
            else:
                lines[i] = _caption_lines(path.read_bytes(), str(path)) if read else []
        else:
            by_archive.setdefault(archive, []).append(i)
    for archive, rows in by_archive.items():
        name = files.archives[archive]
        with tarfile.open(name) as tar:
            texts = {m.name: m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt")}
            for i in rows:
                member_name = files.names[i].decode()
                folder, _, base = member_name.rpartition("/")
                prefix = folder + "/" if folder else ""
                # beside the image (img.1.jpg -> img.1.txt), or WebDataset's key (the name up
                # to its first dot: k.seg.jpg -> k.txt)
                key = member_name.rsplit(".", 1)[0] + ".txt"
                wds_key = prefix + base.partition(".")[0] + ".txt"
                member = texts.get(key) or texts.get(wds_key)
                if member is None:
                    missing.append(f"{member_name} in {name} has no {key} member")
                elif read:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    lines[i] = _caption_lines(handle.read(), f"{key} in {name}")
                else:
                    lines[i] = []
    return lines, missing


def count_captions(files: ImageFiles) -> tuple[int, list[str]]:
    """How many images of ``files`` have a ``<key>.txt`` caption (read by
    :func:`read_captions`), and a line for each that has none (nothing is decoded)."""
    lines, missing = _caption_files(files, read=False)
    return sum(line is not None for line in lines), missing


def read_captions(files: ImageFiles) -> FileCaptions:
    """The ``<key>.txt`` captions of every image of ``files``: the file beside it, or the
    member of the same archive or shard (one pass over each archive's headers); an image
    without one is an error naming it and how many more have none."""
    lines, missing = _caption_files(files, read=True)
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise ValueError(f"text.captions=files: {missing[0]}{more}")
    return FileCaptions(lines)  # type: ignore[arg-type]


def caption_choices(n: int, gen: torch.Generator) -> np.ndarray:
    """``n`` caption choices (non-negative integers; each source takes them modulo its
    number of variants)."""
    return torch.randint(0, 1 << 30, (n,), generator=gen).numpy()
