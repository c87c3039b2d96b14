"""Gradient coherence (Yerxa Sec. 3.2, App. E.2, Fig. 3).

For batches that each hold images of a single class, the gradient of the objective with respect
to the parameters is computed per batch; coherence is the cosine similarity between the gradients
of two batches, averaged over pairs of batches of the same class (within) and of different
classes (across), for all parameters and for chosen named layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from torch import nn

__all__ = ["gradient_coherence"]


def gradient_coherence(
    model: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    batches: Sequence[tuple[int, torch.Tensor]],
    layers: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """``{"all": {"within": w, "across": a}, "<layer>": {...}}``.

    ``batches`` is a sequence of (class label, batch); ``loss_of(batch)`` returns the scalar
    objective of a batch through ``model``; ``layers`` are prefixes of parameter names.
    """
    if len(batches) < 2:
        raise ValueError("gradient_coherence needs at least two batches")
    labels = [int(c) for c, _ in batches]
    if len(set(labels)) < 2 or len(set(labels)) == len(labels):
        raise ValueError("batches must include at least two classes and a class with two batches")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = {"all": [i for i, _ in enumerate(named)]}
    for layer in layers:
        idx = [i for i, (n, _) in enumerate(named) if n.startswith(layer)]
        if not idx:
            raise ValueError(f"no parameter name starts with {layer!r}")
        groups[layer] = idx
    grads = []
    for _, batch in batches:
        g = torch.autograd.grad(loss_of(batch), [p for _, p in named], allow_unused=True)
        grads.append(
            [
                torch.zeros_like(p) if gi is None else gi.detach()
                for gi, (_, p) in zip(g, named, strict=True)
            ]
        )
    out: dict[str, dict[str, float]] = {}
    for name, idx in groups.items():
        vecs = torch.stack([torch.cat([g[i].flatten() for i in idx]) for g in grads])
        vecs = torch.nn.functional.normalize(vecs, dim=1)
        within: list[float] = []
        across: list[float] = []
        for a, b in combinations(range(len(batches)), 2):
            (within if labels[a] == labels[b] else across).append(float(vecs[a] @ vecs[b]))
        out[name] = {"within": sum(within) / len(within), "across": sum(across) / len(across)}
    return out
