"""The text tower and tokenizer of multimodal pretraining: OpenCLIP's, at any width and depth.

``open_clip.transformer.TextTransformer`` (token and position embeddings, a causal pre-LN
transformer, the end-of-text token's state projected to the embedding dimension) and
``open_clip.tokenizer.SimpleTokenizer`` (CLIP's byte-pair encoding, vocabulary shipped inside
the package, no download). Taken from open_clip rather than written here so that a text tower
trained in manifold-ssl is the module OpenCLIP users know, with their weights' layout. Needs
``pip install manifold-ssl[multimodal]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["build_text_tower", "build_tokenizer"]


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise ImportError(
            "multimodal methods need open_clip: pip install 'manifold-ssl[multimodal]'"
        ) from None
    return open_clip


def build_text_tower(
    output_dim: int, width: int, layers: int, heads: int, context_length: int
) -> nn.Module:
    """OpenCLIP's text transformer mapping tokens (B, ``context_length``) to (B, ``output_dim``)
    (CLIP's vocabulary of 49,408 byte-pair tokens, pooled at the end-of-text token)."""
    if width % heads:
        raise ValueError(f"text.width {width} must be divisible by text.heads {heads}")
    text_transformer = _open_clip().transformer.TextTransformer
    return text_transformer(
        context_length=context_length,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=output_dim,
    )


def build_tokenizer(context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """CLIP's tokenizer: captions → int64 (n, ``context_length``), start and end tokens added,
    longer captions truncated (keeping the end token), shorter ones zero-padded."""
    return _open_clip().tokenizer.SimpleTokenizer(context_length=context_length)
