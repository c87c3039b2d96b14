"""Experiment tracking in Weights & Biases, beside ``metrics.jsonl`` (and TensorBoard).

``train.wandb=online|offline`` (extra ``manifold-ssl[wandb]``): every metrics line (losses, the
monitor, the probes; rank 0 only), the resolved config, and after the evaluation its results as
the run's summary and its figures. Offline runs are written under ``<run>/wandb/`` with no
network and synced later with ``wandb sync <run>/wandb/offline-run-*``. A run directory is one
W&B run (its id derives from the directory's name), so ``--resume`` continues it; a sweep's
trials share the group ``train.wandb_group`` (default: the sweep's directory name).

Why by hand: W&B's own integrations are for Lightning and Hugging Face trainers; this one is
the few calls of ``wandb.init``/``log``/``finish`` that a plain loop needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Tracking", "WandbRun"]


@dataclass
class Tracking:
    """Where a run is tracked besides its files: ``mode`` off | online | offline."""

    mode: str = "off"
    project: str = "manifold-ssl"
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def _run_id(run_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_dir.resolve().name)[:64]


class WandbRun:
    """One run directory's W&B run (created, or continued: ``resume="allow"``)."""

    def __init__(self, run_dir: Path, tracking: Tracking) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ValueError(
                f"train.wandb={tracking.mode} needs the wandb package "
                f"(pip install 'manifold-ssl[wandb]'): {err}"
            ) from None
        self._wandb = wandb
        self.run = wandb.init(
            project=tracking.project,
            group=tracking.group or None,
            name=run_dir.name,
            id=_run_id(run_dir),
            dir=str(run_dir),
            mode=tracking.mode,  # type: ignore[arg-type]  # checked by the config
            config=tracking.config,
            resume="allow",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, record: dict[str, Any]) -> None:
        """The numbers of one metrics line, at its ``step``."""
        values = {
            k: v
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)
        }
        if values:
            self.run.log(values, step=int(record.get("step", 0)))

    def summarise(self, values: dict[str, Any], images: Sequence[Path] = ()) -> None:
        """Set the run's summary (the evaluation's numbers) and log ``images`` (figures)."""
        self.run.summary.update(values)
        for path in images:
            if path.is_file():
                self.run.log({f"figures/{path.stem}": self._wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()
