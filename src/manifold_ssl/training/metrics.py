"""JSON-lines metrics (and TensorBoard and Weights & Biases, optionally), written by rank 0."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..runinfo import atomic_write_text, read_metrics
from .tracking import Tracking, WandbRun

__all__ = ["MetricsLog", "read_metrics"]


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool = True,
        tensorboard: bool = False,
        tracking: Tracking | None = None,
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        use_wandb = enabled and tracking is not None and tracking.mode != "off"
        self.wandb = WandbRun(run_dir, tracking) if use_wandb and tracking else None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError(
                    f"train.tensorboard needs the tensorboard package ({err})"
                ) from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop records logged after the checkpoint's step (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
