"""Evaluation of encoders: weighted kNN, linear probe, semi-supervised fine-tuning, the
protocol that runs them against baselines; and the analyses that need a model or recorded
data (layer features, gradient coherence, neural predictivity)."""

from .coherence import gradient_coherence
from .features import augmentation_manifolds, class_manifolds, extract_features, layer_features
from .finetune import finetune
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe
from .predictivity import neural_predictivity
from .protocol import evaluate_encoder, evaluate_features, evaluate_with_baselines

__all__ = [
    "augmentation_manifolds",
    "class_manifolds",
    "evaluate_encoder",
    "evaluate_features",
    "evaluate_with_baselines",
    "extract_features",
    "finetune",
    "gradient_coherence",
    "knn_accuracy",
    "knn_predict",
    "layer_features",
    "linear_probe",
    "neural_predictivity",
]
