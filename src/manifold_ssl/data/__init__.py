"""Datasets as uint8 tensor caches or indexed files, validation splits, training batches (from
memory or streamed) and batched multi-view augmentation."""

from .datasets import DATASETS, ImageTensors, load_dataset
from .files import ImageFiles, index_images, index_shards
from .splits import DataSplits, as_tensors, load_splits, stratified_split
from .stream import Layout, StreamBatches, TensorBatches, make_batches
from .synthetic import write_image_folder
from .views import PRESETS, AugmentSpec, MultiViewAugment, preset

__all__ = [
    "DATASETS",
    "PRESETS",
    "AugmentSpec",
    "DataSplits",
    "ImageFiles",
    "ImageTensors",
    "Layout",
    "MultiViewAugment",
    "StreamBatches",
    "TensorBatches",
    "as_tensors",
    "index_images",
    "index_shards",
    "load_dataset",
    "load_splits",
    "make_batches",
    "preset",
    "stratified_split",
    "write_image_folder",
]
