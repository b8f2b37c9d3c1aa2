"""A small Vision Transformer on the digits task of :mod:`hwsearch.zoo2d`, defined here (no
timm/torchvision) and trained on shipped data; trained weights are cached like the reference
model's (``$HWSEARCH_CACHE``).

Attention is written out with separate ``q``/``k``/``v``/``out`` :class:`~torch.nn.Linear`
layers around :func:`torch.nn.functional.scaled_dot_product_attention`, so that each projection
is a layer of its own (heads can be pruned per projection).

``--model hwsearch.zoo_vit:vit_digits --data hwsearch.zoo2d:digits_data`` names it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsearch.core.errors import ModelError
from hwsearch.zoo import trained_and_cached
from hwsearch.zoo2d import digits_data

__all__ = ["Attention", "EncoderBlock", "ViTDigits", "vit_digits", "VIT_DIGITS"]


VIT_DIGITS = ("hwsearch.zoo_vit:vit_digits", "hwsearch.zoo2d:digits_data")
_REVISION = "vit-digits-v1"  # bump when the architecture or training recipe changes


class Attention(nn.Module):
    """Multi-head self-attention over (batch, tokens, dim) with separate q/k/v projections:
    ``heads`` heads of ``dim // heads`` each, then an output projection back to ``dim``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(f"attention width {dim} is not a multiple of heads={heads}; choose heads dividing it")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(h: torch.Tensor) -> torch.Tensor:  # (b, t, heads·hd) → (b, heads, t, hd)
            return h.reshape(b, t, self.heads, -1).transpose(1, 2)

        # widths from the projections, not from x: with heads pruned, q/k/v are narrower than x
        h = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(h.transpose(1, 2).reshape(b, t, -1))


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: x + attention(LN(x)), then x + MLP(LN(x)) with a
    GELU between ``fc1`` (dim → mlp) and ``fc2`` (mlp → dim)."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTDigits(nn.Module):
    """A ViT for 3×32×32 inputs: a ``patch``×``patch`` strided conv embeds 64 patches (patch 4)
    into ``dim`` channels, a learned position embedding is added, ``depth`` encoder blocks
    follow, then a final LayerNorm, mean pooling over the tokens and a linear classifier —
    ``6 * depth + 2`` prunable conv/linear layers (20 with the defaults)."""

    def __init__(self, dim: int = 64, depth: int = 3, heads: int = 4, mlp: int = 128, patch: int = 4,
                 size: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (b, tokens, dim)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def vit_digits(dim: int = 64, depth: int = 3, epochs: int = 30, *,
               trained: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The ViT trained on :func:`hwsearch.zoo2d.digits_data` and cached (validation accuracy
    0.971; the first time it trains for 66 s on the shared 2-core machine). ``trained=False``
    returns the randomly initialised net (seed 0) without training or touching the cache."""
    data = digits_data()
    torch.manual_seed(0)
    model = ViTDigits(dim=dim, depth=depth)
    if not trained:
        return model.eval(), data.example_input
    model = trained_and_cached(model, data, stem=f"vit_digits-d{dim}-l{depth}",
                               tag=f"{_REVISION}-d{dim}-l{depth}-e{epochs}-{torch.__version__}",
                               what="ViT digits model", epochs=epochs, lr=2e-3)
    return model, data.example_input
