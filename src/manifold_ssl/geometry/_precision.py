"""Working precision of spectra: float64, whatever the input precision and autocast.

* Nuclear norms (the MMCR hot path) form the small Gram matrix and its eigensystem in float64,
  whatever the input precision. A float32 Gram carries rounding errors of ``ε₃₂·σ_max²``, which
  swamp every singular value below ``√(n·ε₃₂)·σ_max`` (0.4% of ``σ_max`` at n = 128); the true
  gradient ``U Vᵀ`` gives those weakest directions full weight, so a float32 spectrum loses
  10–30% of the gradient on square or ill-conditioned batches. The Gram of a float32 matrix
  formed in float64 is (nearly) exact, and costs about what ``svdvals`` does in float32
  (``benchmarks/losses.py``).
* Matrix logarithms and log-determinants (Matrix-SSL, TCR, MEC) and the reported metrics run
  in float64 too: they are small (d×d) and sensitive near singular matrices.

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


def to_float64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)
