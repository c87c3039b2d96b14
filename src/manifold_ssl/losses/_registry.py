"""The ``LOSSES`` registry: name -> ``nn.Module`` class.

Each registered class declares ``inputs``, the layout of its forward arguments, so that the
parametrised tests in ``tests/losses/test_registry.py`` exercise every entry for free:

* ``"views"``: ``forward(z)`` with ``z`` (B, K, D), K >= 2 views;
* ``"pair"``: ``forward(z1, z2)`` with both (B, D);
* ``"lm"``: ``forward(logits, targets, embeddings)`` (the language-model loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])


def register_loss(name: str) -> Callable[[T], T]:
    def wrap(cls: T) -> T:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        if getattr(cls, "inputs", None) not in ("views", "pair", "lm"):
            raise ValueError(f"{cls.__name__}.inputs must be 'views', 'pair' or 'lm'")
        LOSSES[name] = cls
        return cls

    return wrap


def build_loss(name: str, **kwargs: object) -> nn.Module:
    """Instantiate the registered loss ``name`` with hyperparameters ``kwargs``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
