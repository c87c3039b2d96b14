"""Gradient coherence (Yerxa Sec. 3.2, App. E.2, Fig. 3).

For batches that each hold images of a single class, the gradient of the objective with respect
to the parameters is computed per batch; coherence is the cosine similarity between the gradients
of two batches, averaged over pairs of batches of the same class (within) and of different
classes (across), for all parameters and for chosen named layers.

"The first and last linear operators" of Fig. 3 are those of the encoder, the network whose
"stages in the resnet-50 hierarchy" App. E.2 isolates: the projector head g (a separate network
in App. B, "an identical encoding network and projector architecture") does not count, nor does
a probe head (``online_head``), which the objective never reaches. :func:`coherence_layers`
chooses them among the encoder's weight layers that the objective's gradient reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from torch import nn

__all__ = [
    "coherence_layers",
    "coherence_shortfall",
    "coherence_with_control",
    "gradient_coherence",
    "weight_layers",
]


def gradient_coherence(
    model: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    batches: Sequence[tuple[int, torch.Tensor]],
    layers: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """``{"all": {"within": w, "across": a}, "<layer>": {...}}``.

    ``batches`` is a sequence of (class label, batch); ``loss_of(batch)`` returns the scalar
    objective of a batch through ``model``; ``layers`` are module names (their parameters and
    those of their submodules).
    """
    if len(batches) < 2:
        raise ValueError("gradient_coherence needs at least two batches")
    labels = [int(c) for c, _ in batches]
    if len(set(labels)) < 2 or len(set(labels)) == len(labels):
        raise ValueError("batches must include at least two classes and a class with two batches")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = {"all": [i for i, _ in enumerate(named)]}
    for layer in layers:
        idx = [i for i, (n, _) in enumerate(named) if n.startswith(f"{layer}.")]
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


def weight_layers(model: nn.Module) -> list[str]:
    """The modules whose own trainable ``weight`` is a matrix or kernel (convolutions, linear
    maps, patch embeddings), in registration order: "the first and last layers" of Yerxa
    Fig. 3. (The module owning the first parameter is not a layer: a ViT's first parameter is
    its class token, owned by the whole model.)"""
    return [
        name
        for name, m in model.named_modules()
        if any(
            n == "weight" and p.requires_grad and p.ndim >= 2
            for n, p in m.named_parameters(recurse=False)
        )
    ]


def coherence_shortfall(labels: torch.Tensor, per_batch: int = 8) -> str | None:
    """Why :func:`coherence_with_control` of images with class ids ``labels`` is empty, and
    what would make it present; None when it is not. It needs two batches of ``per_batch``
    images of one class for at least two classes (within- and across-class pairs)."""
    need = 2 * per_batch
    counts = {int(c): int((labels == c).sum()) for c in torch.unique(labels)}
    enough = [c for c, n in counts.items() if n >= need]
    if len(enough) >= 2:
        return None
    if len(counts) < 2:
        return (
            f"gradient coherence compares batches of different classes, and these images have "
            f"{len(counts)} class; it needs labelled images of at least two classes"
        )
    return (
        f"gradient coherence needs at least two classes with {need} images each (two batches "
        f"of {per_batch}), but the images per class are {counts}; use more images per class"
    )


def coherence_layers(
    model: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    encoder: str = "backbone",
) -> dict[str, str]:
    """``{"first": name, "last": name}``: the first and last of the weight layers of the
    submodule ``encoder`` of ``model`` (``""``: the whole model) whose weight the gradient of
    ``loss_of(batch)`` reaches (not None, not all zero), as named in ``model``.

    Raises ValueError when no weight layer of ``encoder`` is reached."""
    root = model.get_submodule(encoder) if encoder else model
    prefix = f"{encoder}." if encoder else ""
    names = weight_layers(root)
    weights: list[torch.Tensor] = [root.get_submodule(n).get_parameter("weight") for n in names]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_of(batch), weights, allow_unused=True)
    reached = [
        f"{prefix}{n}" for n, g in zip(names, grads, strict=True) if g is not None and bool(g.any())
    ]
    if not reached:
        raise ValueError(f"the objective's gradient reaches no weight layer of {encoder!r}")
    return {"first": reached[0], "last": reached[-1]}


def coherence_with_control(
    model: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    views: torch.Tensor,
    labels: torch.Tensor,
    seed: int = 0,
    per_batch: int = 8,
    classes: int = 4,
    controls: int = 4,
    encoder: str = "backbone",
) -> dict[str, float]:
    """Coherence of ``views`` (N, K, C, H, W) of labelled images, as Yerxa Fig. 3 reports it.

    Two batches of ``per_batch`` images for each of the first ``classes`` classes with enough
    images; within and across class for all parameters and for the first and last layers
    (``"<all|first|last>/<within|across>"``), and a control, ``"shuffled/<within|across>"``:
    the same images regrouped under ``controls`` seeded permutations of their labels (averaged:
    one permutation has only ``classes`` within-pairs, too few to agree with across), where
    within and across should agree. Empty when fewer than two classes have 2 · ``per_batch``
    images (:func:`coherence_shortfall` says why). The first and last layers are
    :func:`coherence_layers` of ``encoder``.
    """
    ys = labels.tolist()
    chosen = [c for c in sorted(set(ys)) if ys.count(c) >= 2 * per_batch][:classes]
    if len(chosen) < 2:
        return {}
    order = [i for c in chosen for i in [i for i, y in enumerate(ys) if y == c][: 2 * per_batch]]
    batch_labels = [c for c in chosen for _ in range(2)]
    gen = torch.Generator().manual_seed(seed)
    first = views[torch.tensor(order[:per_batch])]
    roles = coherence_layers(model, loss_of, first, encoder)

    def batches(idx: list[int]) -> list[tuple[int, torch.Tensor]]:
        return [
            (c, views[torch.tensor(idx[k * per_batch : (k + 1) * per_batch])])
            for k, c in enumerate(batch_labels)
        ]

    out: dict[str, float] = {}
    with torch.enable_grad():
        groups = gradient_coherence(model, loss_of, batches(order), layers=list(roles.values()))
        for role, group in {"all": "all", **roles}.items():
            for side, value in groups[group].items():
                out[f"{role}/{side}"] = value
        for _ in range(controls):
            perm = torch.randperm(len(order), generator=gen).tolist()
            res = gradient_coherence(model, loss_of, batches([order[i] for i in perm]))["all"]
            for side, value in res.items():
                out[f"shuffled/{side}"] = out.get(f"shuffled/{side}", 0.0) + value / controls
    return out
