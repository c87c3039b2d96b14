"""Features of a frozen encoder on un-augmented images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["extract_features", "normalise_images"]


def normalise_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (N, C, H, W) → float, standardised per channel."""
    c = images.shape[1]
    m = torch.tensor(list(mean) * (c if len(mean) == 1 else 1), device=images.device).view(
        1, c, 1, 1
    )
    s = torch.tensor(list(std) * (c if len(std) == 1 else 1), device=images.device).view(1, c, 1, 1)
    return (images.float() / 255.0 - m) / s


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N, F) float32 CPU features of uint8 ``images`` through ``encoder`` in eval mode."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = normalise_images(images[start : start + batch_size].to(device), mean, std)
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)
