"""Train with OpenCLIP's own trainer and a manifold-ssl objective (Schaeffer et al. Sec. 7).

``manifold-ssl openclip --loss multimodal_mmcr [--lambd 0] [--model-config tiny.json] --
<open_clip_train arguments>`` runs ``open_clip_train.main.main`` unchanged, except that the loss
its ``create_loss(args)`` returns is ours (:func:`openclip_loss`): OpenCLIP's data pipelines,
models, schedules, checkpoints, logging and distributed launch (``torchrun``) stay OpenCLIP's.
Both losses take exactly what OpenCLIP's training step passes, ``loss(**model_out,
output_dict=True)``, and return the dict it sums; MMCR gives ``logit_scale`` (and a SigLIP
model's ``logit_bias``) a zero gradient, so DDP without ``find_unused_parameters`` finds every
parameter used. Needs ``pip install 'manifold-ssl[multimodal]'``.

Written as a launcher around OpenCLIP's ``main`` rather than a copy of its loop: OpenCLIP keeps
the trainer, and we keep only the objective.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .losses import CLIPLoss, MultimodalMMCRLoss

__all__ = ["OPENCLIP_LOSSES", "main", "openclip_loss"]

#: The objectives OpenCLIP's trainer can take here (their names in ``manifold_ssl.losses.LOSSES``).
OPENCLIP_LOSSES = ("multimodal_mmcr", "clip")


def openclip_loss(name: str, lambd: float = 0.0) -> nn.Module:
    """The loss module OpenCLIP's trainer calls: ``multimodal_mmcr`` or ``clip``."""
    if name == "multimodal_mmcr":
        return MultimodalMMCRLoss(lambd)
    if name == "clip":
        return CLIPLoss()
    raise ValueError(f"--loss must be one of {list(OPENCLIP_LOSSES)}, got {name!r}")


def _import_trainer() -> Any:
    try:
        import open_clip
        import open_clip_train.main as trainer
    except ImportError as err:
        raise ImportError(
            f"OpenCLIP's trainer is not installed ({err}): pip install 'manifold-ssl[multimodal]'"
        ) from None
    return open_clip, trainer


def main(argv: Sequence[str] | None = None) -> int:
    """Parse our options, hand the rest (after ``--``) to ``open_clip_train.main.main``."""
    parser = argparse.ArgumentParser(
        prog="manifold-ssl openclip",
        description="OpenCLIP's trainer (open_clip_train) with a manifold-ssl loss. Arguments "
        "after -- go to open_clip_train unchanged, e.g. -- --dataset-type synthetic --model "
        "ViT-B-32 --batch-size 256.",
    )
    parser.add_argument("--loss", choices=OPENCLIP_LOSSES, default="multimodal_mmcr")
    parser.add_argument(
        "--lambd",
        "--lmbda",  # its old name
        dest="lambd",
        type=float,
        default=None,
        help="MMCR's local nuclear norm weight λ (default 0)",
    )
    parser.add_argument(
        "--model-config",
        action="append",
        default=[],
        help="an OpenCLIP model config JSON (or folder of them) to register first",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then open_clip_train arguments")
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    # bad options fail here, before OpenCLIP builds a model or writes its logs/
    if not rest:
        parser.error(
            "give open_clip_train's arguments after --, e.g. -- --dataset-type synthetic "
            "--model RN50 --batch-size 64"
        )
    if args.lambd is not None and args.loss != "multimodal_mmcr":
        parser.error(f"--lambd is multimodal MMCR's local term; --loss {args.loss} has none")
    for path in args.model_config:
        if not Path(path).exists():
            parser.error(f"--model-config {path} does not exist")
    loss = openclip_loss(args.loss, args.lambd or 0.0)
    if "--logs" not in rest and not any(a.startswith("--logs=") for a in rest):
        rest = [*rest, "--logs", "runs/openclip"]  # beside manifold-ssl's runs, not ./logs
    open_clip, trainer = _import_trainer()
    for path in args.model_config:
        open_clip.add_model_config(path)
    trainer.create_loss = lambda _args: loss
    with _cpu_ddp(), _torch_logs_quiet(trainer):
        try:
            result = trainer.main(rest)
        except AssertionError as err:  # open_clip_train checks its arguments with assert
            raise ValueError(f"open_clip_train: {err}") from None
    return int(result or 0)


@contextlib.contextmanager
def _torch_logs_quiet(trainer: Any) -> Iterator[None]:
    """open_clip_train's ``setup_logging`` sets the root logger and every logger that exists
    to INFO, which puts PyTorch's own INFO lines (dynamo, fake-tensor statistics at exit) on
    the console: after it, PyTorch's loggers go back to WARNING. The root logger's level and
    handlers are restored when the run ends (an in-process caller keeps its logging)."""
    setup = trainer.setup_logging
    root_level, root_handlers = logging.root.level, list(logging.root.handlers)

    def setup_then_quiet(*args: Any, **kwargs: Any) -> None:
        setup(*args, **kwargs)
        for name in list(logging.root.manager.loggerDict):
            if name == "torch" or name.startswith("torch."):
                logging.getLogger(name).setLevel(logging.WARNING)

    trainer.setup_logging = setup_then_quiet
    try:
        yield
    finally:
        trainer.setup_logging = setup
        logging.root.setLevel(root_level)
        logging.root.handlers[:] = root_handlers


@contextlib.contextmanager
def _cpu_ddp() -> Iterator[None]:
    """open_clip_train wraps the model in ``DistributedDataParallel(model,
    device_ids=[device])``, which DDP refuses for a CPU device; for the trainer's run, a CPU
    module is wrapped without ``device_ids`` (what DDP expects on the CPU), so that several gloo
    processes train on CPUs (tests, CPU clusters). CUDA runs are untouched."""
    original = torch.nn.parallel.DistributedDataParallel

    class CPUFriendlyDDP(original):  # type: ignore[misc, valid-type]
        def __init__(self, module: nn.Module, *args: Any, **kwargs: Any) -> None:
            ids = kwargs.get("device_ids")
            if ids and all(torch.device(d).type == "cpu" for d in ids):
                kwargs.pop("device_ids")
            super().__init__(module, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CPUFriendlyDDP  # type: ignore[misc]
    try:
        yield
    finally:
        torch.nn.parallel.DistributedDataParallel = original  # type: ignore[misc]
