"""Pretraining: the loop on one screen (``_pretrain``), its steps in ``_Trainer``.

Evaluation is not here: ``manifold_ssl.run`` passes a ``monitor`` and ``probes`` in, and
evaluates the result afterwards.

Batches come from :mod:`manifold_ssl.data.stream`: one uint8 tensor on the device
(``data.loader: memory``) or files decoded by DataLoader workers (``stream``); either way a
batch is a slice of a seeded permutation and its K views are drawn for the global batch, the
photometric part made on the device by :class:`~manifold_ssl.data.views.MultiViewAugment`.
The data source's state and the step counter are all the randomness, and they are
checkpointed, so ``--resume`` continues with exactly the losses an uninterrupted run would have
had, also mid-epoch. Under DDP every rank draws the global batch's permutation and view
parameters and takes its contiguous slice: the global batch, and hence the loss, equals one
process's.

GPU paths, all testable on the CPU: bf16 autocast (``train.amp``; ``train.amp_cpu`` on the
CPU), channels-last views and weights (``train.channels_last``), ``torch.compile``
(``train.compile``).

Every metrics line carries ``flops``, the cumulative training FLOPs (the compute axis of
Schaeffer et al. Fig. 4): forward + backward of backbone, heads and loss, counted once per
process by ``torch.utils.flop_counter.FlopCounterMode`` on its first step and multiplied by the
world size. Counted are the matrix products and convolutions; excluded are elementwise ops,
normalisation, the loss's eigen/SVD solves, augmentation, the optimiser and the EMA update.
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
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from .._validation import finiteness_deferred
from ..config import (
    RESUME_FREE_KEYS,
    Config,
    config_from_dict,
    config_to_dict,
    differing_keys,
    save_config,
)
from ..data.pairs import CaptionBatches
from ..data.splits import DataSplits, captions_of, check_same_data, data_identity, splits_of
from ..data.stream import Layout, TrainBatches, make_batches
from ..data.views import MultiViewAugment, dataset_preset, preset
from ..dispatch import host_side
from ..distributed import fixed_batch_sizes
from ..geometry.spectral import effective_rank, percent_error
from ..methods import MULTIMODAL, MultimodalMethod, SSLMethod, build_method
from ..models.backbones import build_backbone
from ..models.sync_bn import convert_sync_batchnorm
from ..models.text import build_text_tower, build_tokenizer
from ..runinfo import make_run_dir, run_lock, run_metadata, write_json
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistContext, resolve_device, setup_distributed, teardown_distributed
from .metrics import MetricsLog
from .optim import build_optimizer, lr_at_step

__all__ = ["Method", "PretrainResult", "build_method_for", "pretrain", "view_size"]

Method = SSLMethod | MultimodalMethod


@dataclass
class PretrainResult:
    run_dir: Path
    status: str  # "finished" | "interrupted" | "budget" | "max_steps"
    step: int
    method: Method
    splits: DataSplits
    ctx: DistContext  # this process's rank; the process group is gone when it returns


def view_size(cfg: Config, splits: DataSplits) -> int:
    """The side of the training views: ``data.image_size``, else the preset's, else the
    images' own."""
    spec = preset(cfg.views.preset)[0]
    return cfg.data.image_size or spec.size or splits.image_size


