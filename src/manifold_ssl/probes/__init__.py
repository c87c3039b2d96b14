"""Geometry probed during training on a fixed probe set (config section ``probes``): see
:mod:`.training` for what is measured and when.

The names are loaded on first use (PEP 562), so that :mod:`manifold_ssl.config`, which holds
this package's settings (:class:`.settings.ProbesConfig`), imports without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ProbesConfig": "settings",
    "TrainingProbe": "training",
    "alignment_uniformity": "training",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
