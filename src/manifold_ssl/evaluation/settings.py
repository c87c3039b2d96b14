"""The ``eval`` section of a run's configuration, defined beside the evaluation that reads it:
the protocol (:mod:`.protocol`), the augmented probe (:mod:`.augmented`) and fine-tuning
(:mod:`.finetune`) take it as their settings, and :class:`manifold_ssl.config.Config` holds it,
so that the evaluation never imports the config."""

from __future__ import annotations

from dataclasses import dataclass

from .._keys import above, at_least, between, key, list_of, non_empty_list_of, one_of

__all__ = ["EvalConfig"]


def _dataset_name(name: str) -> str | None:
    from ..data.datasets import DATASETS  # at check time: the settings import no PyTorch

    return None if name in DATASETS else f"one of {sorted(DATASETS)}"


@dataclass
class EvalConfig:
    knn_k: int = key(200, "neighbours of the weighted kNN", at_least(1))
    knn_temperature: float = key(0.1, "temperature of the kNN weights", above(0))
    linear_probe: bool = key(True, "train a linear probe on frozen features")
    linear_weight_decays: list[float] = key(
        help="weight decays tried by the linear probe (chosen on validation)",
        check=non_empty_list_of(at_least(0)),
        factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    )
    linear_max_iter: int = key(300, "iterations of the linear probe per weight decay", at_least(1))
    linear_tolerance: float = key(
        1e-4, "the probe's L-BFGS stops when its preconditioned gradient is below this", above(0)
    )
    linear_precision: str = key(
        "float32", "precision of the features in the probe's passes", one_of("float32", "float64")
    )
    baselines: bool = key(True, "random-init encoder and raw pixels next to the result")
    semi_supervised: list[float] = key(
        help="label fractions to fine-tune on, e.g. [0.01, 0.1]",
        check=list_of(between(0, 1, lo_open=True)),
        factory=list,
    )
    augmented_probe: bool = key(
        False, "also the papers' probe on augmented images (Yerxa App. G; row augmented_probe)"
    )
    augmented_epochs: int = key(50, "augmented probe: epochs", at_least(1))
    augmented_batch: int = key(1024, "augmented probe: batch size", at_least(1))
    augmented_lr: float = key(0.1, "augmented probe: Adam learning rate (cosine decay)", above(0))
    augmented_wd: float = key(1e-6, "augmented probe: Adam weight decay", at_least(0))
    zero_shot_data: str | None = key(
        None,
        "zero-shot transfer of a multimodal run to another labelled data set (a data.name: "
        "cifar10, cifar100, stl10, imagefolder, webdataset), prompted with the templates "
        "ensembled",
        lambda v: None if v is None else _dataset_name(v),
    )
    zero_shot_path: str | None = key(None, "zero_shot_data's data.path (imagefolder, webdataset)")
    zero_shot_split: str = key("test", "zero_shot_data's split evaluated")
    zero_shot_class_names: list[str] = key(
        help="zero_shot_data's class words in label order (default: its class names as words)",
        factory=list,
    )
    finetune_epochs: int = key(20, "fine-tuning epochs", at_least(1))
    finetune_lr: float = key(0.1, "fine-tuning learning rate of the head (backbone: /10)", above(0))
