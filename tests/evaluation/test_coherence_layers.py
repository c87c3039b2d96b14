"""Which layers gradient coherence reports (Yerxa Fig. 3: the encoder's first and last)."""

from __future__ import annotations

import torch

from manifold_ssl.evaluation.coherence import (
    coherence_layers,
    coherence_shortfall,
    coherence_with_control,
)
from manifold_ssl.methods import build_method
from manifold_ssl.models import build_backbone


def _method_with_online_head():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", 3, True, width=8)
    method = build_method("mmcr", backbone, "32-16")
    method.attach_online_head(4)  # train.online_linear's probe head, which the loss never reaches
    return method.eval()


def test_coherence_layers_are_the_encoders_and_reached_by_the_objective():
    # issue 27.1: "last" was online_head, whose gradient is 0, so last/within = last/across = 0
    method = _method_with_online_head()
    views = torch.randn(32, 2, 3, 16, 16)
    labels = torch.arange(2).repeat_interleave(16)
    loss_of = lambda v: method(v)[0]  # noqa: E731
    layers = coherence_layers(method, loss_of, views[:8])
    encoder = [n for n, m in method.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert layers == {"first": f"backbone.{encoder[0]}", "last": layers["last"]}
    assert layers["last"].startswith("backbone.")  # neither the projector nor a probe head
    for name in layers.values():  # an independent gradient of the objective on another batch
        weight = method.get_submodule(name).weight
        (grad,) = torch.autograd.grad(loss_of(views[8:16]), [weight])
        assert float(grad.abs().sum()) > 0
    out = coherence_with_control(method, loss_of, views, labels, per_batch=8)
    assert out["last/within"] != 0 and out["last/across"] != 0
    assert out["first/within"] != out["last/within"]


def test_coherence_shortfall_says_why_and_what_would_help():
    # issue 27.16: coherence was silently absent under 16 images per class
    assert coherence_shortfall(torch.arange(2).repeat_interleave(16)) is None
    few = coherence_shortfall(torch.arange(3).repeat_interleave(10))
    assert few is not None and "16 images each" in few and "more images per class" in few
    one = coherence_shortfall(torch.zeros(40, dtype=torch.long))
    assert one is not None and "at least two classes" in one and "more images" not in one


def test_class_manifold_advice_is_one_that_can_work():
    # issue 27.16: a one-class run was advised to "lower --per-class", which cannot help
    import pytest

    from manifold_ssl.evaluation.features import class_manifolds

    x = torch.randn(40, 4)
    with pytest.raises(ValueError, match="at least two classes") as err:
        class_manifolds(x, torch.zeros(40, dtype=torch.long), 10)
    assert "per-class" not in str(err.value)
    with pytest.raises(ValueError, match="lower --per-class to at most 12"):
        class_manifolds(x, torch.tensor([0] * 20 + [1] * 12 + [2] * 8), 15)
    assert class_manifolds(x, torch.tensor([0] * 20 + [1] * 12 + [2] * 8), 12)[0].shape[0] == 2
