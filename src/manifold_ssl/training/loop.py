"""Pretraining: the whole loop on one screen, then evaluation and the report.

Data live on the device as one uint8 tensor; a batch is an index slice of a seeded permutation;
its K views are made on the device by :class:`~manifold_ssl.data.views.MultiViewAugment`. Two
seeded generators (data order, augmentation) and the step counter are all the randomness, and
they are checkpointed, so ``--resume`` continues with exactly the losses an uninterrupted run
would have had. Under DDP every rank draws the global batch's permutation and view parameters
and takes its contiguous slice: the global batch, and hence the loss, equals one process's.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, config_from_dict, config_to_dict, save_config
from ..data.splits import DataSplits, load_splits
from ..data.views import MultiViewAugment, preset
from ..evaluation.features import extract_features
from ..evaluation.knn import knn_accuracy
from ..geometry.spectral import effective_rank, percent_error
from ..methods import SSLMethod, build_method
from ..models.backbones import build_backbone
from ..models.sync_bn import convert_sync_batchnorm
from ..runinfo import make_run_dir, run_lock, run_metadata, write_json
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistContext, resolve_device, setup_distributed, teardown_distributed
from .metrics import MetricsLog
from .optim import build_optimizer, lr_at_step

__all__ = ["PretrainResult", "build_method_for", "pretrain"]


@dataclass
class PretrainResult:
    run_dir: Path
    status: str  # "finished" | "interrupted" | "budget" | "max_steps"
    step: int
    method: SSLMethod
    splits: DataSplits
    ctx: DistContext  # this process's rank; the process group is gone when it returns


def build_method_for(cfg: Config, in_channels: int) -> SSLMethod:
    backbone = build_backbone(
        cfg.model.backbone, in_channels, cfg.model.small_images, cfg.model.width
    )
    return build_method(
        cfg.method.name,
        backbone,
        cfg.model.projector,
        predictor=cfg.model.predictor,
        momentum=cfg.method.momentum,
        loss_kwargs=cfg.method.loss,
    )


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to checkpoint and return at the end of the step."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _monitor(cfg: Config, method: SSLMethod, splits: DataSplits, device: torch.device) -> float:
    spec = preset(cfg.views.preset)[0]
    train_f = extract_features(
        method.backbone, splits.train.images, spec.mean, spec.std, device=device
    )
    val_f = extract_features(method.backbone, splits.val.images, spec.mean, spec.std, device=device)
    return knn_accuracy(
        train_f,
        splits.train.labels,
        val_f,
        splits.val.labels,
        splits.num_classes,
        cfg.eval.knn_k,
        cfg.eval.knn_temperature,
    )


def _batch_metrics(z: torch.Tensor) -> dict[str, float]:
    """Percent error of the batch centroids (Schaeffer Eq. 4) and the erank of view 0 (RankMe)."""
    zn = F.normalize(z.float(), dim=-1)
    return {
        "percent_error": float(percent_error(zn.mean(dim=1))),
        "effective_rank": float(effective_rank(zn[:, 0])),
    }


def pretrain(
    cfg: Config,
    resume: str | Path | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> PretrainResult:
    """Pretrain ``cfg.method`` on ``cfg.data``; checkpoint, log, monitor. See the module doc.

    Under ``torchrun`` the process group is created here and destroyed on every rank before
    returning (after a barrier when training ended normally), so whatever runs next on rank 0
    alone meets no collective.
    """
    ctx = setup_distributed(cfg.train.device)
    ok, created = False, None
    try:
        state: dict[str, Any] | None = None
        if resume is not None:
            run_path = Path(resume)
            state = load_checkpoint(run_path / "checkpoints" / "last.pt", map_location="cpu")
            missing = sorted(set(RESUME_KEYS) - set(state))
            if missing:
                raise ValueError(
                    f"checkpoint in {run_path} cannot resume training: it lacks {missing} "
                    "(a weights-only checkpoint can be evaluated or analysed, not resumed)"
                )
            saved = config_from_dict(state["config"])
            if _trajectory_config(saved) != _trajectory_config(cfg):
                raise ValueError(
                    f"checkpoint in {run_path} was written with another config; resume "
                    f"with the run's own config (manifold-ssl pretrain --resume {run_path})"
                )
        else:
            run_path = created = _new_run_dir(cfg, ctx, run_dir)
        with run_lock(run_path) if ctx.is_main else contextlib.nullcontext():
            result = _pretrain(cfg, ctx, run_path, state, progress)
        ok = True
        return result
    except BaseException:
        if created is not None and ctx.is_main and not (created / "checkpoints").exists():
            shutil.rmtree(created, ignore_errors=True)  # a run that failed before any step
        raise
    finally:
        teardown_distributed(ctx, synchronise=ok)


def _pretrain(
    cfg: Config,
    ctx: DistContext,
    run_path: Path,
    state: dict[str, Any] | None,
    progress: bool,
) -> PretrainResult:
    device = resolve_device(cfg.train.device, ctx)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    log = MetricsLog(run_path, enabled=ctx.is_main, tensorboard=cfg.train.tensorboard)

    # ---- data: one uint8 tensor on the device; views made there
    if ctx.is_main:
        splits = load_splits(
            cfg.data.name, cfg.data.root, cfg.data.path, cfg.data.val_fraction, cfg.data.split_seed
        )
    if ctx.world_size > 1:
        dist.barrier()  # rank 0 filled the cache
    if not ctx.is_main:
        splits = load_splits(
            cfg.data.name, cfg.data.root, cfg.data.path, cfg.data.val_fraction, cfg.data.split_seed
        )
    images = splits.train.images.to(device)
    n_train, _, height, width = images.shape
    batch = cfg.train.batch_size
    if batch % ctx.world_size:
        raise ValueError(
            f"train.batch_size {batch} must be divisible by the {ctx.world_size} processes"
        )
    if batch > n_train:
        raise ValueError(f"train.batch_size {batch} exceeds the {n_train} training images")
    local = batch // ctx.world_size
    lo, hi = ctx.rank * local, (ctx.rank + 1) * local
    aug = MultiViewAugment(preset(cfg.views.preset), cfg.views.num_views)

    # ---- model and optimiser
    torch.manual_seed(cfg.train.seed)
    method = build_method_for(cfg, images.shape[1]).to(device)
    model: nn.Module = method
    if ctx.world_size > 1:
        if cfg.model.sync_bn:
            model = convert_sync_batchnorm(model, device)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = build_optimizer(method, cfg)
    steps_per_epoch = n_train // batch
    total_steps = cfg.train.epochs * steps_per_epoch
    data_gen = torch.Generator().manual_seed(cfg.train.seed)
    aug_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    step, epoch, step_in_epoch, perm = 0, 0, 0, torch.empty(0, dtype=torch.long)
    if state is not None:
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        data_gen.set_state(state["data_rng"])
        aug_gen.set_state(state["aug_rng"])
        step, epoch, step_in_epoch, perm = (
            state["step"],
            state["epoch"],
            state["step_in_epoch"],
            state["perm"],
        )
        log.truncate_after(step)

    def checkpoint(rng: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Save the state after ``step`` steps; ``rng``: the generators' states at that point
        when they have since moved on (a step that failed after drawing its views)."""
        data_rng, aug_rng = rng if rng is not None else (data_gen.get_state(), aug_gen.get_state())
        if ctx.is_main:
            save_checkpoint(
                {
                    "config": config_to_dict(cfg),
                    "model": method.state_dict(),
                    "optimizer": opt.state_dict(),
                    "data_rng": data_rng,
                    "aug_rng": aug_rng,
                    "step": step,
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "perm": perm,
                },
                run_path / "checkpoints" / "last.pt",
            )

    use_amp = cfg.train.amp and device.type == "cuda"
    status, start_time = "finished", time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (progress and ctx.is_main),
        desc=f"{cfg.method.name} {cfg.data.name}",
        unit="step",
        dynamic_ncols=True,
    )
    # the generators' states that go with the completed steps: what a checkpoint written after
    # a failure in the step in progress (which has drawn its views already) must hold
    done = (data_gen.get_state(), aug_gen.get_state())
    with _StopFlag() as stop, _checkpoint_on_error(lambda: checkpoint(done)):
        while epoch < cfg.train.epochs and status == "finished":
            if step_in_epoch == 0:
                perm = torch.randperm(n_train, generator=data_gen)
            method.train()
            while step_in_epoch < steps_per_epoch:
                t0 = time.perf_counter()
                idx = perm[step_in_epoch * batch : (step_in_epoch + 1) * batch]
                params = aug.sample(batch, height, width, aug_gen)  # the global batch's views
                x = images[idx[lo:hi].to(device)]
                views = aug.apply(x, [p.slice(lo, hi) for p in params])  # (b, K, C, H, W)
                for group in opt.param_groups:
                    group["lr"] = lr_at_step(cfg, step, steps_per_epoch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss, terms, z = model(views)
                if not torch.isfinite(loss):  # before the step: the weights stay usable
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {step + 1}; the last checkpoint is kept"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                method.update_target(step, total_steps)
                step += 1
                step_in_epoch += 1
                done = (data_gen.get_state(), aug_gen.get_state())
                bar.update(1)
                if ctx.is_main and (step % cfg.train.log_every == 0 or step == 1):
                    seconds = time.perf_counter() - t0
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": loss.item(),
                        "lr": opt.param_groups[0]["lr"],
                        "images_per_s": batch / seconds,
                        **{f"loss/{k}": v for k, v in terms.items()},
                        **_batch_metrics(z),
                    }
                    log.log(record)
                    bar.set_postfix(loss=f"{loss.item():.4g}")
                every = cfg.train.checkpoint_every_steps
                if every and step % every == 0:
                    checkpoint()
                reason = _stop_reason(cfg, stop, step, start_time, ctx.world_size, device)
                if reason:
                    status = reason
                    break
            if step_in_epoch == steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
                done = (data_gen.get_state(), aug_gen.get_state())
                if (
                    cfg.train.knn_every
                    and (epoch % cfg.train.knn_every == 0 or epoch == cfg.train.epochs)
                    and ctx.is_main
                ):
                    acc = _monitor(cfg, method, splits, device)
                    log.log({"step": step, "epoch": epoch, "knn_val_accuracy": acc})
                    bar.write(f"epoch {epoch}: kNN val accuracy {100 * acc:.2f}%")
                if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                    checkpoint()
        if status != "finished":
            checkpoint()
            if ctx.is_main:
                bar.write(
                    f"stopped ({status}) at step {step}; resume with: "
                    f"manifold-ssl pretrain --resume {run_path}"
                )
    bar.close()
    log.close()
    return PretrainResult(run_path, status, step, method, splits, ctx)


