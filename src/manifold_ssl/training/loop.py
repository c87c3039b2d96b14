"""Pretraining: the loop on one screen (:func:`fit`), its steps in ``_Trainer``.

The loop takes parts, not a config: a method, its batches, the splits and
:class:`LoopSettings`; :mod:`manifold_ssl.run` makes them from a config
(:func:`manifold_ssl.run.train`) and passes a ``monitor`` and ``probes`` in. Evaluation is not
here: the run evaluates the result afterwards.

Batches come from :mod:`manifold_ssl.data.stream`: one uint8 tensor on the device
(``data.loader: memory``) or files decoded by DataLoader workers (``stream``); either way a
batch is a slice of a seeded permutation and its K views are drawn for the global batch, the
photometric part made on the device by :class:`~manifold_ssl.data.views.MultiViewAugment`.
The data source's state and the step counter are all the randomness, and they are
checkpointed, so ``--resume`` continues with exactly the losses an uninterrupted run would have
had, also mid-epoch. Under DDP every rank draws the global batch's permutation and view
parameters and takes its contiguous slice: the global batch, and hence the loss, equals one
process's.

GPU paths, all testable on the CPU: bf16 autocast (``amp``; ``amp_cpu`` on the CPU),
channels-last views and weights (``channels_last``), ``torch.compile`` (``compile``: the model
in place, or ``step``, the whole step as one graph: :mod:`manifold_ssl.training.whole_step`).

Every metrics line carries ``flops``, the cumulative training FLOPs (the compute axis of
Schaeffer et al. Fig. 4): forward + backward of backbone, heads and loss, counted once per
process by ``torch.utils.flop_counter.FlopCounterMode`` on its first step and multiplied by the
world size. Counted are the matrix products and convolutions; excluded are elementwise ops,
normalisation, the loss's eigen/SVD solves, augmentation, the optimiser and the EMA update.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from .._validation import finiteness_deferred
from ..data.remote import ShardError
from ..data.splits import DataSplits, check_same_data, data_identity
from ..data.stream import TrainBatches
from ..dispatch import host_side
from ..distributed import fixed_batch_sizes
from ..geometry.spectral import effective_rank, percent_error
from ..methods import MultimodalMethod, SSLMethod
from ..models.sync_bn import convert_sync_batchnorm
from .checkpoint import keep_checkpoint, resume_command, save_checkpoint
from .distributed import DistContext
from .metrics import MetricsLog
from .tracking import Tracking
from .whole_step import WholeStep

__all__ = [
    "RESUME_KEYS",
    "LoopSettings",
    "Method",
    "Parts",
    "PretrainResult",
    "fit",
    "train_step",
]

Method = SSLMethod | MultimodalMethod


@dataclass
class PretrainResult:
    run_dir: Path
    status: str  # "finished" | "interrupted" | "budget" | "max_steps"
    step: int
    method: Method
    splits: DataSplits
    ctx: DistContext  # this process's rank; the process group is gone when it returns


@dataclass
class LoopSettings:
    """What the loop needs besides its parts (the ``train`` section of a config, with the
    optimiser and schedule it asks for): see :func:`manifold_ssl.run.build.loop_settings`."""

    epochs: int
    batch_size: int  # global
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]  # over the method's parameters
    lr: Callable[[int, int], float]  # (step, steps per epoch) -> learning rate
    seed: int = 0  # of the online head's initialisation
    log_every: int = 10
    knn_every: int = 0  # epochs between monitor calls (0: never)
    checkpoint_every: int = 1  # epochs
    checkpoint_every_steps: int = 0
    keep_every: int = 0  # epochs between kept checkpoints/epoch-<N>.pt (0: none)
    keep_limit: int = 0  # the newest this many epoch-<N>.pt (0: all)
    keep_best: str = ""  # the monitor value whose best checkpoint is kept as best.pt
    max_steps: int = 0
    time_budget_s: float = 0.0
    amp: bool = True
    amp_cpu: bool = False
    channels_last: bool = False
    compile: bool | str = False  # True: the model in place; "step": the whole step (WholeStep)
    compile_backend: str = "inductor"
    sync_bn: bool = False
    online_linear: bool = True
    online_lr: float = 0.1
    num_threads: int = 0
    tensorboard: bool = False
    tracking: Tracking | None = None  # Weights & Biases
    record: dict[str, Any] = field(default_factory=dict)  # every checkpoint's "config"
    name: str = "pretrain"  # the progress bar's label


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Any,
    labels: torch.Tensor | None = None,
    head_opt: torch.optim.Optimizer | None = None,
    amp: bool = False,
    nonfinite: torch.Tensor | None = None,
    counter: FlopCounterMode | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimiser step of ``model`` (a method, or its DDP wrapper) on ``batch`` (views, or
    views and tokens), as the loop takes it and the benchmarks time it: the forward in bf16
    autocast with ``amp``, the losses' input checks deferred to the loss, the online head's
    cross-entropy on ``labels`` (its optimiser ``head_opt``) added to the backward, then the
    optimisers' steps. Nothing is read back: a non-finite loss sets ``nonfinite`` (a device
    flag) when given. ``counter`` counts the forward and backward FLOPs. The EMA target's
    update is the caller's (``method.update_target``). Returns ``(loss, terms, z)``."""
    device_type = next(model.parameters()).device.type
    with counter or contextlib.nullcontext():
        with (
            torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp),
            finiteness_deferred(),  # the losses' input checks: the loss is checked instead
        ):
            loss, terms, z = model(batch) if labels is None else model(batch, labels)
        if nonfinite is not None:
            nonfinite.logical_or_(~torch.isfinite(loss.detach()))
        opt.zero_grad(set_to_none=True)
        if head_opt is not None:
            head_opt.zero_grad(set_to_none=True)
        (loss + terms["online_ce"] if "online_ce" in terms else loss).backward()
    opt.step()
    if head_opt is not None:
        head_opt.step()
    return loss, terms, z


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