def build_method_for(
    cfg: Config, in_channels: int, seed: int | None = None, image_size: int | None = None
) -> Method:
    """``cfg``'s method, initialised from ``seed`` (default ``train.seed``) in a forked RNG:
    the same weights on every call, and the caller's global RNG state left as it was.
    ``image_size``: the views' side (:func:`view_size`), which ViT backbones are built for."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed if seed is None else seed)
        backbone = build_backbone(
            cfg.model.backbone,
            in_channels,
            cfg.model.small_images,
            cfg.model.width,
            image_size=image_size or cfg.data.image_size,
            kwargs=cfg.model.kwargs,
        )
        if cfg.method.name in MULTIMODAL:
            t = cfg.text
            dim = int(cfg.model.projector.split("-")[-1]) if cfg.model.projector else None
            text = build_text_tower(
                dim or backbone.out_dim,  # type: ignore[arg-type]
                t.width,
                t.layers,
                t.heads,
                t.context_length,
            )
            return MultimodalMethod(
                cfg.method.name, backbone, cfg.model.projector, text, cfg.method.loss
            )
        return build_method(
            cfg.method.name,
            backbone,
            cfg.model.projector,
            predictor=cfg.model.predictor,
            momentum=cfg.method.momentum,
            ema=cfg.method.ema,
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


def _channels_last(views: torch.Tensor) -> torch.Tensor:
    return views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _batch_metrics(z: torch.Tensor) -> dict[str, float]:
    """Percent error of the batch centroids (Schaeffer Eq. 4), the complement of their mean
    squared norm ``1 − mean_b ‖μ_b‖²`` (0 at perfect reconstruction: Schaeffer Fig. 7) and
    the erank of view 0 (RankMe)."""
    zn = F.normalize(z.float(), dim=-1)
    centroids = zn.mean(dim=1)
    return {
        "percent_error": float(percent_error(centroids)),
        "centroid_norm_complement": float(1 - centroids.pow(2).sum(-1).mean()),
        "effective_rank": float(effective_rank(zn[:, 0])),
    }


#: ``monitor(method, splits, device) -> {name: value}``: logged every ``train.knn_every``
#: epochs (``manifold_ssl.run.pretrain`` passes the kNN accuracy on the validation split, and
#: the zero-shot accuracy of multimodal methods).
Monitor = Callable[[Method, DataSplits, torch.device], dict[str, float]]


class Probe(Protocol):
    """Measurements every few steps (``manifold_ssl.probes.TrainingProbe``)."""

    def due(self, step: int, trained_flops: int, last: bool = False) -> bool: ...
    def resume_at(self, step: int) -> None: ...
    def summary(self) -> str | None: ...
    def __call__(self, method: Method, step: int) -> dict[str, float]: ...


#: ``probes(splits, device, run_dir)``: the run's probe, made once the data are loaded.
ProbeFactory = Callable[[DataSplits, torch.device, Path], Probe]


def pretrain(
    cfg: Config,
    resume: str | Path | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
    monitor: Monitor | None = None,
    probes: ProbeFactory | None = None,
) -> PretrainResult:
    """Pretrain ``cfg.method`` on ``cfg.data``; checkpoint, log, and call ``monitor`` every
    ``train.knn_every`` epochs and the probe when due (neither if not given). See the module
    doc.

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
            changed = differing_keys(config_from_dict(state["config"]), cfg, RESUME_FREE_KEYS)
            if changed:
                raise ValueError(
                    f"checkpoint in {run_path} was written with other values of {changed}; "
                    f"resume with the run's own config (manifold-ssl pretrain --resume "
                    f"{run_path}), changing at most {', '.join(RESUME_FREE_KEYS)}"
                )
        else:
            run_path = created = _new_run_dir(cfg, ctx, run_dir)
        with run_lock(run_path) if ctx.is_main else contextlib.nullcontext():
            result = _pretrain(cfg, ctx, run_path, state, progress, monitor, probes)
        ok = True
        return result
    except BaseException:
        if created is not None and ctx.is_main and not (created / "checkpoints").exists():
            shutil.rmtree(created, ignore_errors=True)  # a run that failed before any step
        raise
    finally:
        teardown_distributed(ctx, synchronise=ok)


