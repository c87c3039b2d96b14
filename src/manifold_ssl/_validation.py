"""Argument checks shared by the objectives and the geometry functions.

Every check raises ``ValueError`` naming the argument and what was expected, so that a user
sees "z must be (B, K, D) ..." instead of a shape error deep inside a matrix product.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch


def check_tensor(
    x: object,
    name: str,
    ndim: int,
    layout: str,
    *,
    min_sizes: dict[int, int] | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a finite floating tensor with ``ndim`` dims; return it.

    ``layout`` is the expected layout in words, e.g. ``"(B, K, D)"``. ``min_sizes`` maps a
    dimension index to its smallest allowed size, with the layout letter used in the message.
    ``finite=False`` skips the finiteness pass for callers that check a reduction instead
    (see :func:`check_finite_via`).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    letters = layout.strip("()").replace(" ", "").split(",")
    for dim, smallest in (min_sizes or {}).items():
        if x.shape[dim] < smallest:
            letter = letters[dim] if dim < len(letters) else f"dim {dim}"
            raise ValueError(
                f"{name} must have {letter} >= {smallest} in {layout}, got shape {tuple(x.shape)}"
            )
    if finite:
        check_finite(x, name)
    return x


_DEFERRED = contextvars.ContextVar("finiteness_deferred", default=False)


@contextlib.contextmanager
def finiteness_deferred() -> Iterator[None]:
    """Skip the finiteness checks of tensors (each a host read, which stalls an accelerator)
    inside the block: for a caller that checks the result instead, as the training loop checks
    its loss on the device and reads the verdict at logging steps."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def check_finite(x: torch.Tensor, name: str) -> None:
    if _DEFERRED.get():
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def check_finite_via(reduction: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """Finiteness of ``x`` from a reduction of it (e.g. row norms), one pass cheaper.

    A NaN or Inf in ``x`` makes the reduction non-finite; only then is ``x`` scanned, to tell
    a non-finite input from finite values whose reduction overflowed.
    """
    if _DEFERRED.get():
        return
    if not bool(torch.isfinite(reduction).all()):
        check_finite(x, name)
        raise ValueError(f"{name} has values too large for {x.dtype} (their norms overflow)")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Check a real hyperparameter is finite and > 0 (or >= 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_order(order: int | None, name: str = "order") -> int | None:
    if order is None:
        return None
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"{name} must be a positive integer or None (exact), got {order!r}")
    return order


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
