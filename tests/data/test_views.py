"""Batched views against the per-image torchvision transforms they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy import stats

from manifold_ssl.data.views import (
    PRESETS,
    AugmentSpec,
    MultiViewAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    preset,
    resized_crop,
    sample_crops,
    sample_params,
)

N = 4000


def images(n=6, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "shape, scale, ratio",
    [
        ((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((40, 24), (0.2, 0.6), (0.5, 2.0)),
        ((8, 8), (0.5, 1.0), (3 / 4, 4 / 3)),
    ],
)
def test_crop_parameters_follow_torchvision_distribution(shape, scale, ratio):
    h, w = shape
    ours = sample_crops(N, h, w, scale, ratio, torch.Generator().manual_seed(1)).double()
    torch.manual_seed(2)
    img = torch.zeros(1, h, w)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(N)]
    ).double()
    for name, a, b in (
        ("area", ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3]),
        ("aspect", ours[:, 3] / ours[:, 2], ref[:, 3] / ref[:, 2]),
        ("top", ours[:, 0], ref[:, 0]),
        ("left", ours[:, 1], ref[:, 1]),
    ):
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, name
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()


def test_crop_and_resize_equal_torchvision_resized_crop():
    x = images()
    boxes = torch.tensor(
        [
            [0, 0, 32, 32],
            [3, 5, 20, 11],
            [10, 2, 7, 30],
            [1, 1, 31, 31],
            [16, 16, 16, 16],
            [0, 7, 9, 25],
        ]
    )
    flip = torch.tensor([False, True, False, True, False, True])
    out = resized_crop(x, boxes, 24, flip)
    for k, (i, j, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[k], i, j, h, w, [24, 24], antialias=False)
        if flip[k]:
            ref = TF.horizontal_flip(ref)
        torch.testing.assert_close(out[k], ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "ours, theirs, lo, hi",
    [
        (adjust_brightness, TF.adjust_brightness, 0.3, 1.7),
        (adjust_contrast, TF.adjust_contrast, 0.3, 1.7),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_ops_equal_torchvision(ours, theirs, lo, hi):
    x = images()
    f = torch.linspace(lo, hi, 6)
    out = ours(x.clone(), f)
    for k in range(6):
        torch.testing.assert_close(out[k], theirs(x[k], f[k].item()), atol=2e-5, rtol=0)


def test_blur_equals_torchvision_gaussian_blur():
    x = images()
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7], dtype=torch.float64)
    for kernel in (3, 5):
        out = gaussian_blur(x, kernel, sigma)
        for k in range(6):
            ref = TF.gaussian_blur(x[k], [kernel, kernel], [sigma[k].item()] * 2)
            torch.testing.assert_close(out[k], ref, atol=2e-5, rtol=0)


def test_jitter_factors_probabilities_and_order_match_torchvision():
    spec = AugmentSpec(
        brightness=0.8,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        jitter_p=0.8,
        grayscale_p=0.2,
        flip_p=0.5,
        blur_p=0.3,
        solarize_p=0.1,
    )
    p = sample_params(spec, N, 32, 32, torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    ref = [
        T.ColorJitter.get_params([0.2, 1.8], [0.6, 1.4], [0.8, 1.2], [-0.1, 0.1]) for _ in range(N)
    ]
    for col, k in ((0, 1), (1, 2), (2, 3), (3, 4)):
        theirs = np.array([r[k] for r in ref])
        assert stats.ks_2samp(p.factors[:, col].numpy(), theirs).pvalue > 1e-3
    # every one of the 24 orders about equally often, as torch.randperm(4) per image
    counts = np.unique(p.order.numpy(), axis=0, return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3
    for flag, prob in (
        (p.jitter, 0.8),
        (p.gray, 0.2),
        (p.flip, 0.5),
        (p.blur, 0.3),
        (p.solarize, 0.1),
    ):
        assert abs(flag.float().mean().item() - prob) < 4 * math.sqrt(prob * (1 - prob) / N)


def test_views_are_reproducible_and_distinct():
    aug = MultiViewAugment(preset("cifar"), 3)
    x = (images(8) * 255).to(torch.uint8)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == (8, 3, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, 1])


def test_two_specs_split_the_views_in_halves():
    t1, t2 = preset("clamp_imagenet")
    aug = MultiViewAugment((t1, t2), 4)
    assert [aug.spec_of(k) for k in range(4)] == [t1, t1, t2, t2]


def test_sliced_parameters_give_the_same_views():
    # what DDP relies on: drawing for the global batch and applying a slice
    aug = MultiViewAugment(preset("clamp_cifar"), 2)
    x = (images(10) * 255).to(torch.uint8)
    params = aug.sample(10, 32, 32, torch.Generator().manual_seed(7))
    whole = aug.apply(x, params)
    part = aug.apply(x[4:], [p.slice(4, 10) for p in params])
    torch.testing.assert_close(part, whole[4:])


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentSpec(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="blur_kernel"):
        AugmentSpec(blur_kernel=4)
    with pytest.raises(ValueError, match="preset"):
        preset("nope")


def test_grayscale_and_solarize_equal_torchvision():
    from manifold_ssl.data.views import apply_params, grayscale, sample_params

    x = images()
    torch.testing.assert_close(grayscale(x), TF.rgb_to_grayscale(x, 1), atol=1e-6, rtol=0)
    # a spec that only solarises: the whole pipeline equals torchvision's solarize + normalise
    spec = AugmentSpec(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        solarize_p=1.0,
        mean=(0.0,),
        std=(1.0,),
    )
    x8 = (x * 255).round().to(torch.uint8)
    p = sample_params(spec, 6, 32, 32, torch.Generator().manual_seed(0))
    out = apply_params(spec, x8, p)
    ref = TF.solarize(x8.float() / 255, threshold=0.5)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


def test_normalisation_belongs_to_the_dataset():
    from manifold_ssl.data.datasets import ImageTensors
    from manifold_ssl.data.splits import DataSplits
    from manifold_ssl.data.views import dataset_preset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=g)
    part = ImageTensors(images, torch.zeros(50, dtype=torch.long), ["a"])
    mean, std = DataSplits(part, part, part).normalisation
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(x.mean(1).tolist(), abs=1e-4)
    assert std == pytest.approx(x.std(1, unbiased=False).tolist(), abs=1e-4)
    specs = dataset_preset("clamp_imagenet", mean, std)
    assert all(s.mean == mean and s.std == std for s in specs)
    assert [s.solarize_p for s in specs] == [s.solarize_p for s in preset("clamp_imagenet")]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_compiles_as_one_graph_and_makes_reproducible_views(name):
    # every preset, a new one too, is tested for free: issue 19's branch-free photometric
    # part (no host read, no data-dependent Python branch) traced whole by torch.compile (the
    # eager backend checks the trace without a compiler), for each of its distributions; and
    # its views of a batch, seeded
    from manifold_ssl.data.views import _on_device, _photometric, sample_params

    torch.compiler.reset()  # each spec is a guard: without a reset the cases add up to
    # dynamo's recompile limit, and the test would depend on the order it runs in
    gen = torch.Generator().manual_seed(0)
    c = 1 if name == "digits" else 3
    for spec in PRESETS[name]:
        side = max(8, spec.blur_kernel + 1)  # reflect padding needs more than the kernel's half
        x = torch.rand(6, c, side, side, generator=gen)
        d = _on_device(sample_params(spec, 6, side, side, gen), x.device)
        compiled = torch.compile(_photometric, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(spec, x.clone(), d), _photometric(spec, x.clone(), d))
    size = PRESETS[name][0].size or 20  # None: the images' own side
    images = (torch.rand(5, c, 20, 20, generator=gen) * 255).to(torch.uint8)
    aug = MultiViewAugment(PRESETS[name], 4)
    a, b = (aug(images, torch.Generator().manual_seed(3)) for _ in range(2))
    assert a.shape == (5, 4, c, size, size) and torch.isfinite(a).all() and torch.equal(a, b)


# lightly's transforms at CIFAR size, as its CIFAR-10 benchmark builds them (lightly/transforms:
# SimCLRTransform(cj_strength=0.5, gaussian_blur=0), BYOLView1/2Transform(gaussian_blur=0)):
# (brightness, contrast, saturation, hue, jitter_p, grayscale_p, blur_p, solarize_p, flip_p,
# crop_scale)
LIGHTLY = {
    "simclr_cifar": [(0.4, 0.4, 0.4, 0.1, 0.8, 0.2, 0.0, 0.0, 0.5, (0.08, 1.0))],
    "byol_cifar": [
        (0.4, 0.4, 0.2, 0.1, 0.8, 0.2, 0.0, 0.0, 0.5, (0.08, 1.0)),
        (0.4, 0.4, 0.2, 0.1, 0.8, 0.2, 0.0, 0.2, 0.5, (0.08, 1.0)),
    ],
}


@pytest.mark.parametrize("name", sorted(LIGHTLY))
def test_lightly_benchmark_presets_have_lightlys_parameters(name):
    fields = (
        "brightness",
        "contrast",
        "saturation",
        "hue",
        "jitter_p",
        "grayscale_p",
        "blur_p",
        "solarize_p",
        "flip_p",
        "crop_scale",
    )
    got = [tuple(getattr(spec, f) for f in fields) for spec in preset(name)]
    assert got == LIGHTLY[name]
