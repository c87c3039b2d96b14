"""K augmented views of a whole batch at once, on the batch's device.

The per-image torchvision pipelines of the papers (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomApply(ColorJitter)``, ``RandomGrayscale``, ``GaussianBlur``, ``RandomSolarize``) are
re-implemented on (N, C, H, W) tensors: random parameters are drawn for the whole batch from
one seeded ``torch.Generator`` (same algorithm and distributions as torchvision, tested in
``tests/data/test_views.py``), then applied with a handful of batched kernels:

* crop + resize + flip: one ``grid_sample`` per batch (bilinear, equal to
  ``torchvision.transforms.functional.resized_crop(..., antialias=False)``);
* colour jitter: brightness, contrast, saturation and hue in an independent random order per
  image, as ``ColorJitter``;
* blur: a depthwise convolution with one Gaussian kernel per image (reflect padding).

Parameters are drawn on the CPU (a few numbers per image) and applied on the device. Drawing and
applying are separate steps, so that under DDP every rank draws the parameters of the global
batch and applies its own slice: the views are the same as on one process.

All K views of a batch go through one pass (n·K images; one per group of views sharing a size,
which is one group for every preset), and the photometric ops are branch-free: each runs on
the whole batch and ``torch.where`` keeps its result for the images it applies to, with no host
read and the same launches whatever the random choices (89 device operations for a digits
batch at any K, against 1,986 at K = 8 with a pass per view and ``nonzero`` subsets). The
parameters reach the device in one pinned, asynchronous copy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..dispatch import host_side

__all__ = ["PRESETS", "AugmentSpec", "MultiViewAugment", "preset"]

_GRAY = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentSpec:
    """One augmentation distribution (a torchvision ``Compose`` of the usual SSL transforms)."""

    size: int | None = None  # output side; None keeps the input size
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if self.hue < 0 or self.hue > 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {self.blur_kernel}")


# Normalisation statistics of the datasets (channel means and standard deviations).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_CIFAR = AugmentSpec(mean=CIFAR_MEAN, std=CIFAR_STD)
_IMAGENET = AugmentSpec(size=224, blur_kernel=23, mean=IMAGENET_MEAN, std=IMAGENET_STD)
_CLAMP_IMAGENET = replace(_IMAGENET, brightness=0.8, contrast=0.8, blur_p=0.8)
PRESETS: dict[str, tuple[AugmentSpec, ...]] = {
    # Yerxa et al. App. D: Barlow Twins' augmentations without blur and solarisation
    "cifar": (_CIFAR,),
    # SimCLR's CIFAR-10 setting (Chen et al. 2020, App. B.9: colour strength 0.5, no blur), as
    # lightly's CIFAR-10 benchmark runs it (SimCLRTransform(cj_strength=0.5, gaussian_blur=0))
    "simclr_cifar": (replace(_CIFAR, saturation=0.4),),
    # BYOL's pair without blur at CIFAR size, as lightly's CIFAR-10 benchmark runs BYOL and
    # Barlow Twins (BYOLView1/2Transform(gaussian_blur=0)): T2 solarises with p = 0.2
    "byol_cifar": (_CIFAR, replace(_CIFAR, solarize_p=0.2)),
    # CLAMP App. B, Table 3: T1 = T2
    "clamp_cifar": (
        replace(
            _CIFAR, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5, blur_kernel=3
        ),
    ),
    # Barlow Twins / BYOL ImageNet pair: T1 always blurs, T2 sometimes blurs and solarises
    "imagenet": (
        replace(_IMAGENET, blur_p=1.0),
        replace(_IMAGENET, blur_p=0.1, solarize_p=0.2),
    ),
    # Matrix-SSL's code (MEC / MoCo v3 pair) at CIFAR size: crops from 20%, T1 always blurs,
    # T2 blurs with p = 0.1 and solarises with p = 0.2
    "matrix_ssl_cifar": (
        replace(_CIFAR, crop_scale=(0.2, 1.0), blur_p=1.0),
        replace(_CIFAR, crop_scale=(0.2, 1.0), blur_p=0.1, solarize_p=0.2),
    ),
    # CLAMP App. B, Table 4: T1 / T2 differ in solarisation
    "clamp_imagenet": (_CLAMP_IMAGENET, replace(_CLAMP_IMAGENET, solarize_p=0.2)),
    # OpenCLIP's training transform (image_transform, is_train): RandomResizedCrop with scale
    # (0.9, 1.0), then normalisation only (no flip: a caption may say "left-leaning")
    "clip": (AugmentSpec(crop_scale=(0.9, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0),),
    # 8x8 grey digits: mild crops, no flips (digits are not mirror-symmetric), intensity jitter
    "digits": (
        AugmentSpec(
            crop_scale=(0.5, 1.0),
            flip_p=0.0,
            jitter_p=0.8,
            brightness=0.4,
            contrast=0.4,
            saturation=0.0,
            hue=0.0,
            grayscale_p=0.0,
            mean=(0.5,),
            std=(0.5,),
        ),
    ),
}


def dataset_preset(
    name: str, mean: tuple[float, ...], std: tuple[float, ...], size: int | None = None
) -> tuple[AugmentSpec, ...]:
    """Preset ``name`` standardising with a dataset's channel ``mean`` and ``std``
    (``DataSplits.normalisation``) instead of the preset's defaults, with views of side
    ``size`` (``data.image_size``) when given."""
    return tuple(
        replace(spec, mean=tuple(mean), std=tuple(std), size=size or spec.size)
        for spec in preset(name)
    )


def preset(name: str) -> tuple[AugmentSpec, ...]:
    if name not in PRESETS:
        raise ValueError(f"unknown view preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------- parameters
def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


CROP_ATTEMPTS = 10


def crop_uniforms(n: int, gen: torch.Generator, attempts: int = CROP_ATTEMPTS) -> torch.Tensor:
    """(n, attempts, 4) float64 uniforms on [0, 1): the random numbers of ``attempts`` tries of
    ``RandomResizedCrop.get_params`` (area, log-ratio, top, left), independent of the image
    size, so that they can be drawn for a batch before its images are read (the streaming path
    turns them into boxes once each image's size is known)."""
    u = [torch.rand(n * attempts, generator=gen, dtype=torch.float64) for _ in range(2)]
    u += [torch.rand(n, attempts, generator=gen, dtype=torch.float64) for _ in range(2)]
    return torch.stack([v.view(n, attempts) for v in u], dim=-1)


def crop_boxes(
    u: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> torch.Tensor:
    """(n, 4) int64 boxes ``(i, j, h, w)`` from :func:`crop_uniforms` ``u`` with torchvision's
    ``RandomResizedCrop.get_params`` algorithm: of the tries with area ~ U(scale)·HW and
    log-ratio ~ U(log ratio), the first that fits wins; otherwise a centre crop clamped to the
    ratio range. ``height`` and ``width`` are one size or one per image (n,)."""
    n = u.shape[0]
    hh = torch.as_tensor(height, dtype=torch.int64).expand(n).view(n, 1)
    ww = torch.as_tensor(width, dtype=torch.int64).expand(n).view(n, 1)
    target = (hh * ww) * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= ww) & (h > 0) & (h <= hh)
    i = torch.floor(u[..., 2] * (hh - h + 1).clamp_min(1)).long()
    j = torch.floor(u[..., 3] * (ww - w + 1).clamp_min(1)).long()
    first = torch.argmax(ok.int(), dim=1)  # index of the first valid attempt (0 if none)
    rows = torch.arange(n)
    boxes = torch.stack([i[rows, first], j[rows, first], h[rows, first], w[rows, first]], dim=1)
    # fallback: centre crop, as torchvision
    hh, ww = hh.flatten(), ww.flatten()
    in_ratio = ww.double() / hh.double()
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fw = torch.where(wide, torch.round(hh * max(ratio)).long(), ww)
    fh = torch.where(narrow, torch.round(ww / min(ratio)).long(), hh)
    fallback = torch.stack([(hh - fh) // 2, (ww - fw) // 2, fh, fw], dim=1)
    return torch.where(ok.any(dim=1, keepdim=True), boxes, fallback)


def sample_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
    attempts: int = CROP_ATTEMPTS,
) -> torch.Tensor:
    """(n, 4) int64 crop boxes of an height×width image (:func:`crop_boxes`)."""
    return crop_boxes(crop_uniforms(n, gen, attempts), height, width, scale, ratio)


@dataclass
class ViewParams:
    """Random parameters of one view for a batch of n images (CPU tensors)."""

    crop: torch.Tensor  # (n, attempts, 4) float64: the crop's uniforms (crop_uniforms)
    boxes: torch.Tensor | None  # (n, 4) int64 i, j, h, w; None until the image size is known
    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n,) bool: colour jitter applied
    factors: torch.Tensor  # (n, 4) float64: brightness, contrast, saturation, hue
    order: torch.Tensor  # (n, 4) int64: a permutation of the four jitter ops
    gray: torch.Tensor  # (n,) bool
    blur: torch.Tensor  # (n,) bool
    sigma: torch.Tensor  # (n,) float64
    solarize: torch.Tensor  # (n,) bool

    def slice(self, start: int, stop: int) -> ViewParams:
        kw: dict[str, Any] = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[start:stop]
            for f in fields(self)
        }
        return ViewParams(**kw)


