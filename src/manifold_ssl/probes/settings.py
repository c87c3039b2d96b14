"""The ``probes`` section of a run's configuration, defined beside the training-time geometry
that reads it (:class:`.training.TrainingProbe`), so that the probes never import the config."""

from __future__ import annotations

from dataclasses import dataclass

from .._keys import at_least, between, key, one_of

__all__ = ["COST_KEYS", "PROBE_METRICS", "ProbesConfig"]

#: Every scalar the training probe logs as ``probe/<key>``, with the label of its panel in
#: ``manifold-ssl plot RUN`` (the figures read this table; ``tests/training/
#: test_probes_during_training.py`` fails when the probe logs a key that is not here).
#: ``coherence/<group>/<within|across>`` has a figure of its own; :data:`COST_KEYS` are cost.
PROBE_METRICS: dict[str, str] = {
    "percent_error": "percent error",
    "effective_rank": "effective rank",
    "alignment": "alignment E‖u−u⁺‖²",
    "uniformity": "uniformity log E e^(−2‖u−v‖²)",
    "neighbours": "CLAMP neighbours per sub-manifold",
    "size": "CLAMP sub-manifold size",
    "capacity": "mean-field capacity α",
    "radius": "manifold radius",
    "dimension": "manifold dimension",
    "knn_accuracy": "kNN accuracy",
}
COST_KEYS = ("seconds", "flops")


@dataclass
class ProbesConfig:
    every_steps: int = key(
        0, "probe the geometry every this many steps (0: no probes)", at_least(0)
    )
    at_start: bool = key(True, "also probe the initial network (step 0)")
    max_cost: float = key(
        0.1,
        "probes take at most this fraction of the training FLOPs (counted, so the probed "
        "steps depend on the config alone); a probe that does not fit is skipped",
        between(0, 1, lo_open=True),
    )
    images: int = key(256, "probe images, a fixed subset of the validation split", at_least(2))
    views: int = key(0, "views per probe image (0: views.num_views)", at_least(0))
    seed: int = key(0, "seed of the probe images and their fixed views")
    capacity_manifolds: int = key(
        32, "augmentation manifolds for the mean-field capacity (0: skip it)", at_least(0)
    )
    knn_bank: int = key(
        2000, "training images in the probe's kNN bank (0: skip the kNN)", at_least(0)
    )
    coherence: bool = key(
        True, "gradient coherence within/across classes, with a shuffled-label control"
    )
    clamp_convention: str = key(
        "objective",
        "neighbour count: objective (as the run's CLAMP loss counts overlaps: its r_s, and the "
        "official form's reach capped at 1.5), paper (CLAMP Sec. 5, uncapped), official, or "
        "code (counts itself, radius without r_s)",
        one_of("objective", "paper", "official", "code"),
    )
