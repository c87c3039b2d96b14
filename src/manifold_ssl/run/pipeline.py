"""The pipeline: pretraining with the kNN monitor and the geometry probes a config asks for
(:func:`pretrain`), and the one run every launcher makes of it (:func:`run`): train, new or
resumed, then evaluate by one rule. ``manifold-ssl pretrain``, a sweep's trial and a Slurm
launch's job each call :func:`run` and write the same ``eval.json``."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import Config
from ..data.splits import DataSplits
from ..probes.training import TrainingProbe
from ..runinfo import run_lock
from ..training.distributed import DistContext, resolve_device, teardown_distributed
from ..training.loop import PretrainResult
from .build import check_zero_shot_words, training_probe
from .evaluate import check_zero_shot_transfer, evaluate_run, knn_monitor, run_summary
from .train import train

__all__ = ["EVALUATED", "RunOutcome", "pretrain", "run"]

#: The stops after which a run is evaluated: its end, or a stop condition it was given
#: (``train.max_steps``, a speedrun's time budget); never an interrupt or a failure.
EVALUATED = ("finished", "max_steps", "budget")


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


@dataclass
class RunOutcome:
    """What :func:`run` did: the trained run, and its evaluation when it ran."""

    result: PretrainResult
    #: :func:`~manifold_ssl.run.evaluate_run`'s results (None: not evaluated)
    results: dict[str, dict[str, Any]] | None = None
    #: what ``eval.json`` and ``report.md`` record beside the results (:func:`run_summary`)
    extra: dict[str, object] = field(default_factory=dict)
    #: why an evaluation that was asked for did not run ("" when it ran or was not asked for)
    skipped: str = ""


def run(
    cfg: Config,
    run_dir: str | Path | None = None,
    *,
    resume: Literal["no", "yes", "auto"] = "no",
    evaluate: bool = True,
    progress: bool = True,
) -> RunOutcome:
    """Train ``cfg`` into ``run_dir`` (None: a new directory under ``train.out_dir``) and, on
    rank 0, evaluate it when it stopped as :data:`EVALUATED` says.

    Args:
        resume: ``"no"``: a new run; ``"yes"``: continue ``run_dir`` from its last checkpoint
            (an error when it has none); ``"auto"``: continue it when it has one, else start it
            over (a directory an attempt left without a checkpoint is removed: the sweep's
            trials and the Slurm jobs, which are requeued).
        evaluate: evaluate after training; its settings are checked before training starts.
        progress: progress bars and the evaluation's lines.
    """
    if evaluate:  # what the evaluation needs, checked before anything trains
        check_zero_shot_words(cfg)
        check_zero_shot_transfer(cfg)
    result = _train(cfg, run_dir, resume, progress)
    # a group the caller made (pretrain ends its own): what follows runs on rank 0 alone, and
    # a synchronised layer must not wait there for ranks that have returned
    teardown_distributed()
    outcome = RunOutcome(result)
    if not (evaluate and result.ctx.is_main and result.status in EVALUATED):
        return outcome
    if result.splits.num_classes < 2 and not cfg.eval.zero_shot_data:
        outcome.skipped = (
            f"the dataset has one class ({result.splits.train.classes}), so every classifier "
            "would score 100%"
        )
        return outcome
    outcome.extra = run_summary(cfg, result.run_dir, result.step)
    device = str(resolve_device(cfg.train.device, DistContext()))
    try:
        outcome.results = evaluate_run(
            cfg, result.method, result.splits, result.run_dir, device, outcome.extra, progress
        )
    except (ValueError, OSError) as err:  # the trained run is kept: say how to finish it
        raise ValueError(  # the CLI shows a worker's error by its last line: this one's
            f"{err}; the trained run is kept: finish its evaluation with manifold-ssl "
            f"evaluate {result.run_dir} (--eval.* to correct a setting, e.g. "
            "--eval.zero_shot_path=...)"
        ) from err
    return outcome


def _train(cfg: Config, run_dir: str | Path | None, resume: str, progress: bool) -> PretrainResult:
    if resume not in ("no", "yes", "auto"):
        raise ValueError(f"resume must be one of no, yes, auto, got {resume!r}")
    if resume != "no" and run_dir is None:
        raise ValueError(f"resume={resume} needs the run directory")
    path = None if run_dir is None else Path(run_dir)
    if resume == "auto" and path is not None:
        if (path / "checkpoints" / "last.pt").is_file():
            resume = "yes"
        elif path.exists() and os.environ.get("RANK", "0") == "0":
            with run_lock(path):  # not while another process (a second launch) runs it
                shutil.rmtree(path)  # created by an attempt that checkpointed nothing
    if resume == "yes":
        return pretrain(cfg, resume=path, progress=progress)
    return pretrain(cfg, progress=progress, run_dir=path)
