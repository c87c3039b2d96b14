"""Backbones from torchvision and timm: ``torchvision:<name>`` and ``timm:<name>``.

The library's own model is built (no pretrained weights) and its classifier replaced by an
identity, so that its state dict is the library's with only the classifier missing: what
``manifold-ssl export`` writes and ``torchvision.models.get_model(name)`` /
``timm.create_model(name)`` load back. Options:

* ``small_images`` (the CIFAR stem of Yerxa Sec. 3 and CLAMP App. D) on ResNets: the first
  convolution becomes 3×3 stride 1 and the max-pool an identity (:func:`cifar_stem`; apply it
  to a fresh library model before loading an exported one);
* ``in_channels`` other than 3: the first convolution is rebuilt (timm: ``in_chans``);
* ``image_size``: the ``img_size`` of timm ViTs (and ``image_size`` of torchvision's) when the
  constructor keywords (``model.kwargs``, e.g. ``{patch_size: 4}``) do not give it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LIBRARIES", "EcosystemBackbone", "build_ecosystem", "cifar_stem", "known_model"]

LIBRARIES = ("torchvision", "timm")
_CLASSIFIERS = ("fc", "head", "heads", "classifier")


class EcosystemBackbone(nn.Module):
    """A torchvision or timm model without its classifier: images → (N, out_dim) features.

    ``model`` is the library's own module (state dict keys are the library's under
    ``model.``); ``spec`` records how to build it again.
    """

    def __init__(self, model: nn.Module, out_dim: int, spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.out_dim = out_dim
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.flatten(1) if out.ndim > 2 else out


def known_model(library: str, name: str) -> bool:
    if library == "torchvision":
        import torchvision

        return name in torchvision.models.list_models()
    if library == "timm":
        import timm

        return bool(timm.list_models(name))
    return False


def cifar_stem(model: nn.Module, in_channels: int = 3) -> nn.Module:
    """The CIFAR stem on a torchvision or timm ResNet (in place): ``conv1`` 3×3 stride 1
    padding 1 with ``in_channels`` inputs, no max-pool."""
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(
            f"the CIFAR stem (model.small_images=true) needs a ResNet with conv1 and maxpool; "
            f"{type(model).__name__} has none: set model.small_images=false"
        )
    model.conv1 = nn.Conv2d(in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _first_conv_channels(model: nn.Module, in_channels: int) -> None:
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(
            f"{type(model).__name__} takes 3 input channels; rebuilding its first convolution "
            f"for {in_channels} is supported on ResNets only"
        )
    model.conv1 = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


def _drop_classifier(model: nn.Module) -> int:
    """Replace the classifier's last ``nn.Linear`` by an identity; its input width."""
    for attr in _CLASSIFIERS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return int(head.in_features)
        if isinstance(head, nn.Sequential):
            linears = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linears:
                last = linears[-1]
                width = int(head[last].in_features)  # type: ignore[arg-type]
                head[last] = nn.Identity()
                return width
    raise ValueError(f"cannot find the classifier of {type(model).__name__} ({_CLASSIFIERS})")


def build_ecosystem(
    name: str,
    in_channels: int = 3,
    small_images: bool = True,
    image_size: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> EcosystemBackbone:
    """``library:model`` (see the module doc), randomly initialised."""
    library, _, model_name = name.partition(":")
    if library not in LIBRARIES or not model_name:
        raise ValueError(f"backbone {name!r} must be torchvision:<name> or timm:<name>")
    if not known_model(library, model_name):
        raise ValueError(f"{library} has no model {model_name!r} (model.backbone={name!r})")
    kw = dict(kwargs or {})
    is_vit = "vit" in model_name or "deit" in model_name
    if library == "timm":
        import timm

        if is_vit and image_size is not None:
            kw.setdefault("img_size", image_size)
        model = timm.create_model(model_name, pretrained=False, in_chans=in_channels, **kw)
        if small_images and hasattr(model, "maxpool"):
            cifar_stem(model, in_channels)
        model.reset_classifier(0)  # type: ignore[operator]
        out_dim = int(model.num_features)  # type: ignore[arg-type]
    else:
        import torchvision

        if is_vit and image_size is not None:
            kw.setdefault("image_size", image_size)
        model = torchvision.models.get_model(model_name, weights=None, **kw)
        if small_images and hasattr(model, "maxpool"):
            cifar_stem(model, in_channels)
        elif in_channels != 3:
            _first_conv_channels(model, in_channels)
        out_dim = _drop_classifier(model)
    spec = {
        "library": library,
        "name": model_name,
        "kwargs": kw,
        "in_channels": in_channels,
        "cifar_stem": bool(small_images and hasattr(model, "maxpool")),
    }
    return EcosystemBackbone(model, out_dim, spec)
