"""The composition layer's training half: a config becomes a trained run directory.

:func:`train` creates the run directory (``config.yaml``, ``meta.json``) or checks a resumed
one against its checkpoint, loads the data, builds the method and its batches
(:mod:`manifold_ssl.run.build`) and hands them to the bare loop,
:func:`manifold_ssl.training.fit`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..config import Config, effective_lr, loss_keywords, save_config
from ..methods import MULTIMODAL
from ..models.heads import embedding_dim
from ..runinfo import make_run_dir, run_lock, run_metadata, write_json
from ..training.distributed import (
    DistContext,
    resolve_device,
    setup_distributed,
    teardown_distributed,
)
from ..training.loop import Monitor, Parts, PretrainResult, ProbeFactory, fit
from .build import (
    build_method_for,
    caption_source,
    eval_preprocess,
    load_splits_ranked,
    loop_settings,
    train_batches,
    view_size,
)
from .record import RunDir

__all__ = ["train"]


def train(
    cfg: Config,
    resume: str | Path | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
    monitor: Monitor | None = None,
    probes: ProbeFactory | None = None,
) -> PretrainResult:
    """Pretrain ``cfg.method`` on ``cfg.data`` into a new run directory (under
    ``train.out_dir``, or ``run_dir``) or continue the run ``resume``; call ``monitor`` every
    ``train.knn_every`` epochs and the probe when due (neither if not given).

    Under ``torchrun`` the process group is created here and destroyed on every rank before
    returning (after a barrier when training ended normally), so whatever runs next on rank 0
    alone meets no collective.
    """
    ctx = setup_distributed(cfg.train.device)
    ok, created = False, None
    try:
        state = RunDir(resume).resume_state(cfg) if resume is not None else None
        if resume is not None:
            run_path = Path(resume)
        else:
            run_path = created = _new_run_dir(cfg, ctx, run_dir)
        with run_lock(run_path) if ctx.is_main else contextlib.nullcontext():
            parts = _parts(cfg, ctx)
            if ctx.is_main and cfg.method.name in MULTIMODAL:
                source, line = caption_source(cfg)
                print(line)
                _record(run_path, "captions", {"source": source, "why": line})
            if ctx.is_main:  # issue 29.4: what the config leaves to be derived, as derived
                _record(run_path, "resolved", resolved_settings(cfg, parts))
            if ctx.is_main and parts.splits.shards_skipped:
                _record(run_path, "eval_shards_skipped", list(parts.splits.shards_skipped))
            result = fit(parts, loop_settings(cfg), run_path, state, progress, monitor, probes)
        ok = True
        return result
    except BaseException:
        if created is not None and ctx.is_main and not (created / "checkpoints").exists():
            shutil.rmtree(created, ignore_errors=True)  # a run that failed before any step
        raise
    finally:
        teardown_distributed(ctx, synchronise=ok)


def _parts(cfg: Config, ctx: DistContext) -> Parts:
    device = resolve_device(cfg.train.device, ctx)
    splits = load_splits_ranked(cfg, ctx)
    batches = train_batches(cfg, splits, ctx, device)
    method = build_method_for(cfg, batches.channels, image_size=view_size(cfg, splits))
    return Parts(method, batches, splits, ctx, device, eval_preprocess(cfg, splits))


def resolved_settings(cfg: Config, parts: Parts) -> dict[str, Any]:
    """The values a run derives from its config, recorded once in ``meta.json`` as
    ``resolved`` (dinov2 writes its scaled config): the peak learning rate after
    ``optim.lr_scaling``, the training views' side, the backbone's feature and the projector's
    embedding widths, and every hyperparameter of the objective (its defaults with
    ``method.loss`` over them: what it trained with)."""
    features = int(parts.method.backbone.out_dim)  # type: ignore[arg-type]
    return {
        "peak_lr": effective_lr(cfg),
        "view_size": view_size(cfg, parts.splits),
        "feature_dim": features,
        "embedding_dim": embedding_dim(cfg.model.projector, features),
        "loss": {**loss_keywords(cfg.method.name), **cfg.method.loss},
    }


def _record(run_path: Path, key: str, value: Any) -> None:
    """``key`` in the run's ``meta.json``: where a multimodal run's captions come from
    (:func:`caption_source`), the shards its evaluation copy left out (the errors of
    ``data.shard_errors=skip``; the training stream's count is the checkpoint's
    ``shards_skipped``)."""
    path = run_path / "meta.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    meta[key] = value
    write_json(path, meta)


def _new_run_dir(cfg: Config, ctx: DistContext, run_dir: str | Path | None) -> Path:
    """Rank 0 creates the run directory and records config and provenance; others learn it."""
    path: list[Any] = [None]
    if ctx.is_main:
        if run_dir is not None:
            p = Path(run_dir)
            p.mkdir(parents=True, exist_ok=False)
        else:
            p = make_run_dir(
                cfg.train.out_dir, cfg.train.name or f"{cfg.method.name}-{cfg.data.name}"
            )
        save_config(cfg, p / "config.yaml")
        meta = run_metadata(cfg.train.seed)
        meta["world_size"] = ctx.world_size
        write_json(p / "meta.json", meta)
        path[0] = str(p)
    if ctx.world_size > 1:
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])
