"""Evaluation of encoders: weighted kNN, linear probe, semi-supervised fine-tuning, the
protocol that runs them against baselines; and the analyses that need a model or recorded
data (layer features, gradient coherence, neural predictivity).

The names are loaded on first use (PEP 562), so that :mod:`manifold_ssl.config`, which holds
this package's settings (:class:`.settings.EvalConfig`), imports without PyTorch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_WHERE = {
    "EvalConfig": "settings",
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
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