class _Trainer:
    """One run's data, model, optimiser and position; the steps of :func:`_pretrain`."""

    def __init__(self, cfg: Config, ctx: DistContext, run_path: Path, log: MetricsLog) -> None:
        self.cfg, self.ctx, self.run_path, self.log = cfg, ctx, run_path, log
        self.device = resolve_device(cfg.train.device, ctx)
        self.splits = _load_splits(cfg, ctx)
        self.identity = data_identity(self.splits)  # recorded in every checkpoint
        self.batch = cfg.train.batch_size
        self.data = _train_batches(cfg, self.splits, ctx, self.device)
        size = view_size(cfg, self.splits)
        self.method = build_method_for(cfg, self.data.channels, image_size=size)
        online = cfg.train.online_linear and self.splits.num_classes >= 2
        if online and isinstance(self.method, SSLMethod):
            self.method.attach_online_head(self.splits.num_classes, cfg.train.seed)
            labels = self.splits.pretraining().labels  # -1: unlabelled (ignored)
            self.labels: torch.Tensor | None = labels.to(self.device)
        else:
            self.labels = None
        self.method.to(self.device)
        self.memory_format = torch.channels_last if cfg.train.channels_last else None
        if self.memory_format is not None:
            self.method.to(memory_format=self.memory_format)
        self.model: nn.Module = self.method
        if ctx.world_size > 1:
            if cfg.model.sync_bn:
                self.model = convert_sync_batchnorm(self.model, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:  # in place: keeps the module (and its state dict keys) as it is
            self.model.compile()
        self.opt = build_optimizer(self.method, cfg)
        head = getattr(self.method, "online_head", None)
        self.head_opt = (
            torch.optim.SGD(head.parameters(), lr=cfg.train.online_lr, momentum=0.9, foreach=True)
            if head is not None
            else None
        )
        self.steps_per_epoch = self.data.num_images // self.batch
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.step_flops: int | None = None
        cpu_amp = cfg.train.amp_cpu and self.device.type == "cpu"
        self.use_amp = cfg.train.amp and (self.device.type == "cuda" or cpu_amp)
        # set on the device when a step's loss is not finite; read at logging steps and
        # before each checkpoint (the only host reads of a training step)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.checked = 0  # the step up to which the losses are known finite
        self.clock = (time.perf_counter(), 0)  # (time, step) of the last logged step
        self.seconds, self.mark = 0.0, time.perf_counter()  # the training clock (position)
        # the data's state that goes with the completed steps: what a checkpoint written after
        # a failure in the step in progress (which has drawn its views already) must hold
        self.done = self.data.state_dict()

    def restore(self, state: dict[str, Any]) -> None:
        check_same_data(state.get("data"), self.splits, "--resume")
        self.method.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.head_opt is not None and "online_optimizer" in state:
            self.head_opt.load_state_dict(state["online_optimizer"])
        self.data.load_state_dict(state)
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.seconds, self.mark = float(state.get("train_seconds", 0.0)), time.perf_counter()
        self.done = self.data.state_dict()
        self.log.truncate_after(self.step)

    def check_finite(self) -> None:
        """Raise if a loss since the last check was not finite (one host read; every rank reads
        the same global loss, so all stop together). The weights have taken that step, so
        nothing more is saved: the last checkpoint is the last good one."""
        if bool(self.nonfinite):
            raise FloatingPointError(
                f"the loss was not finite at a step between {self.checked + 1} and {self.step}; "
                "the last checkpoint is kept (it predates that step)"
            )
        self.checked = self.step

    def check_finite_after(self, err: BaseException) -> None:
        """:meth:`check_finite` after ``err``: a non-finite loss before an error (an eigen-solver
        that fails on the NaN weights it left) is the error to report."""
        try:
            self.check_finite()
        except FloatingPointError as nonfinite:
            raise nonfinite from err

    def checkpoint(self, data_state: dict[str, Any] | None = None) -> None:
        """Save the state after ``step`` steps; ``data_state``: the data's state at that point
        when it has since moved on (a step that failed after drawing its views). Never after a
        non-finite loss (:meth:`check_finite`)."""
        self.check_finite()
        if self.ctx.is_main:
            state = {
                "config": config_to_dict(self.cfg),
                "model": self.method.state_dict(),
                "optimizer": self.opt.state_dict(),
                **(data_state if data_state is not None else self.data.state_dict()),
                "step": self.step,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "train_seconds": self.position()["train_seconds"],
                **({"online_optimizer": self.head_opt.state_dict()} if self.head_opt else {}),
                "data": self.identity,
                # how a torchvision/timm backbone was built (ViTs: img_size), for export
                "backbone": getattr(self.method.backbone, "spec", None),
            }
            with self.paused():
                save_checkpoint(state, self.run_path / "checkpoints" / "last.pt")

    def train_step(self) -> dict[str, Any]:
        """One optimiser step on the global batch's slice of this process. Nothing is read back
        from the device: the loss's finiteness is recorded there (:meth:`check_finite`), and
        the record holds device tensors, read by :meth:`log_step` on logging steps only."""
        batch = self.data.next_views()  # views (b / world, K, C, s, s) [, tokens]
        if self.memory_format is not None:  # channels-last per view: (b, K, s, s, C) in memory
            if isinstance(batch, tuple):
                batch = (_channels_last(batch[0]), batch[1])
            else:
                batch = _channels_last(batch)
        for group in self.opt.param_groups:
            group["lr"] = lr_at_step(self.cfg, self.step, self.steps_per_epoch)
        # FLOPs of forward + backward, counted on the first step of each process
        counter = FlopCounterMode(display=False) if self.step_flops is None else None
        with counter or contextlib.nullcontext():
            with (
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp),
                finiteness_deferred(),  # the losses' input checks: the loss is checked instead
            ):
                if self.labels is not None:  # the online head learns from these images' labels
                    labels = self.labels[self.data.index_on_device]
                    loss, terms, z = self.model(batch, labels)
                else:
                    loss, terms, z = self.model(batch)
            self.nonfinite.logical_or_(~torch.isfinite(loss.detach()))
            self.opt.zero_grad(set_to_none=True)
            if self.head_opt is not None:
                self.head_opt.zero_grad(set_to_none=True)
            (loss + terms["online_ce"] if "online_ce" in terms else loss).backward()
        if counter is not None:
            self.step_flops = counter.get_total_flops() * self.ctx.world_size
        self.opt.step()
        if self.head_opt is not None:
            self.head_opt.step()
        self.method.update_target(self.step, self.total_steps)
        self.step += 1
        self.step_in_epoch += 1
        with host_side():
            self.done = self.data.state_dict()
        return {"loss": loss.detach(), "terms": terms, "z": z}

    def trained_flops(self) -> int:
        """This process's training FLOPs so far (what a probe on rank 0 is weighed against)."""
        return self.step * (self.step_flops or 0) // self.ctx.world_size

    def position(self) -> dict[str, Any]:
        """Where the run is: step, epoch, cumulative training FLOPs and ``train_seconds``, the
        wall-clock time of training (monitor, probes and checkpoints excluded, across resumes)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "flops": self.step * (self.step_flops or 0),
            "train_seconds": round(self.trained_seconds(), 3),
        }

    def trained_seconds(self) -> float:
        """The training clock: wall-clock seconds of training, across resumes."""
        return self.seconds + time.perf_counter() - self.mark

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Work that is not training (the monitor, probes, checkpoints): off the training clock."""
        self.seconds += time.perf_counter() - self.mark
        try:
            yield
        finally:
            self.mark = time.perf_counter()

    def log_step(self, record: dict[str, Any], bar: tqdm, last: bool) -> None:
        """Every ``train.log_every`` steps, the first step and the run's ``last`` step (so that
        a run's final step and FLOPs are in its metrics whatever stopped it): check the losses'
        finiteness and log this step's values, the only host reads of a step. ``images_per_s``
        averages the steps since the previous logged one."""
        if not (self.step % self.cfg.train.log_every == 0 or self.step == 1 or last):
            return
        self.check_finite()
        now, (then, since) = time.perf_counter(), self.clock
        self.clock = (now, self.step)
        if not self.ctx.is_main:
            return
        loss = float(record["loss"])
        self.log.log(
            {
                **self.position(),
                "loss": loss,
                "lr": self.opt.param_groups[0]["lr"],
                "images_per_s": (self.step - since) * self.batch / max(now - then, 1e-9),
                **{f"loss/{name}": float(v.detach()) for name, v in record["terms"].items()},
                **_batch_metrics(record["z"]),
            }
        )
        bar.set_postfix(loss=f"{loss:.4g}")

    def end_epoch(self, monitor: Monitor | None, bar: tqdm) -> None:
        """Count the epoch; monitor every ``train.knn_every`` and checkpoint every
        ``train.checkpoint_every`` epochs, and after the last."""
        cfg = self.cfg
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.done = self.data.state_dict()
        last = self.epoch == cfg.train.epochs
        every = cfg.train.knn_every
        if monitor and every and (self.epoch % every == 0 or last) and self.ctx.is_main:
            with self.paused():
                values = monitor(self.method, self.splits, self.device)
            self.log.log({**self.position(), **values})
            bar.write(
                f"epoch {self.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            )
        if self.epoch % cfg.train.checkpoint_every == 0 or last:
            self.checkpoint()


def _load_splits(cfg: Config, ctx: DistContext) -> DataSplits:
    """Rank 0 decodes or indexes (and caches) the dataset first; the other ranks then read the
    cache."""
    splits = splits_of(cfg) if ctx.is_main else None
    if ctx.world_size > 1:
        dist.barrier()
    return splits or splits_of(cfg)


def _train_batches(
    cfg: Config, splits: DataSplits, ctx: DistContext, device: torch.device
) -> TrainBatches:
    """The pretraining images as batches of K views (memory or streamed)."""
    specs = dataset_preset(cfg.views.preset, *splits.normalisation, size=cfg.data.image_size)
    d = cfg.data
    layout = Layout(cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed, device)
    images = make_batches(
        splits.pretraining(),
        MultiViewAugment(specs, cfg.views.num_views),
        layout,
        view_size(cfg, splits),
        d.workers,
        d.prefetch,
        d.views_on,
    )
    if cfg.method.name not in MULTIMODAL:
        return images
    tokenize = build_tokenizer(cfg.text.context_length)
    return CaptionBatches(images, captions_of(cfg, splits), tokenize, layout)


def _pretrain(
    cfg: Config,
    ctx: DistContext,
    run_path: Path,
    state: dict[str, Any] | None,
    progress: bool,
    monitor: Monitor | None,
    probes: ProbeFactory | None,
) -> PretrainResult:
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    log = MetricsLog(run_path, enabled=ctx.is_main, tensorboard=cfg.train.tensorboard)
    t = _Trainer(cfg, ctx, run_path, log)
    if state is not None:
        t.restore(state)
    probe = probes(t.splits, t.device, run_path) if probes and ctx.is_main else None
    if probe is not None:
        probe.resume_at(t.step)

    def maybe_probe(last: bool = False) -> None:
        if probe is not None and probe.due(t.step, t.trained_flops(), last):
            with t.paused():
                log.log({**t.position(), **probe(t.method, t.step)})

    status, start_time = "finished", t.trained_seconds()  # this invocation's start
    show = progress and ctx.is_main
    desc = f"{cfg.method.name} {cfg.data.name}"
    bar = tqdm(total=t.total_steps, initial=t.step, disable=not show, desc=desc, **_BAR)
    with _StopFlag() as stop, _checkpoint_on_error(t), fixed_batch_sizes():
        while t.epoch < cfg.train.epochs and status == "finished":
            if t.step == 0:
                maybe_probe()
            t.data.start_epoch(t.epoch, t.step_in_epoch)
            t.method.train()
            while t.step_in_epoch < t.steps_per_epoch:
                record = t.train_step()
                bar.update(1)
                trained = t.trained_seconds() - start_time
                reason = _stop_reason(cfg, stop, t.step, trained, ctx, t.device)
                t.log_step(record, bar, last=bool(reason) or t.step == t.total_steps)
                maybe_probe()
                every = cfg.train.checkpoint_every_steps
                if every and t.step % every == 0:
                    t.checkpoint()
                if reason:
                    status = reason
                    break
            if t.step_in_epoch == t.steps_per_epoch:
                t.end_epoch(monitor, bar)
        if status != "finished":
            t.checkpoint()
        if status != "interrupted":
            maybe_probe(last=True)  # the trained network, whatever the schedule
    if probe is not None and probe.summary() and show:
        bar.write(str(probe.summary()))
    bar.close()
    log.close()
    return PretrainResult(run_path, status, t.step, t.method, t.splits, ctx)


_BAR: dict[str, Any] = {"unit": "step", "dynamic_ncols": True}


@contextlib.contextmanager
def _checkpoint_on_error(t: _Trainer) -> Iterator[None]:
    """On an exception inside the loop, save the last completed step before it propagates, so
    that a crash loses at most the step in progress; unless a loss since the last check was not
    finite (then that is the error, and the weights that took it are not saved)."""
    try:
        yield
    except FloatingPointError:  # the weights took a non-finite step: nothing to save
        raise
    except Exception as err:
        t.check_finite_after(err)
        try:
            t.checkpoint(t.done)
        except Exception as save_err:  # keep the original error in front
            print(f"the checkpoint could not be written either: {save_err}", file=sys.stderr)
        else:
            print(
                "the last completed step was checkpointed; --resume continues from it",
                file=sys.stderr,
            )
        raise


RESUME_KEYS = ("model", "optimizer", "step", "epoch", "step_in_epoch")  # + the data's state


def _stop_reason(
    cfg: Config,
    stop: _StopFlag,
    step: int,
    trained: float,
    ctx: DistContext,
    device: torch.device,
) -> str | None:
    """Why to stop after this step, if at all. ``trained``: the seconds this invocation has
    trained (the training clock: monitor, probes and checkpoints excluded), which
    ``train.time_budget_s`` bounds. ``train.max_steps`` is the same on every rank; a signal or
    the clock, seen by one rank, is agreed under DDP by one collective every ``train.log_every``
    steps (not every step: each is a host read), so all ranks stop at the same step, at most
    ``log_every − 1`` steps after the signal or the budget."""
    if cfg.train.max_steps and step >= cfg.train.max_steps:
        return "max_steps"
    if ctx.world_size > 1 and step % cfg.train.log_every:
        return None
    code = 0
    if stop.raised:
        code = 1
    elif cfg.train.time_budget_s and trained >= cfg.train.time_budget_s:
        code = 2
    if ctx.world_size > 1:
        flag = torch.tensor([code], device=device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
    return ("interrupted", "budget")[code - 1] if code else None


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
