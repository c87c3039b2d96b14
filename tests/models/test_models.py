"""Every registered backbone and method, tested for free (timm's ``test_models.py`` pattern):
output shapes, and every trainable parameter receives a finite, non-zero gradient."""

from __future__ import annotations

import pytest
import torch

from manifold_ssl.methods import METHODS, build_method
from manifold_ssl.models import BACKBONES, build_backbone

# (in_channels, small_images, side): the CIFAR stem on 16×16 images, the standard one on 32×32
STEMS = [(3, True, 16), (1, False, 32)]


def _check_gradients(module: torch.nn.Module) -> None:
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("stem", STEMS, ids=["cifar_stem", "standard_stem"])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_maps_images_to_features_and_trains_every_parameter(name, stem):
    in_channels, small, side = stem
    torch.manual_seed(0)
    net = build_backbone(name, in_channels, small_images=small, width=4)
    x = torch.randn(6, in_channels, side, side)
    out = net(x)
    expansion = 4 if name == "resnet50" else 1
    expected = {"convnet": 16}.get(name, 4 * 8 * expansion)  # last stage: width·2³·expansion
    assert out.shape == (6, net.out_dim) and net.out_dim == expected
    assert torch.isfinite(out).all()
    (out.square().mean() + out.mean()).backward()
    _check_gradients(net)


def test_backbone_width_scales_channels_and_rejects_bad_names():
    assert build_backbone("resnet18", 3, width=8).out_dim == 64
    assert build_backbone("resnet18", 3).out_dim == 512  # the standard ResNet-18
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vit", 3)
    with pytest.raises(ValueError, match="width"):
        build_backbone("resnet18", 3, width=0)


def _method(name: str) -> torch.nn.Module:
    spec = METHODS[name]
    torch.manual_seed(0)
    return build_method(
        name,
        build_backbone("convnet", 3, width=4),
        "32-16",
        predictor="16-16" if spec.predictor else "",
        momentum=0.9 if spec.target == "ema" else 0.0,
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_every_trainable_parameter_a_gradient(name):
    method = _method(name)
    views = torch.randn(16, 2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    loss, terms, z = method(views)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert z.shape == (16, 2, 16) and not z.requires_grad
    assert terms and all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    _check_gradients(method)
    if method.target is not None:  # the EMA target is never trained
        assert all(not p.requires_grad and p.grad is None for p in method.target.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_updates_every_trainable_parameter_and_its_target(name):
    method = _method(name)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    views = torch.randn(16, 2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    for step in range(2):
        loss, _, _ = method(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.update_target(step, 2)
    for n, p in method.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), f"{n} did not change"
    if method.target is not None:  # EMA: between its initial value and the online weights
        online = dict(method.named_parameters())
        for n, p in method.target.module.named_parameters():
            key = ("backbone." if n.startswith("0.") else "projector.") + n[2:]
            assert not torch.equal(p, before[key]), f"target {n} did not move"
            assert not torch.equal(p, online[key]), f"target {n} copied the online weights"


@pytest.mark.parametrize("name, schedule", [("mmcr", "constant"), ("byol", "cosine")])
def test_target_momentum_follows_the_authors_schedule(name, schedule):
    # MMCR (Yerxa App. D): constant τ; BYOL: τ = 1 − (1 − τ_base)(cos(π t/T) + 1)/2
    spec = METHODS[name]
    method = build_method(
        name,
        build_backbone("convnet", 3, width=4),
        "32-16",
        predictor="16-16" if spec.predictor else "",
        momentum=0.5,
    )
    assert method.target is not None and spec.ema == schedule
    online = [p for p in (*method.backbone.parameters(), *method.projector.parameters())]
    with torch.no_grad():
        for p in online:
            p.add_(1.0)  # online = target + 1 everywhere
    before = [p.detach().clone() for p in method.target.parameters()]
    method.update_target(step=5, total_steps=10)  # halfway: the cosine gives τ = 0.75
    tau = 0.5 if schedule == "constant" else 0.75
    for old, new in zip(before, method.target.parameters(), strict=True):
        torch.testing.assert_close(new, old + (1 - tau))
