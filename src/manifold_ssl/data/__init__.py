"""Datasets as uint8 tensor caches, validation splits, and batched multi-view augmentation."""

from .datasets import DATASETS, ImageTensors, load_dataset
from .splits import DataSplits, load_splits, stratified_split
from .views import PRESETS, AugmentSpec, MultiViewAugment, preset

__all__ = [
    "DATASETS",
    "PRESETS",
    "AugmentSpec",
    "DataSplits",
    "ImageTensors",
    "MultiViewAugment",
    "load_dataset",
    "load_splits",
    "preset",
    "stratified_split",
]
