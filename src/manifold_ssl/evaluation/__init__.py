"""Evaluation of encoders: weighted kNN, linear probe, semi-supervised fine-tuning, the
protocol that runs them against baselines; and the analyses that need a model or recorded
data (layer features, gradient coherence, neural predictivity).

The names are loaded on first use (PEP 562), so that :mod:`manifold_ssl.config`, which holds
this package's settings (:class:`.settings.EvalConfig`), imports without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EvalConfig": "settings",
    "augmentation_manifolds": "features",
    "class_manifolds": "features",
    "evaluate_encoder": "protocol",
    "evaluate_features": "protocol",
    "evaluate_with_baselines": "protocol",
    "extract_features": "features",
    "finetune": "finetune",
    "gradient_coherence": "coherence",
    "knn_accuracy": "knn",
    "knn_predict": "knn",
    "layer_features": "features",
    "linear_probe": "linear",
    "neural_predictivity": "predictivity",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
