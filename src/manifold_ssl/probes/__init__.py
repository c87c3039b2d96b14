"""Geometry probed during training on a fixed probe set (config section ``probes``): see
:mod:`.training` for what is measured and when.

The names are loaded on first use (PEP 562), so that :mod:`manifold_ssl.config`, which holds
this package's settings (:class:`.settings.ProbesConfig`), imports without PyTorch.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_WHERE = {
    "ProbesConfig": "settings",
    "TrainingProbe": "training",
    "alignment_uniformity": "training",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
