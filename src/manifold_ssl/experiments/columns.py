"""The columns of a sweep's summary (``summary.csv``, ``summary.json``) beyond a trial's grid
point and shape: each reads one number from a finished trial's metrics lines or evaluation.
:func:`~manifold_ssl.experiments.sweep.summarise` writes every column of :data:`COLUMNS`, and the
sweep figures (:data:`~manifold_ssl.experiments.plots.SWEEP_FIGURES`) name the columns they
draw from this table, so that a new figure's numbers are summarised by adding them here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["COLUMNS", "TAIL_FRACTION", "Column", "tail_mean"]

#: The fraction of a run's logged steps whose mean is its final value of a training metric.
TAIL_FRACTION = 0.1


@dataclass(frozen=True)
class Column:
    """A summary column: ``read(records, results)`` from a trial's training metrics lines
    (those with a loss) and its evaluation's results (``eval.json``; None before it is
    evaluated); None when the trial has no such number."""

    read: Callable[[list[dict[str, Any]], dict[str, Any] | None], Any]
    help: str


def tail_mean(
    records: list[dict[str, Any]], key: str, fraction: float = TAIL_FRACTION
) -> float | None:
    """The mean of ``key`` over the last ``fraction`` of the records that log it."""
    values = [r[key] for r in records if key in r]
    if not values:
        return None
    tail = values[-max(1, round(fraction * len(values))) :]
    return float(sum(tail) / len(tail))


def _training(key: str, help: str) -> Column:
    return Column(lambda records, results: tail_mean(records, key), help)


def _evaluated(row: str, key: str, help: str) -> Column:
    def read(records: list[dict[str, Any]], results: dict[str, Any] | None) -> Any:
        return (results or {}).get(row, {}).get(key) if results is not None else None

    return Column(read, help)


COLUMNS: dict[str, Column] = {
    "percent_error": _training(
        "percent_error", "pretraining percent error (Schaeffer Eq. 4), last 10% of steps"
    ),
    "centroid_norm_complement": _training(
        "centroid_norm_complement", "1 − ‖μ‖² of the training centroids, last 10% of steps"
    ),
    "effective_rank": _training("effective_rank", "effective rank of the embeddings, last 10%"),
    "loss": _training("loss", "training loss, last 10% of steps"),
    "knn_test_accuracy": _evaluated("pretrained", "knn_test_accuracy", "kNN test top-1"),
    "linear_test_accuracy": _evaluated(
        "pretrained", "linear_test_accuracy", "linear-probe test top-1"
    ),
    "zero_shot_test_accuracy": _evaluated(
        "zero_shot", "zero_shot_test_accuracy", "zero-shot test top-1 (multimodal)"
    ),
}
