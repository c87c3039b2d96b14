"""Training: the bare pretraining loop (:func:`fit`, on a method, its batches and
:class:`LoopSettings`), optimisers, checkpoints, process groups. A config becomes these parts
in :mod:`manifold_ssl.run` (:func:`manifold_ssl.run.train`)."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import LoopSettings, Parts, PretrainResult, fit, train_step
from .optim import LARS, make_optimizer, param_groups

__all__ = [
    "LARS",
    "LoopSettings",
    "Parts",
    "PretrainResult",
    "fit",
    "load_checkpoint",
    "make_optimizer",
    "param_groups",
    "save_checkpoint",
    "train_step",
]
