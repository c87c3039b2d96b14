"""The schedules every loop here uses: one cosine, one linear warm-up.

Pretraining's learning rate (:func:`manifold_ssl.training.optim.lr_at_step`), BYOL's EMA
coefficient (:func:`manifold_ssl.models.heads.cosine_momentum`), the fine-tuning and augmented
probes' heads and the language model all call these two functions, so that a change of
convention happens in one place. Plain floats: a schedule is host arithmetic, set on the
optimiser's param groups, never a device tensor.

Why by hand: ``torch.optim.lr_scheduler`` keeps the value in the scheduler's state and moves
it by ``step()`` calls; here the value is a function of the step alone, so an exact resume needs
no scheduler state and an EMA coefficient (not a learning rate) uses the same curve.
"""

from __future__ import annotations

import math

__all__ = ["cosine", "warmup_cosine"]


def cosine(progress: float, start: float, end: float = 0.0) -> float:
    """``end + (start − end)·(1 + cos(π·p))/2`` with ``p = progress`` clipped to [0, 1]: from
    ``start`` at ``p = 0`` to ``end`` at ``p = 1`` (``CosineAnnealingLR``'s curve; ``end > start``
    rises, as BYOL's EMA coefficient)."""
    p = min(1.0, max(0.0, progress))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.0) -> float:
    """Linear warm-up ``peak·(step + 1)/warmup`` over the first ``warmup`` steps, then
    :func:`cosine` from ``peak`` to ``floor`` over the remaining ``total − warmup`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine((step - warmup) / max(1, total - warmup), peak, floor)
