"""Working precision of spectra: never below float32, whatever autocast does.

* Nuclear norms (the MMCR hot path) run in the input's precision promoted to at least float32:
  float32 in, float32 spectrum, float64 in, float64 spectrum. Their rank tolerance follows that
  precision (see :func:`manifold_ssl.geometry.spectral.nuclear_norm_from_gram`).
* Matrix logarithms and log-determinants (Matrix-SSL, TCR, MEC) and the reported metrics run
  in float64: they are small (d×d) and sensitive near singular matrices.

Autocast is switched off inside these blocks, so a bf16/fp16 forward pass never reaches an
eigensolver in half precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """Disable autocast for ``x``'s device type inside the block (a no-op where it is off)."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def spectral_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 input, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_spectral(x: torch.Tensor) -> torch.Tensor:
    """``x`` promoted to at least float32 (half and bfloat16 become float32)."""
    return x.to(spectral_dtype(x))


def to_float64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)
