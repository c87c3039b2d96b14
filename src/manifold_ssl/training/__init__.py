"""Training: the pretraining loop, optimisers and schedules, checkpoints, process groups."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import PretrainResult, build_method_for, pretrain
from .optim import LARS, build_optimizer, lr_at_step

__all__ = [
    "LARS",
    "PretrainResult",
    "build_method_for",
    "build_optimizer",
    "load_checkpoint",
    "lr_at_step",
    "pretrain",
    "save_checkpoint",
]
