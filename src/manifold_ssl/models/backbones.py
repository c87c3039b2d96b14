"""Backbones: ResNet-18/34/50 (CIFAR stem or standard stem, any width) and a small ConvNet;
``torchvision:<name>`` and ``timm:<name>`` come from :mod:`.ecosystem`.

``build_backbone(name, in_channels, small_images, width)`` returns a module mapping images
(N, C, H, W) to features (N, out_dim). ``small_images=True`` gives the CIFAR stem the papers
use (3×3 stride-1 convolution, no max-pool; Yerxa Sec. 3, CLAMP App. D); ``width`` scales the
channels (64 is the standard ResNet; the CPU recipes use a narrow one). Kept beside the
libraries' ResNets only for widths below 64: torchvision's BasicBlock and timm's ResNet fix the
first stage at 64 channels, and the CPU recipes (width 16) and the double-descent sweeps need
narrow networks. At width 64 use ``torchvision:resnet18`` or ``timm:resnet18``, whose weights
other codebases load (``manifold-ssl export``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["BACKBONES", "ConvNet", "ResNet", "backbone_problem", "build_backbone"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """He et al. (2016) ResNet without its classifier; ``out_dim`` features after pooling."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        in_channels: int = 3,
        small_images: bool = True,
        width: int = 64,
    ) -> None:
        super().__init__()
        if small_images:  # CIFAR stem: 3×3 stride 1, no max-pool
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages, cin = [], width
        for k, n in enumerate(layers):
            planes = width * 2**k
            blocks = []
            for b in range(n):
                blocks.append(block(cin, planes, 2 if (b == 0 and k > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


class ConvNet(nn.Module):
    """Four 3×3 conv-BN-ReLU layers (two stride-2) and global pooling: the small digits encoder."""

    def __init__(self, in_channels: int = 1, width: int = 32, small_images: bool = True) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for cin, cout, stride in (
            (in_channels, w, 1),
            (w, 2 * w, 2),
            (2 * w, 2 * w, 1),
            (2 * w, 4 * w, 2),
        ):
            layers += [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda **kw: ResNet(BasicBlock, (2, 2, 2, 2), **kw),
    "resnet34": lambda **kw: ResNet(BasicBlock, (3, 4, 6, 3), **kw),
    "resnet50": lambda **kw: ResNet(Bottleneck, (3, 4, 6, 3), **kw),
    "convnet": lambda **kw: ConvNet(**kw),
}


def backbone_problem(name: str) -> str | None:
    """None if ``name`` is a backbone (registered here, or ``torchvision:``/``timm:`` and known
    to that library), else what was expected."""
    from .ecosystem import LIBRARIES, known_model

    library, sep, model = name.partition(":")
    if sep and library in LIBRARIES:
        return None if known_model(library, model) else f"a model {library} knows, not {model!r}"
    if name in BACKBONES:
        return None
    return f"one of {sorted(BACKBONES)}, torchvision:<name> or timm:<name>"


def build_backbone(
    name: str,
    in_channels: int = 3,
    small_images: bool = True,
    width: int | None = None,
    image_size: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A backbone: registered here (``width`` defaults to 64 for ResNets and 32 for the
    ConvNet), or ``torchvision:<name>``/``timm:<name>`` (:mod:`.ecosystem`; ``kwargs`` go to
    the library's constructor, ``image_size`` to ViTs)."""
    if ":" in name:
        from .ecosystem import build_ecosystem

        if width is not None:
            raise ValueError(
                f"model.width={width} scales the backbones written here; {name} has its own "
                "widths (set them through model.kwargs): add --model.width=null"
            )
        return build_ecosystem(name, in_channels, small_images, image_size, kwargs)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    if kwargs:
        raise ValueError(f"model.kwargs are for torchvision:/timm: backbones, not {name!r}")
    if width is not None and width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    kw: dict[str, object] = {"in_channels": in_channels, "small_images": small_images}
    if width is not None:
        kw["width"] = width
    return BACKBONES[name](**kw)