def sample_params(
    spec: AugmentSpec, n: int, height: int | None, width: int | None, gen: torch.Generator
) -> ViewParams:
    """Draw every random choice of ``spec`` for n images, in a fixed order (reproducible).
    With ``height`` and ``width`` None (images of different sizes, read later) the crop is kept
    as uniforms and ``boxes`` is None; the random stream is the same either way."""
    crop = crop_uniforms(n, gen)
    boxes = None
    if height is not None and width is not None:
        boxes = crop_boxes(crop, height, width, spec.crop_scale, spec.crop_ratio)
    flip = torch.rand(n, generator=gen) < spec.flip_p
    jitter = torch.rand(n, generator=gen) < spec.jitter_p
    factors = torch.stack(
        [
            _uniform(n, max(0.0, 1 - spec.brightness), 1 + spec.brightness, gen),
            _uniform(n, max(0.0, 1 - spec.contrast), 1 + spec.contrast, gen),
            _uniform(n, max(0.0, 1 - spec.saturation), 1 + spec.saturation, gen),
            _uniform(n, -spec.hue, spec.hue, gen),
        ],
        dim=1,
    )
    order = torch.argsort(torch.rand(n, 4, generator=gen), dim=1)
    gray = torch.rand(n, generator=gen) < spec.grayscale_p
    blur = torch.rand(n, generator=gen) < spec.blur_p
    sigma = _uniform(n, *spec.blur_sigma, gen)
    solarize = torch.rand(n, generator=gen) < spec.solarize_p
    return ViewParams(crop, boxes, flip, jitter, factors, order, gray, blur, sigma, solarize)


