"""Frozen-feature evaluation: weighted kNN, linear probe, semi-supervised fine-tuning."""

from .features import extract_features
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_predict", "linear_probe"]
