"""Image–text methods: an image tower and a text tower trained on caption pairs.

Schaeffer et al. (2024), Sec. 7 and App. C: multimodal MMCR treats an image and its caption as
two views of one object, ``−‖C‖*`` of the centroids ``(u_b + v_b) / 2`` of the normalised image
and text embeddings; CLIP (Radford et al. 2021, as OpenCLIP trains it) is the symmetric
cross-entropy of the cosine logits times a learned scale ``exp(t)``, ``t`` initialised at
log(1/0.07) and clamped at log 100 after each optimiser step (OpenCLIP's ``train_one_epoch``).

:class:`MultimodalMethod` has the interface of :class:`~manifold_ssl.methods.SSLMethod`
(``backbone``, ``forward(batch) -> (loss, terms, z)``, ``update_target``), so the training
loop, checkpoints, exact resume, DDP and the FLOPs count serve it unchanged: the batch is
``(views (B, 1, C, H, W), tokens (B, L))`` and ``z`` the detached (B, 2, D) stack of image and
text embeddings, whose centroids give the logged percent error and ``1 − ‖μ‖²`` (Fig. 7).
The image tower is any backbone here with the ``model.projector`` head (its last width is the
embedding dimension D); the text tower is OpenCLIP's (:mod:`manifold_ssl.models.text`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import LOSSES
from ..models.heads import mlp_from_spec

__all__ = ["MULTIMODAL", "MultimodalMethod"]

#: method name -> loss name in LOSSES
MULTIMODAL: dict[str, str] = {"multimodal_mmcr": "multimodal_mmcr", "clip": "clip"}

_MAX_LOGIT_SCALE = math.log(100.0)


class MultimodalMethod(nn.Module):
    """Image tower (backbone + projector) + text tower + objective; see the module doc."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        projector: str,
        text: nn.Module,
        loss_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if name not in MULTIMODAL:
            raise ValueError(
                f"unknown multimodal method {name!r}; expected one of {sorted(MULTIMODAL)}"
            )
        self.name = name
        self.backbone = backbone
        self.projector = mlp_from_spec(backbone.out_dim, projector)  # type: ignore[arg-type]
        self.text = text
        kwargs = dict(loss_kwargs or {})
        self.logit_scale: nn.Parameter | None = None
        if name == "clip":  # learned temperature, initialised at the loss's fixed scale
            init = float(kwargs.get("logit_scale", 1 / 0.07))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(init)))
        try:
            self.loss_fn = LOSSES[MULTIMODAL[name]](**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"method.loss: bad keyword for the {name} loss: {err}") from None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings of normalised images (B, C, H, W)."""
        return F.normalize(self.projector(self.backbone(images)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings of token ids (B, L)."""
        return F.normalize(self.text(tokens), dim=-1)

    def forward(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(
                f"method {self.name} takes (views, tokens) batches of image-caption pairs; "
                "set text.captions (and views.num_views: 1)"
            )
        views, tokens = batch
        if views.ndim != 5 or views.shape[1] != 1:
            raise ValueError(
                f"views must be (B, 1, C, H, W), one image view per caption, got "
                f"{tuple(views.shape)}"
            )
        image = self.projector(self.backbone(views[:, 0]))  # (B, D)
        text = self.text(tokens)  # (B, D)
        scale = self.logit_scale.exp() if self.logit_scale is not None else None
        loss = self.loss_fn(image, text, logit_scale=scale)
        terms = {"logit_scale": scale.detach()} if scale is not None else {}
        return loss, terms, torch.stack([image, text], dim=1).detach()

    def target_tau(self, step: int, total_steps: int) -> float:
        """No EMA target: 1.0 (the interface of :class:`~manifold_ssl.methods.SSLMethod`)."""
        return 1.0

    @torch.no_grad()
    def after_step(self, tau: float | torch.Tensor = 1.0) -> None:
        """After an optimiser step: clamp CLIP's log scale to [0, log 100] (OpenCLIP)."""
        if self.logit_scale is not None:
            self.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)

    def update_target(self, step: int, total_steps: int) -> None:
        """After an optimiser step: clamp CLIP's log scale to [0, log 100] (OpenCLIP)."""
        self.after_step()
