"""Zero-shot classification of an image–text model: images against class-name prompts.

As CLIP (Radford et al. 2021, Sec. 3.1.4) and OpenCLIP's ``zero_shot_classifier``: each class's
classifier weight is the normalised mean of the normalised text embeddings of its prompts (one
per template, prompt ensembling); an image is assigned the class of largest cosine similarity to
its normalised embedding. Schaeffer et al. (2024) report ImageNet zero-shot top-1 (Figs. 5–6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.captions import fill
from ..data.splits import Split
from .features import extract_features

__all__ = ["class_text_embeddings", "zero_shot_accuracy"]


@torch.no_grad()
def class_text_embeddings(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenize: Callable[[list[str]], torch.Tensor],
    classes: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(C, D) unit class embeddings: the normalised mean over ``templates`` (each with
    ``{label}``) of the unit text embeddings of the prompts of each class."""
    out = []
    for name in classes:
        tokens = tokenize([fill(t, label=name) for t in templates]).to(device)
        emb = F.normalize(encode_text(tokens).float(), dim=-1).mean(dim=0)
        out.append(F.normalize(emb, dim=-1))
    return torch.stack(out).cpu()


def zero_shot_accuracy(
    image_tower: nn.Module,
    class_embeddings: torch.Tensor,
    split: Split,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    workers: int = 0,
    top: Sequence[int] = (1,),
) -> dict[int, float]:
    """Top-k accuracies ``{k: fraction}`` of zero-shot classification of ``split``'s
    un-augmented images (``image_tower``: images → (N, D) embeddings, before normalisation)
    against ``class_embeddings`` (C, D)."""
    feats = F.normalize(
        extract_features(image_tower, split, mean, std, device=device, workers=workers), dim=-1
    )
    scores = feats @ class_embeddings.T  # (N, C)
    labels = split.labels
    ranked = scores.topk(min(max(top), scores.shape[1]), dim=1).indices
    return {k: float((ranked[:, :k] == labels[:, None]).any(dim=1).float().mean()) for k in top}
