"""The composition layer: the one place a :class:`~manifold_ssl.config.Config` becomes a run.

* :mod:`.build`: the config turned into parts (splits, captions, views, batches, the method,
  the optimiser and schedule, the loop's settings);
* :mod:`.train`: :func:`train`, a config to a trained run directory (new or resumed), through
  the bare loop :func:`manifold_ssl.training.fit`;
* :mod:`.evaluate`: :func:`evaluate_run` (``eval.json``, ``report.md``), the kNN monitor,
  zero-shot classification;
* :mod:`.pipeline`: :func:`pretrain`, training with the monitor and probes the config asks for,
  and :func:`run`, the one run (train, new or resumed, then evaluate) of the CLI, the sweeps'
  trials and the Slurm jobs.

The CLI, the sweeps and the benchmarks call these; the libraries below (``data``, ``losses``,
``geometry``, ``models``, ``methods``, ``training``, ``evaluation``) never import the config.
"""

from .build import build_method_for, splits_of, view_size
from .evaluate import evaluate_run, final_percent_error, knn_monitor, zero_shot
from .pipeline import pretrain, run
from .train import train

__all__ = [
    "build_method_for",
    "evaluate_run",
    "final_percent_error",
    "knn_monitor",
    "pretrain",
    "run",
    "splits_of",
    "train",
    "view_size",
    "zero_shot",
]
