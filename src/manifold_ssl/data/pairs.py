"""Image–caption pairs for multimodal pretraining: batches of ``(views, tokens)``.

:class:`CaptionBatches` wraps the image batches of :mod:`manifold_ssl.data.stream` (memory or
streamed: same permutation, same views, same resume) and adds, for this process's images of each
step, one tokenised caption. Which caption variant (template, or line of a ``.txt``) each image
gets is drawn for the global batch from a generator seeded by (seed, epoch, step), so DDP ranks
take their slice of one draw and a resumed run draws what the uninterrupted one would have:
nothing to checkpoint beyond the image batches' state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .captions import Captions, caption_choices
from .stream import Layout, TrainBatches, derived_generator

__all__ = ["CaptionBatches"]

_CAPTIONS = 2  # the stream of caption choices (0 and 1 are the stream loader's)

Tokenizer = Callable[[list[str]], torch.Tensor]  # captions -> int64 (n, context_length)


class CaptionBatches:
    """``next_views()`` → ``(views (b, K, C, s, s), tokens (b, L))``; see the module doc."""

    def __init__(
        self, images: TrainBatches, captions: Captions, tokenize: Tokenizer, layout: Layout
    ) -> None:
        if len(captions) != images.num_images:
            raise ValueError(
                f"{len(captions)} captions for {images.num_images} training images: every "
                "image needs its caption"
            )
        self.images, self.captions, self.tokenize = images, captions, tokenize
        self.num_images, self.channels = images.num_images, images.channels
        self.seed, self.batch, self.device = layout.seed, layout.batch, layout.device
        self.lo, self.hi = layout.lo, layout.hi
        self.epoch = self.k = 0
        self.last_index = torch.empty(0, dtype=torch.long)
        self.index_on_device = self.last_index
        self.last_captions: list[str] = []

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        self.images.start_epoch(epoch, step_in_epoch)
        self.epoch, self.k = epoch, step_in_epoch

    def next_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.images.next_views()
        assert isinstance(views, torch.Tensor)
        self.last_index = self.images.last_index
        self.index_on_device = self.images.index_on_device
        gen = derived_generator(self.seed, _CAPTIONS, self.epoch, self.k)
        choice = caption_choices(self.batch, gen)[self.lo : self.hi]
        self.last_captions = self.captions.text(self.last_index.tolist(), choice.tolist())
        self.k += 1
        return views, self.tokenize(self.last_captions).to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        return self.images.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images.load_state_dict(state)
