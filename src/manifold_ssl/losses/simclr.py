"""SimCLR's NT-Xent (InfoNCE) for K >= 2 views, and the CLIP loss.

Chen et al., *A Simple Framework for Contrastive Learning of Visual Representations* (2020),
Eq. 1; in Matrix-SSL's notation Sec. 3.1, Eq. 1. Radford et al. (2021) for CLIP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_finite, check_positive
from ._common import (
    OpenCLIPSignature,
    Terms,
    check_pair,
    check_views,
    float32_inside,
    unit,
    zero_gradient,
)
from ._registry import register_loss

__all__ = ["CLIPLoss", "SimCLRLoss", "clip_loss", "simclr_loss"]


@float32_inside
def simclr_loss(
    z: torch.Tensor, temperature: float = 0.5, *, return_terms: bool = False
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """NT-Xent over K >= 2 views (Matrix-SSL Eq. 1; SimCLR Eq. 1).

    Every one of the B·K embeddings is an anchor; its positives are the K − 1 other views of
    the same image, its denominator every other embedding of the batch:

    ``ℓ_i = −(1/(K−1)) Σ_{p ∈ P(i)} log[ exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) ]``, ``s`` the cosine
    similarity, and the loss is the mean of ``ℓ_i`` over anchors. For K = 2 this is exactly the
    standard NT-Xent over 2B anchors.

    Args:
        z: (B, K, D) projector outputs; normalised here.
        temperature: τ > 0 (0.5 is SimCLR's CIFAR-10 setting).

    Distributed: keys are gathered from every rank (with gradient); each rank scores its own
    anchors against the global batch, and the mean is taken over the global anchors.
    """
    z = check_views(z, "z", min_views=2)
    temperature = check_positive(temperature, "temperature")
    b, k, d = z.shape
    zn = unit(z)
    keys, start = dist_utils.gather_with_offset(zn)  # (B_global, K, D)
    n_global = keys.shape[0]
    anchors = zn.reshape(b * k, d)
    logits = anchors @ keys.reshape(n_global * k, d).T / temperature  # (B·K, B_global·K)
    self_cols = (start * k + torch.arange(b * k, device=z.device)).unsqueeze(1)
    logits = logits.scatter(1, self_cols, float("-inf"))  # an anchor is not its own negative
    log_denominator = torch.logsumexp(logits, dim=1)  # (B·K,)
    # positives: the K − 1 other views of the same image, from the local (B, K, K) similarities
    pos = zn @ zn.transpose(1, 2) / temperature  # (B, K, K)
    pos_sum = (pos.sum(dim=2) - pos.diagonal(dim1=1, dim2=2)).reshape(b * k)
    per_anchor = log_denominator - pos_sum / (k - 1)
    loss = dist_utils.global_mean(per_anchor.sum(), b * k)
    if return_terms:
        return loss, {"positive_cosine": (pos_sum.detach() / (k - 1)).mean() * temperature}
    return loss


@register_loss("simclr")
class SimCLRLoss(nn.Module):
    """NT-Xent for K >= 2 views. See :func:`simclr_loss`. ``forward(z)``, ``z`` (B, K, D).

    Example:
        >>> loss_fn = SimCLRLoss(temperature=0.5)
        >>> z = torch.randn(8, 2, 16, requires_grad=True)  # (B, K, D)
        >>> loss = loss_fn(z)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "views"

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature")

    def forward(
        self, z: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return simclr_loss(z, self.temperature, return_terms=return_terms)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@float32_inside
def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float | torch.Tensor = 1 / 0.07,
) -> torch.Tensor:
    """Symmetric CLIP loss: the mean of image→text and text→image cross-entropies.

    ``image_features`` and ``text_features`` are (B, D) and normalised here; ``logit_scale``
    multiplies the cosine similarities (OpenCLIP passes ``logit_scale.exp()``; the default is
    the initial 1/0.07). Distributed: both modalities are gathered with gradient and every
    rank scores its own rows against the global batch (OpenCLIP's ``gather_with_grad``).
    """
    image_features, text_features = check_pair(
        image_features, text_features, ("image_features", "text_features")
    )
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
        check_finite(logit_scale, "logit_scale")
    else:
        logit_scale = check_positive(logit_scale, "logit_scale")
    img, txt = unit(image_features), unit(text_features)
    img_all, start = dist_utils.gather_with_offset(img)
    txt_all = dist_utils.gather(txt)
    labels = torch.arange(start, start + img.shape[0], device=img.device)
    per_row = F.cross_entropy(logit_scale * img @ txt_all.T, labels, reduction="sum")
    per_row = per_row + F.cross_entropy(logit_scale * txt @ img_all.T, labels, reduction="sum")
    return dist_utils.global_mean(per_row, img.shape[0]) / 2


@register_loss("clip")
class CLIPLoss(OpenCLIPSignature):
    """CLIP loss, a drop-in for OpenCLIP's ``ClipLoss``. See :func:`clip_loss`.

    ``forward(image_features, text_features, logit_scale=None, output_dict=False)`` takes the
    arguments an OpenCLIP training loop passes (``loss(**model_out, output_dict=True)``):
    ``logit_scale`` is the model's (already exponentiated) scale, or the fixed one given here
    when None; with ``output_dict`` the loss comes back as ``{"contrastive_loss": loss}``, the
    key OpenCLIP logs and sums.

    Example:
        >>> loss_fn = CLIPLoss()
        >>> image, text = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(image, text)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    def __init__(self, logit_scale: float = 1 / 0.07) -> None:
        super().__init__()
        self.logit_scale = check_positive(logit_scale, "logit_scale")

    key = "contrastive_loss"

    def objective(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float | None,
        logit_bias: torch.Tensor | None,
        want_terms: bool,
    ) -> tuple[torch.Tensor, Terms]:
        scale = self.logit_scale if logit_scale is None else logit_scale
        loss = clip_loss(image_features, text_features, scale) + zero_gradient(logit_bias)
        return loss, {"logit_scale": torch.as_tensor(scale).detach().clone()}
