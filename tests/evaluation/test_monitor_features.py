"""The monitor's features on the device and in bf16 (issue 28): the same neighbours as float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manifold_ssl.evaluation.features import extract_features
from manifold_ssl.evaluation.knn import knn_accuracy
from manifold_ssl.models import build_backbone


def test_bf16_features_on_the_device_match_float32_and_give_the_same_knn():
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", 3, width=8, small_images=True)
    labels = torch.arange(96) % 3
    base = torch.tensor([[40, 120, 200], [200, 40, 120], [120, 200, 40]], dtype=torch.float32)
    images = base[labels].view(96, 3, 1, 1) + 30 * torch.randn(96, 3, 16, 16)
    images = images.clamp(0, 255).to(torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    exact = extract_features(encoder, images, mean, std)
    fast = extract_features(encoder, images, mean, std, on_device=True, bf16=True)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    # bf16 keeps 8 significant bits (unit roundoff 2^-8); through a dozen layers the features
    # stay within a few percent in direction, far closer than the classes are
    cosine = F.cosine_similarity(fast, exact, dim=1)
    assert cosine.min() > 0.99
    assert not torch.equal(fast, exact)  # the forward did run in bf16
    tr, te = slice(0, 72), slice(72, 96)
    a = knn_accuracy(exact[tr], labels[tr], exact[te], labels[te], 3, 20, 0.1)
    b = knn_accuracy(fast[tr], labels[tr], fast[te], labels[te], 3, 20, 0.1)
    assert a == b
