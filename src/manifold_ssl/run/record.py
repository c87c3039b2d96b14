"""A run directory as a record: its config, its checkpoints, its metrics, and the one rule that
ties a checkpoint to the run's ``config.yaml``.

Layout: ``config.yaml`` (the resolved config), ``meta.json`` (version, git hash, seed),
``metrics.jsonl``, ``checkpoints/<name>.pt``, ``eval*.json`` and ``report*.md``. The rule: a
checkpoint belongs to the run when its config differs from ``config.yaml`` at most in what a
resume may change (:data:`manifold_ssl.config.RESUME_FREE_KEYS`): a run stopped by
``train.max_steps`` and resumed is the same run. ``--resume``, ``evaluate``, ``analyze`` and
``export`` all read runs through :class:`RunDir`.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch

from ..config import RESUME_FREE_KEYS, Config, config_from_dict, differing_keys, read_run_config
from ..data.splits import DataSplits, check_same_data
from ..runinfo import read_metrics, run_lock
from ..training.checkpoint import load_checkpoint
from ..training.loop import RESUME_KEYS, Method
from .build import build_method_for, view_size

__all__ = ["RunDir", "checkpoint_name", "method_from_state"]


def checkpoint_name(name: str) -> str:
    """The file name of a kept checkpoint as a user writes it: ``.pt`` added when missing and
    the epoch written as the loop writes it (``epoch-1`` → ``epoch-0001.pt``), so that one
    checkpoint has one name in every file named after it.

    >>> checkpoint_name("best"), checkpoint_name("epoch-7"), checkpoint_name("epoch-0012.pt")
    ('best.pt', 'epoch-0007.pt', 'epoch-0012.pt')
    """
    stem = name.removesuffix(".pt")
    epoch = re.fullmatch(r"epoch-(\d+)", stem)
    return f"epoch-{int(epoch[1]):04d}.pt" if epoch else f"{stem}.pt"


class RunDir:
    """The run directory ``path`` (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def checkpoint_file(self, name: str = "last.pt") -> Path:
        """``checkpoints/<name>`` (:func:`checkpoint_name`: ``best``, ``epoch-5``)."""
        return self.path / "checkpoints" / checkpoint_name(name)

    def kept(self) -> list[str]:
        """The checkpoint files of the run, by name."""
        return sorted(p.name for p in (self.path / "checkpoints").glob("*.pt"))

    def config(self, without: tuple[str, ...] = ()) -> Config:
        """``config.yaml`` (:func:`~manifold_ssl.config.read_run_config`)."""
        return read_run_config(self.path, without)

    def existing_checkpoint(self, name: str = "last.pt") -> Path:
        """:meth:`checkpoint_file` of ``name``; an error listing the kept checkpoints when the
        run has none of that name (every command that takes a checkpoint name says which
        exist)."""
        path = self.checkpoint_file(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"no checkpoint {path.name} in {self.path}/checkpoints (kept: "
                f"{', '.join(self.kept()) or 'none'})"
            )
        return path

    def checkpoint(self, name: str = "last.pt", map_location: Any = None) -> dict[str, Any]:
        return load_checkpoint(self.existing_checkpoint(name), map_location=map_location)

    def trained(self, name: str = "last.pt") -> tuple[Config, dict[str, Any]]:
        """The config checkpoint ``name`` was trained with, and the checkpoint; an error when
        it belongs to another config than the run's (the rule of the module doc)."""
        cfg = self.config()
        state = self.checkpoint(name)
        trained = config_from_dict(state["config"])
        changed = differing_keys(trained, cfg, RESUME_FREE_KEYS)
        if changed:
            raise ValueError(
                f"checkpoint {name} was written with other values of {changed} than "
                f"{self.path}/config.yaml"
            )
        return trained, state

    def resume_state(self, cfg: Config) -> dict[str, Any]:
        """The last checkpoint, checked to be a training checkpoint of ``cfg`` (up to what a
        resume may change)."""
        state = self.checkpoint(map_location="cpu")
        missing = sorted(set(RESUME_KEYS) - set(state))
        if missing:
            raise ValueError(
                f"checkpoint in {self.path} cannot resume training: it lacks {missing} "
                "(a weights-only checkpoint can be evaluated or analysed, not resumed)"
            )
        changed = differing_keys(config_from_dict(state["config"]), cfg, RESUME_FREE_KEYS)
        if changed:
            raise ValueError(
                f"checkpoint in {self.path} was written with other values of {changed}; "
                f"resume with the run's own config (manifold-ssl pretrain --resume "
                f"{self.path}), changing at most {', '.join(RESUME_FREE_KEYS)}"
            )
        return state

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while reading a run that may still be training (its checkpoint moves)."""
        return run_lock(self.path)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path / "metrics.jsonl")


def method_from_state(
    cfg: Config,
    state: dict[str, Any] | None,
    splits: DataSplits,
    device: torch.device | str = "cpu",
    what: str = "evaluate",
) -> Method:
    """The method of a run rebuilt from its config and checkpoint ``state`` (``None``: at its
    initialisation, ``train.seed``), on ``device``; ``what`` refuses data that changed since the
    checkpoint was written (names the command in the error)."""
    check_same_data(state.get("data") if state else None, splits, what)
    method = build_method_for(cfg, splits.channels, image_size=view_size(cfg, splits))
    if state is not None:
        method.load_state_dict(state["model"])
    return method.to(device)