@contextlib.contextmanager
def _checkpoint_on_error(save: Callable[[], None]) -> Iterator[None]:
    """On an exception inside the loop, save the last completed step before it propagates, so
    that a crash (or a non-finite loss) loses at most the step in progress."""
    try:
        yield
    except Exception:
        try:
            save()
        except Exception as save_err:  # keep the original error in front
            print(f"the checkpoint could not be written either: {save_err}", file=sys.stderr)
        else:
            print(
                "the last completed step was checkpointed; --resume continues from it",
                file=sys.stderr,
            )
        raise


STOP_KEYS = ("max_steps", "time_budget_s")  # where to stop, not what is computed
RESUME_KEYS = (
    "model",
    "optimizer",
    "data_rng",
    "aug_rng",
    "step",
    "epoch",
    "step_in_epoch",
    "perm",
)


def _trajectory_config(cfg: Config) -> dict[str, Any]:
    """The config without the stop conditions, which a resumed run may change."""
    d = config_to_dict(cfg)
    for key in STOP_KEYS:
        d["train"].pop(key)
    return d


_REASONS = ("interrupted", "max_steps", "budget")


def _stop_reason(
    cfg: Config, stop: _StopFlag, step: int, start: float, world: int, device: torch.device
) -> str | None:
    """Why to stop after this step, if at all; under DDP every rank agrees (a signal or a clock
    seen by one rank stops all of them at the same step, so no collective is left waiting)."""
    code = 0
    if stop.raised:
        code = 1
    elif cfg.train.max_steps and step >= cfg.train.max_steps:
        code = 2
    elif cfg.train.time_budget_s and time.perf_counter() - start >= cfg.train.time_budget_s:
        code = 3
    if world > 1:
        flag = torch.tensor([code], device=device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
    return _REASONS[code - 1] if code else None


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