# --------------------------------------------------------------------------- kernels
def resized_crop(
    x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop ``boxes`` (n, 4: i, j, h, w) from ``x`` (n, C, H, W) float, resize to size×size
    (bilinear, half-pixel centres, no antialias) and mirror horizontally where ``flip``: the
    same numbers as torchvision's ``resized_crop(..., antialias=False)`` then ``hflip``, in one
    ``grid_sample`` for the whole batch."""
    _n, _, height, width = x.shape
    b = boxes.to(device=x.device, dtype=x.dtype)
    i, j, h, w = b.unbind(dim=1)
    steps = torch.arange(size, device=x.device, dtype=x.dtype) + 0.5  # output pixel centres
    # source pixel coordinates, clamped to the crop as interpolating the cropped image does
    sx = (j.unsqueeze(1) + (steps * (w / size).unsqueeze(1) - 0.5).clamp_min(0)).minimum(
        (j + w - 1).unsqueeze(1)
    )  # (n, size)
    sy = (i.unsqueeze(1) + (steps * (h / size).unsqueeze(1) - 0.5).clamp_min(0)).minimum(
        (i + h - 1).unsqueeze(1)
    )
    if flip is not None:
        sx = torch.where(flip.to(x.device).unsqueeze(1), sx.flip(1), sx)
    gx = 2 * sx / max(width - 1, 1) - 1  # align_corners=True normalisation of pixel indices
    gy = 2 * sy / max(height - 1, 1) - 1
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(1), gy.unsqueeze(2)), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) luma of RGB ``x`` (ITU-R 601-2, as torchvision); grey input is returned."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (r * _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``clamp(f·x + (1 − f)·other, 0, 1)`` with one fused ``lerp``."""
    return torch.lerp(other.expand_as(x), x, f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(x, grayscale(x), f)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``f`` (n,) turns, through HSV, with torchvision's formulas."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)  # elementwise: far faster than max(dim=1)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + f.view(-1, 1, 1), 1.0)
    # HSV -> RGB in closed form: channel c = v − v·s·clamp(min(k, 4 − k), 0, 1) with
    # k = (n + 6h) mod 6 and n = 5, 3, 1 for R, G, B (the same values as torchvision's sectors)
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    v, s = maxc.unsqueeze(1), s.unsqueeze(1)
    return (v - v * s * ramp).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own σ (n,), kernel size ``kernel``, reflect padding."""
    n, c, height, width = x.shape
    half = (kernel - 1) / 2
    pos = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    pdf = torch.exp(-0.5 * (pos / sigma.to(x.device, x.dtype).view(-1, 1)) ** 2)
    k1 = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n·C, k)
    pad = kernel // 2
    y = x.reshape(1, n * c, height, width)
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k1.view(n * c, 1, 1, kernel), groups=n * c)
    y = F.conv2d(y, k1.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, height, width)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_params(spec: AugmentSpec, images: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """One augmented view of uint8 ``images`` (n, C, H, W): normalised float (n, C, s, s)."""
    if p.boxes is None:
        raise ValueError("these view parameters have no crop boxes: sample them with the size")
    d = _on_device(p, images.device)
    x = images.to(torch.get_default_dtype()).div_(255.0)
    x = resized_crop(x, d["boxes"], spec.size or images.shape[-1], d["flip"])
    return _photometric(spec, x, d)


def photometric(spec: AugmentSpec, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """The photometric part of a view (colour jitter, grayscale, blur, solarisation, then
    normalisation) on float ``x`` (n, C, s, s) in [0, 1], already cropped."""
    return _photometric(spec, x, _on_device(p, x.device))


_FIELDS = ("flip", "jitter", "factors", "order", "gray", "blur", "sigma", "solarize")


def _on_device(p: ViewParams, device: torch.device) -> dict[str, torch.Tensor]:
    """``p``'s per-image parameters on ``device`` in one host-to-device copy (pinned and
    asynchronous on CUDA): float64 columns, split and cast there."""
    with host_side():
        cols = [] if p.boxes is None else [p.boxes.double()]
        cols += [getattr(p, f).double().view(len(p.flip), -1) for f in _FIELDS]
        packed = torch.cat(cols, dim=1)
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    widths = ([4] if p.boxes is not None else []) + [1, 1, 4, 4, 1, 1, 1, 1]
    names = ["boxes"] * (p.boxes is not None) + list(_FIELDS)
    parts = dict(zip(names, packed.split(widths, 1), strict=True))
    out = {k: v.squeeze(1) if v.shape[1] == 1 else v for k, v in parts.items() if k != "boxes"}
    for k in ("flip", "jitter", "gray", "blur", "solarize"):
        out[k] = out[k] > 0.5
    out["order"] = out["order"].long()
    if "boxes" in parts:
        out["boxes"] = parts["boxes"].long()
    return out


def _photometric(spec: AugmentSpec, x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`photometric` on device parameters ``d``, branch-free: every op runs on the whole
    batch and ``torch.where`` keeps its result for the images it applies to, so a batch costs
    the same launches whatever its random choices, with no host read (the result per image is
    the same as applying the op to those images alone). Ops the spec never applies (a
    probability of 0; saturation and hue of grey images) are left out."""
    n, c = x.shape[:2]
    factors = d["factors"].to(x.dtype)
    if spec.jitter_p > 0:
        for slot in range(4):  # each image applies its four ops in its own random order
            chosen = d["order"][:, slot]
            for op_index, op in enumerate(_JITTER_OPS):
                if c == 1 and op_index >= 2:  # saturation and hue leave grey images as they are
                    continue
                mask = (d["jitter"] & (chosen == op_index)).view(n, 1, 1, 1)
                x = torch.where(mask, op(x, factors[:, op_index]), x)
    if spec.grayscale_p > 0 and c == 3:
        x = torch.where(d["gray"].view(n, 1, 1, 1), grayscale(x).expand(-1, 3, -1, -1), x)
    if spec.blur_p > 0:
        blurred = gaussian_blur(x, spec.blur_kernel, d["sigma"])
        x = torch.where(d["blur"].view(n, 1, 1, 1), blurred, x)
    if spec.solarize_p > 0:
        x = torch.where(d["solarize"].view(n, 1, 1, 1) & (x >= 0.5), 1.0 - x, x)
    mean = _constant(spec.mean * (c if len(spec.mean) == 1 else 1), x.device, x.dtype)
    std = _constant(spec.std * (c if len(spec.std) == 1 else 1), x.device, x.dtype)
    return (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)


_CONSTANTS: dict[tuple[Any, ...], torch.Tensor] = {}


def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a ``dtype`` tensor on ``device``, copied there once (a copy from pageable
    host memory waits for the device)."""
    key = (values, str(device), dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, device=device, dtype=dtype)
    return _CONSTANTS[key]


def concat_params(params: list[ViewParams]) -> ViewParams:
    """The parameters of several views of one batch as one batch (view-major: view k's image i
    at k·n + i)."""
    kw: dict[str, Any] = {}
    for f in fields(ViewParams):
        values = [getattr(p, f.name) for p in params]
        kw[f.name] = None if any(v is None for v in values) else torch.cat(values)
    return ViewParams(**kw)


def _view_groups(aug: MultiViewAugment) -> list[tuple[AugmentSpec, list[int]]]:
    """The views that can share one batched pass: those whose specs agree on the output size,
    blur kernel and normalisation (one group for every preset here), each group with a spec
    that applies any op one of its specs applies."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for k in range(aug.num_views):
        s = aug.spec_of(k)
        groups.setdefault((s.size, s.blur_kernel, s.mean, s.std), []).append(k)
    out = []
    for ks in groups.values():
        specs = [aug.spec_of(k) for k in ks]
        merged = replace(
            specs[0],
            **{
                name: max(getattr(s, name) for s in specs)
                for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p")
            },
        )
        out.append((merged, ks))
    return out


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, run the many small augmentation kernels on one thread: with passive OpenMP
    waiting, waking a second thread costs more than it saves at these sizes (measured in
    ``benchmarks/throughput.py``: about 1.3× faster on 2 cores)."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _views_last(parts: list[torch.Tensor]) -> torch.Tensor:
    """(n, K, C, s, s) from view-major groups (K_g, n, C, s, s) of consecutive views."""
    return torch.cat(parts, dim=0).transpose(0, 1).contiguous()


class MultiViewAugment:
    """K views per image: the first ⌈K/2⌉ from ``specs[0]``, the rest from ``specs[-1]``.

    With one spec every view has the same distribution; with two (CLAMP's T1/T2, BYOL's pair)
    half the views come from each, as CLAMP's Algorithm 1.
    """

    def __init__(self, specs: tuple[AugmentSpec, ...], num_views: int) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if not 1 <= len(specs) <= 2:
            raise ValueError(f"specs must hold one or two AugmentSpec, got {len(specs)}")
        self.specs = specs
        self.num_views = num_views
        self.groups = _view_groups(self)

    def spec_of(self, view: int) -> AugmentSpec:
        return self.specs[0] if view < (self.num_views + 1) // 2 else self.specs[-1]

    def sample(
        self, n: int, height: int | None, width: int | None, gen: torch.Generator
    ) -> list[ViewParams]:
        """Every view's parameters, drawn on the host from ``gen`` (view by view)."""
        with host_side():
            return [
                sample_params(self.spec_of(k), n, height, width, gen) for k in range(self.num_views)
            ]

    def apply(self, images: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
        """(n, K, C, s, s) views of uint8 ``images`` (n, C, H, W) in the default float dtype
        (``torch.get_default_dtype()``, float32 unless changed): all K views in one
        batched pass (n·K images) per group of views that share a size (one group for every
        preset), so a batch costs the same launches for any K."""
        n = images.shape[0]
        with _one_cpu_thread(images.device):
            x = images.to(torch.get_default_dtype()).div_(255.0)
            parts = []
            for spec, ks in self.groups:
                with host_side():
                    p = concat_params([params[k] for k in ks])
                if p.boxes is None:
                    raise ValueError("these view parameters have no crop boxes")
                d = _on_device(p, images.device)
                batch = x.repeat(len(ks), 1, 1, 1)  # view-major: view k's image i at k·n + i
                v = resized_crop(batch, d["boxes"], spec.size or images.shape[-1], d["flip"])
                parts.append(_photometric(spec, v, d).unflatten(0, (len(ks), n)))
            return _views_last(parts)

    def apply_cropped(self, crops: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
        """(n, K, C, s, s) float views from uint8 ``crops`` (n, K, C, s, s), whose geometric part
        (crop, resize, flip) was made per image by the streaming loader's workers: the
        photometric part, in one batched pass per group of views."""
        n = crops.shape[0]
        with _one_cpu_thread(crops.device):
            parts = []
            for spec, ks in self.groups:
                with host_side():
                    p = concat_params([params[k] for k in ks])
                x = (
                    crops[:, ks]
                    .transpose(0, 1)
                    .flatten(0, 1)
                    .to(torch.get_default_dtype())
                    .div_(255.0)
                )
                v = _photometric(spec, x, _on_device(p, crops.device))
                parts.append(v.unflatten(0, (len(ks), n)))
            return _views_last(parts)

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        params = self.sample(images.shape[0], images.shape[-2], images.shape[-1], gen)
        return self.apply(images, params)
