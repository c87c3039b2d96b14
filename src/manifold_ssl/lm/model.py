"""A small causal transformer language model (GPT-2 layout, nanoGPT-sized).

Pre-norm blocks of causal self-attention (``F.scaled_dot_product_attention`` with
``is_causal=True``) and a 4× GELU MLP, learned positions, and an LM head tied to the token
embedding, so that the head's rows are the token vectors the matrix cross-entropy of
Matrix-SSL App. B works on. Written here rather than taken from a library: the experiment needs
a character-level model of a few hundred thousand parameters whose head is the embedding, and
the kept libraries ship word-piece models of millions of parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPT"]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (y.view(b, t, self.heads, c // self.heads).transpose(1, 2) for y in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """``forward(ids (B, T)) -> logits (B, T, V)``; ``head_embeddings`` is the (V, width) LM
    head (the token embedding, tied)."""

    def __init__(
        self, vocab: int, context: int = 128, width: int = 32, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.context = context
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def head_embeddings(self) -> torch.Tensor:
        return self.tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens exceeds the context of {self.context}")
        x = self.tokens(ids) + self.positions(torch.arange(t, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tokens.weight.T

    @torch.no_grad()
    def greedy(self, ids: list[int], stop: int, max_new: int) -> list[int]:
        """Greedy continuation of ``ids`` until the token ``stop`` or ``max_new`` tokens."""
        out: list[int] = []
        seq = list(ids)
        for _ in range(max_new):
            window = torch.tensor([seq[-self.context :]])
            nxt = int(self(window)[0, -1].argmax())
            if nxt == stop:
                break
            out.append(nxt)
            seq.append(nxt)
        return out
