"""The evaluation protocol of a pretrained encoder, with its two baselines.

kNN (k = 200, cosine, temperature 0.1) and a linear probe (weight decay chosen on the validation
split), both fitted on the training split; each reports its test accuracy once. The baselines
run the same protocol on the same encoder architecture at random initialisation, and on raw
pixels (skipped for streamed data). On streamed data (``data.loader: stream``) the features are
extracted from the files batch by batch, at the un-augmented view (``data.image_size``,
``data.crop_fraction``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.splits import DataSplits, as_tensors
from .features import extract_features, normalise_images
from .knn import knn_accuracy
from .linear import linear_probe
from .settings import EvalConfig

__all__ = ["evaluate_encoder", "evaluate_features", "evaluate_with_baselines"]


def _check_classes(splits: DataSplits) -> None:
    if splits.num_classes < 2:
        raise ValueError(
            f"evaluation needs at least two classes, but the dataset has {splits.num_classes} "
            f"({splits.train.classes}): every classifier would score 100%. Pretrain with "
            "--no-eval, or add the classes' folders"
        )


def evaluate_features(
    settings: EvalConfig,
    features: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    splits: DataSplits,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """kNN and linear probe on (train, val, test) features of ``splits``, run on ``device``
    (default: the features'); the kNN and the probe's passes go over the rows in chunks."""
    _check_classes(splits)
    device = features[0].device if device is None else torch.device(device)
    train, val, test = (f.to(device) for f in features)
    ytr, yval, yte = (s.labels.to(device) for s in (splits.train, splits.val, splits.test))
    k, temperature = settings.knn_k, settings.knn_temperature
    out: dict[str, Any] = {
        "knn_val_accuracy": knn_accuracy(train, ytr, val, yval, splits.num_classes, k, temperature),
        "knn_test_accuracy": knn_accuracy(
            train, ytr, test, yte, splits.num_classes, k, temperature
        ),
        "feature_dim": int(train.shape[1]),
    }
    if settings.linear_probe:
        probe = linear_probe(
            (train, ytr),
            (val, yval),
            (test, yte),
            splits.num_classes,
            settings.linear_weight_decays,
            settings.linear_max_iter,
            dtype=getattr(torch, settings.linear_precision),
            progress=progress,
            tolerance=settings.linear_tolerance,
        )
        out.update({f"linear_{k}": v for k, v in probe.items()})
    return out


def evaluate_encoder(
    settings: EvalConfig,
    encoder: nn.Module,
    splits: DataSplits,
    device: torch.device | str,
    progress: bool = False,
    workers: int = 0,
) -> dict[str, Any]:
    """:func:`evaluate_features` of ``encoder``'s features of the three splits (read by
    ``workers`` DataLoader workers when streamed)."""
    _check_classes(splits)
    mean, std = splits.normalisation
    feats = [
        extract_features(
            encoder,
            s,
            mean,
            std,
            device=device,
            workers=workers,
            progress=f"features ({name})" if progress else None,
        )
        for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    ]
    return evaluate_features(settings, (feats[0], feats[1], feats[2]), splits, progress, device)


def evaluate_with_baselines(
    settings: EvalConfig,
    encoder: nn.Module,
    splits: DataSplits,
    device: torch.device | str,
    random_encoder: nn.Module | None = None,
    progress: bool = False,
    workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{"pretrained": ..., "random_init": ..., "raw_pixels": ...}`` (baselines if enabled);
    with ``progress`` a line per phase and a bar over each linear probe's weight decays."""
    _check_classes(splits)

    def say(text: str) -> None:
        if progress:
            tqdm.write(text)

    say("evaluating the pretrained encoder (features, kNN, linear probe)")
    results = {"pretrained": evaluate_encoder(settings, encoder, splits, device, progress, workers)}
    if settings.baselines:
        if random_encoder is not None:
            say("evaluating the random-init encoder")
            results["random_init"] = evaluate_encoder(
                settings, random_encoder.to(device), splits, device, progress, workers
            )
        if splits.streamed:  # a probe on every pixel of a streamed data set: not a baseline
            say("raw pixels: skipped for streamed data (data.loader=stream)")
            return results
        say("evaluating raw pixels")
        mean, std = splits.normalisation
        pixels = [
            normalise_images(as_tensors(s).images, mean, std).flatten(1)
            for s in (splits.train, splits.val, splits.test)
        ]
        results["raw_pixels"] = evaluate_features(
            settings, (pixels[0], pixels[1], pixels[2]), splits, progress, device
        )
    return results
