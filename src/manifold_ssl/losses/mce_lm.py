"""Matrix cross-entropy for language models (Matrix-SSL App. B, Eq. 23)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_order, check_positive, check_tensor
from ..geometry._precision import full_precision, to_float64
from ..geometry.matrix_info import matrix_log
from ._common import Terms, at_least_float32, unit
from ._registry import register_loss

__all__ = ["MCELMLoss", "mce_lm_loss"]


def mce_lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    order: int | None = None,
    eps: float = 1e-4,
    ignore_index: int = -100,
    weight: float = 1.0,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """``CE(p, q) + MCE(P, Q)`` per token, averaged over the tokens (Matrix-SSL Eq. 23).

    For a token with target ``t`` and predicted distribution ``q = softmax(logits)`` over the
    V-word vocabulary, with unit token vectors ``e_i`` (rows of ``embeddings``, e.g. the LM
    head): ``P = e_t e_tᵀ`` (one-hot target) and ``Q = Σ_j q_j e_j e_jᵀ`` (d×d), and
    ``MCE(P, Q) = tr(−P log Q + Q) = −e_tᵀ log(Q) e_t + 1``. Eq. 23 sums over tokens; this
    function averages over the non-ignored tokens (as ``F.cross_entropy``), which only rescales.

    Args:
        logits: (N, V) next-token logits (flatten batch and sequence first).
        targets: (N,) target ids in [0, V), or ``ignore_index``.
        embeddings: (V, d) token representation vectors; L2-normalised here.
        order: Taylor order of ``log Q`` around I, or None (default) for the exact log.
        eps: ridge ``eps·I`` added to ``Q`` (default 1e-4). ``Q`` is singular, and the
            gradient of ``log Q`` infinite, whenever the prediction is confident (``q`` near
            one-hot), V < d, or the embeddings span fewer than d dimensions; the ridge keeps
            the loss finite there. ``eps=0`` is the paper's unregularised form.
        ignore_index: target id that contributes nothing (padding).
        weight: the MCE term's coefficient, ``CE + weight·MCE`` (Eq. 23: 1).

    Cost: one d×d matrix (and, with ``order=None``, one eigendecomposition) per token.
    """
    logits = check_tensor(logits, "logits", 2, "(N, V)", min_sizes={0: 1, 1: 2})
    embeddings = check_tensor(embeddings, "embeddings", 2, "(V, d)", min_sizes={0: 2, 1: 1})
    if embeddings.shape[0] != logits.shape[1]:
        raise ValueError(
            f"embeddings must have one row per vocabulary entry: logits has V = "
            f"{logits.shape[1]}, embeddings has {embeddings.shape[0]} rows"
        )
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be a (N,) tensor of ids for logits {tuple(logits.shape)}")
    if targets.is_floating_point():
        raise ValueError(f"targets must be integer ids, got dtype {targets.dtype}")
    keep = targets != ignore_index
    if bool(((targets[keep] < 0) | (targets[keep] >= logits.shape[1])).any()):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}) or equal ignore_index")
    eps = check_positive(eps, "eps", allow_zero=True)
    weight = check_positive(weight, "weight", allow_zero=True)
    order = check_order(order)

    logits, tgt = logits[keep], targets[keep]
    ce = F.cross_entropy(at_least_float32(logits), tgt, reduction="sum")
    with full_precision(logits):
        e = unit(to_float64(embeddings))  # (V, d)
        q = torch.softmax(to_float64(logits), dim=-1)  # (N, V)
        big_q = torch.einsum("nv,vd,ve->nde", q, e, e)  # (N, d, d)
        if eps > 0:
            big_q = big_q + eps * torch.eye(e.shape[1], dtype=e.dtype, device=e.device)
        e_t = e[tgt]  # (N, d)
        log_q = matrix_log(big_q, order)
        quad = torch.einsum("nd,nde,ne->n", e_t, log_q, e_t)
        mce = (-quad + torch.diagonal(big_q, dim1=-2, dim2=-1).sum(-1)).sum()
    n = int(keep.sum())
    loss = dist_utils.global_mean(ce + weight * mce.to(ce.dtype), max(n, 1))
    if return_terms:
        return loss, {"cross_entropy": ce.detach() / max(n, 1), "mce": mce.detach() / max(n, 1)}
    return loss


@register_loss("mce_lm")
class MCELMLoss(nn.Module):
    """Matrix-SSL App. B loss. ``forward(logits, targets, embeddings)``; see :func:`mce_lm_loss`.

    Example:
        >>> loss_fn = MCELMLoss()
        >>> logits, targets = torch.randn(6, 10, requires_grad=True), torch.randint(0, 10, (6,))
        >>> embeddings = torch.randn(10, 4)  # (V, d): one vector per token
        >>> loss = loss_fn(logits, targets, embeddings)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "lm"

    def __init__(
        self,
        order: int | None = None,
        eps: float = 1e-4,
        ignore_index: int = -100,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.order = check_order(order)
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.weight = check_positive(weight, "weight", allow_zero=True)
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        embeddings: torch.Tensor,
        *,
        return_terms: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return mce_lm_loss(
            logits,
            targets,
            embeddings,
            order=self.order,
            eps=self.eps,
            ignore_index=self.ignore_index,
            weight=self.weight,
            return_terms=return_terms,
        )
