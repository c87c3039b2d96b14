"""Spectra are computed in float64 with autocast off, whatever the caller's precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SPECTRAL_DTYPE = torch.float64


@contextlib.contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """Disable autocast for ``x``'s device type inside the block (a no-op where it is off)."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def to_spectral(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype spectra are computed in (float64)."""
    return x.to(SPECTRAL_DTYPE)
