"""The pipeline: pretraining with the kNN monitor and the geometry probes a config asks for
(evaluation follows in :func:`manifold_ssl.run.evaluate_run`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..data.splits import DataSplits
from ..probes.training import TrainingProbe
from ..training.loop import PretrainResult
from .build import check_zero_shot_words, training_probe
from .evaluate import knn_monitor
from .train import train

__all__ = ["pretrain"]


def pretrain(
    cfg: Config,
    resume: str | Path | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> PretrainResult:
    """:func:`manifold_ssl.run.train` with the kNN monitor of ``train.knn_every`` and
    the geometry probes of ``probes`` (:mod:`manifold_ssl.probes`)."""

    def probes(splits: DataSplits, device: torch.device, path: Path) -> TrainingProbe:
        return training_probe(cfg, splits, device, path)

    factory = probes if cfg.probes.every_steps else None
    if cfg.train.knn_every:  # the monitor prompts a multimodal method with the class words
        check_zero_shot_words(cfg)
    return train(cfg, resume, progress, run_dir, monitor=knn_monitor(cfg), probes=factory)