class _Trainer:
    """One run's data, model, optimiser and position; the steps of :func:`_pretrain`."""

    def __init__(self, parts: Parts, cfg: LoopSettings, run_path: Path, log: MetricsLog) -> None:
        self.cfg, self.ctx, self.run_path, self.log = cfg, parts.ctx, run_path, log
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        ctx, self.device = parts.ctx, parts.device
        self.splits, self.data, self.method = parts.splits, parts.batches, parts.method
        self.identity = data_identity(self.splits)  # recorded in every checkpoint
        self.preprocess = parts.preprocess
        self.batch = cfg.batch_size
        online = cfg.online_linear and self.splits.num_classes >= 2
        if online and isinstance(self.method, SSLMethod):
            self.method.attach_online_head(self.splits.num_classes, cfg.seed)
            labels = self.splits.pretraining().labels  # -1: unlabelled (ignored)
            self.labels: torch.Tensor | None = labels.to(self.device)
        else:
            self.labels = None
        self.method.to(self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else None
        if self.memory_format is not None:
            self.method.to(memory_format=self.memory_format)
        self.model: nn.Module = self.method
        if ctx.world_size > 1:
            if cfg.sync_bn:
                self.model = convert_sync_batchnorm(self.model, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile == "step" and ctx.world_size > 1:
            raise ValueError(
                "train.compile=step compiles one process's step; under DDP use "
                "train.compile=true (the model)"
            )
        if cfg.compile is True:  # in place: keeps the module (and its state dict keys) as it is
            self.model.compile(backend=cfg.compile_backend)
        self.whole: WholeStep | None = None  # train.compile=step, from the second step
        self.opt = cfg.optimizer(self.method)
        head = getattr(self.method, "online_head", None)
        self.head_opt = (
            torch.optim.SGD(head.parameters(), lr=cfg.online_lr, momentum=0.9, foreach=True)
            if head is not None
            else None
        )
        self.steps_per_epoch = self.data.num_images // self.batch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.step_flops: int | None = None
        cpu_amp = cfg.amp_cpu and self.device.type == "cpu"
        self.use_amp = cfg.amp and (self.device.type == "cuda" or cpu_amp)
        # set on the device when a step's loss is not finite; read at logging steps and
        # before each checkpoint (the only host reads of a training step)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.checked = 0  # the step up to which the losses are known finite
        self.clock = (time.perf_counter(), 0)  # (time, step) of the last logged step
        self.seconds, self.mark = 0.0, time.perf_counter()  # the training clock (position)
        # the data's state that goes with the completed steps: what a checkpoint written after
        # a failure in the step in progress (which has drawn its views already) must hold
        self.done = self.data.state_dict()
        self.best: float | None = None  # the best value of cfg.keep_best so far
        self.monitor_seconds = 0.0  # this invocation's time in the monitor

    def release(self) -> Method:
        """The trained method, with the DDP wrapper dropped and collected. A DDP wrapper sits
        in a reference cycle, so without the collection it (and the process group it holds)
        can outlive ``destroy_process_group`` into interpreter finalisation, where gloo's
        threads abort the process (SIGABRT, "terminate called without an active exception":
        a 2-process test failed so, once in many runs)."""
        self.model = self.method
        gc.collect()
        return self.method

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
        self.best = state.get("best")
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
                "config": self.cfg.record,
                "model": self.method.state_dict(),
                "optimizer": self.opt.state_dict(),
                **(data_state if data_state is not None else self.data.state_dict()),
                "step": self.step,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "train_seconds": self.position()["train_seconds"],
                **({"online_optimizer": self.head_opt.state_dict()} if self.head_opt else {}),
                "data": self.identity,
                "best": self.best,  # the best monitor value so far (train.keep_best)
                # how a torchvision/timm backbone was built (ViTs: img_size), for export
                "backbone": getattr(self.method.backbone, "spec", None),
                "preprocess": self.preprocess,  # the evaluation view, for export
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
        lr = self.cfg.lr(self.step, self.steps_per_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        labels = getattr(self.data, "labels_on_device", None)  # batches read with labels
        if labels is None and self.labels is not None:
            labels = self.labels[self.data.index_on_device]
        if self.whole is None and self.cfg.compile == "step" and self.step_flops is not None:
            self.whole = WholeStep(
                self.method,
                self.opt,
                self.head_opt,
                self.use_amp,
                self.nonfinite,
                self.cfg.compile_backend,
            )
        if self.whole is not None:  # the whole step, EMA included, as one graph
            tau = self.method.target_tau(self.step, self.total_steps)
            loss, terms, z = self.whole(batch, labels, lr, tau)
        else:
            # FLOPs of forward + backward, counted on the first step of each process
            counter = FlopCounterMode(display=False) if self.step_flops is None else None
            loss, terms, z = train_step(
                self.model,
                self.opt,
                batch,
                labels,
                self.head_opt,
                self.use_amp,
                self.nonfinite,
                counter,
            )
            if counter is not None:
                self.step_flops = counter.get_total_flops() * self.ctx.world_size
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
        """Every ``log_every`` steps, the first step and the run's ``last`` step (so that
        a run's final step and FLOPs are in its metrics whatever stopped it): check the losses'
        finiteness and log this step's values, the only host reads of a step. ``images_per_s``
        averages the steps since the previous logged one."""
        if not (self.step % self.cfg.log_every == 0 or self.step == 1 or last):
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
        """Count the epoch; monitor every ``knn_every`` and checkpoint every
        ``checkpoint_every`` epochs, and after the last."""
        cfg = self.cfg
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.done = self.data.state_dict()
        last = self.epoch == cfg.epochs
        every = cfg.knn_every
        values: dict[str, float] = {}
        if monitor and every and (self.epoch % every == 0 or last) and self.ctx.is_main:
            start = time.perf_counter()
            with self.paused():
                values = monitor(self.method, self.splits, self.device)
            seconds = time.perf_counter() - start
            self.monitor_seconds += seconds
            self.log.log({**self.position(), **values, "monitor_s": round(seconds, 3)})
            bar.write(
                f"epoch {self.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            )
        value = values.get(cfg.keep_best) if cfg.keep_best else None
        best = value is not None and (self.best is None or value > self.best)
        if best:
            self.best = value
        keep = bool(cfg.keep_every) and self.epoch % cfg.keep_every == 0
        if self.epoch % cfg.checkpoint_every == 0 or last or keep or best:
            self.checkpoint()
            if keep:
                self.keep(f"epoch-{self.epoch:04d}.pt")
            if best:
                self.keep("best.pt")

    def keep(self, name: str) -> None:
        """Keep the checkpoint just written as ``checkpoints/name`` (a hard link where the file
        system has them: no copy; ``last.pt`` is replaced, never written in place), and only the
        newest ``keep_limit`` of the ``epoch-<N>.pt``."""
        if not self.ctx.is_main:
            return
        with self.paused():
            keep_checkpoint(self.run_path / "checkpoints", name, self.cfg.keep_limit)


@dataclass
class Parts:
    """What a run trains: the method, its batches (on ``device``) and the splits, in this
    process ``ctx``."""

    method: Method
    batches: TrainBatches
    splits: DataSplits
    ctx: DistContext
    device: torch.device
    #: how the run makes un-augmented views (size, crop, statistics), recorded for export
    preprocess: dict[str, Any] | None = None


def _summarise(bar: Any, probe: Any, monitor_seconds: float, wall: float) -> None:
    """Print the probe's summary and what the kNN monitor cost this run (issue 28)."""
    if probe is not None and probe.summary():
        bar.write(str(probe.summary()))
    if monitor_seconds:
        bar.write(
            f"kNN monitor: {monitor_seconds:.1f} s, {100 * monitor_seconds / wall:.1f}% "
            f"of this run's {wall:.0f} s"
        )


def fit(
    parts: Parts,
    cfg: LoopSettings,
    run_path: Path,
    state: dict[str, Any] | None = None,
    progress: bool = True,
    monitor: Monitor | None = None,
    probes: ProbeFactory | None = None,
) -> PretrainResult:
    """Train ``parts`` as ``cfg`` says, logging and checkpointing into ``run_path``, from the
    checkpoint ``state`` when resuming; call ``monitor`` every ``knn_every`` epochs and the
    probe when due (neither if not given). See the module doc."""
    ctx = parts.ctx
    log = MetricsLog(run_path, ctx.is_main, cfg.tensorboard, cfg.tracking)
    t = _Trainer(parts, cfg, run_path, log)
    if state is not None:
        t.restore(state)
    probe = probes(t.splits, t.device, run_path) if probes and ctx.is_main else None
    if probe is not None:
        probe.resume_at(t.step)

    def maybe_probe(last: bool = False) -> None:
        if probe is not None and probe.due(t.step, t.trained_flops(), last):
            with t.paused():
                log.log({**t.position(), **probe(t.method, t.step)})

    start_time, wall_start = t.trained_seconds(), time.perf_counter()  # this invocation's start
    done = cfg.max_steps and t.step >= cfg.max_steps  # resumed from its last step: nothing to do
    status, show = "max_steps" if done else "finished", progress and ctx.is_main
    bar = tqdm(total=t.total_steps, initial=t.step, disable=not show, desc=cfg.name, **_BAR)
    with _StopFlag() as stop, _checkpoint_on_error(t, bar), fixed_batch_sizes():
        while t.epoch < cfg.epochs and status == "finished":
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
                every = cfg.checkpoint_every_steps
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
    if show:
        _summarise(bar, probe, t.monitor_seconds, time.perf_counter() - wall_start)
    bar.close()
    log.close()
    return PretrainResult(run_path, status, t.step, t.release(), t.splits, ctx)


_BAR: dict[str, Any] = {"unit": "step", "dynamic_ncols": True}


@contextlib.contextmanager
def _checkpoint_on_error(t: _Trainer, bar: tqdm) -> Iterator[None]:
    """On an exception inside the loop, save the last completed step before it propagates, so
    that a crash loses at most the step in progress; unless a loss since the last check was not
    finite (then that is the error, and the weights that took it are not saved). The resume
    line goes under the closed progress bar; after an unreadable shard it resumes skipping it."""
    try:
        yield
    except FloatingPointError:  # the weights took a non-finite step: nothing to save
        raise
    except Exception as err:
        bar.close()
        t.check_finite_after(err)
        try:
            t.checkpoint(t.done)
        except Exception as save_err:  # keep the original error in front
            print(f"the checkpoint could not be written either: {save_err}", file=sys.stderr)
        else:
            print(
                "the last completed step was checkpointed; resume with: "
                f"{resume_command(t.run_path, *_past(err))}",
                file=sys.stderr,
            )
        raise


def _past(err: Exception) -> tuple[str, ...]:
    """The resume overrides that get past ``err``: an unreadable shard is skipped."""
    return ("--data.shard_errors=skip",) if isinstance(err, ShardError) else ()


RESUME_KEYS = ("model", "optimizer", "step", "epoch", "step_in_epoch")  # + the data's state


def _stop_reason(
    cfg: LoopSettings,
    stop: _StopFlag,
    step: int,
    trained: float,
    ctx: DistContext,
    device: torch.device,
) -> str | None:
    """Why to stop after this step, if at all. ``trained``: the seconds this invocation has
    trained (the training clock: monitor, probes and checkpoints excluded), which
    ``time_budget_s`` bounds. ``max_steps`` is the same on every rank; a signal or the clock,
    seen by one rank, is agreed under DDP by one collective every ``log_every``
    steps (not every step: each is a host read), so all ranks stop at the same step, at most
    ``log_every − 1`` steps after the signal or the budget."""
    if cfg.max_steps and step >= cfg.max_steps:
        return "max_steps"
    if ctx.world_size > 1 and step % cfg.log_every:
        return None
    code = 0
    if stop.raised:
        code = 1
    elif cfg.time_budget_s and trained >= cfg.time_budget_s:
        code = 2
    if ctx.world_size > 1:
        flag = torch.tensor([code], device=device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
    return ("interrupted", "budget")[code - 1] if code else None
