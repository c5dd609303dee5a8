"""Text conditioning: a word tokenizer over a fixed vocabulary, a small transformer text encoder
trained from scratch with the denoiser, and cross-attention from image features to its tokens
(the conditioning of GLIDE, Nichol et al. 2022, and latent diffusion, Rombach et al. 2022, sec. 3.3,
at toy scale).

A caption becomes ``[BOS] w_1 ... w_k [PAD] ...`` (ids: PAD 0, BOS 1, words from 2). The BOS token
is always there, so the empty caption ``[BOS]`` is a real sequence to attend to: it is the
unconditional input of classifier-free guidance (caption dropout trains it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import JSONConfig, zero_init

__all__ = ["PAD", "BOS", "TextConfig", "Tokenizer", "TextEncoder", "CrossAttention", "empty_caption"]

PAD, BOS = 0, 1


@dataclass(frozen=True)
class TextConfig(JSONConfig):
    """The vocabulary (its words, in id order from 2), the longest caption in words, and the
    encoder's width, depth and heads."""

    vocab: tuple[str, ...] = ()
    max_words: int = 8
    dim: int = 128
    depth: int = 2
    num_heads: int = 4

    def __post_init__(self):
        super().__post_init__()
        if not self.vocab or len(set(self.vocab)) != len(self.vocab):
            raise ValueError("a text config needs a vocabulary of distinct words")
        if self.dim % self.num_heads:
            raise ValueError(f"text dim {self.dim} cannot be split into {self.num_heads} heads")


class Tokenizer:
    """Captions <-> token ids over ``config.vocab`` (lower-case words separated by spaces)."""

    def __init__(self, config: TextConfig):
        self.config = config
        self.ids = {w: i + 2 for i, w in enumerate(config.vocab)}

    def encode(self, captions) -> torch.Tensor:
        """(B, 1 + max_words) ids of one caption or a list of them; ValueError naming an unknown
        word or a caption that is too long."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        out = torch.full((len(captions), 1 + self.config.max_words), PAD, dtype=torch.long)
        out[:, 0] = BOS
        for row, caption in enumerate(captions):
            words = caption.lower().split()
            if len(words) > self.config.max_words:
                raise ValueError(f"caption {caption!r} has {len(words)} words; at most {self.config.max_words}")
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                raise ValueError(f"unknown word {unknown[0]!r} in {caption!r}; the vocabulary is: "
                                 + ", ".join(self.config.vocab))
            out[row, 1:1 + len(words)] = torch.tensor([self.ids[w] for w in words], dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        words = {i: w for w, i in self.ids.items()}
        return [" ".join(words[int(i)] for i in row if int(i) > BOS) for row in torch.as_tensor(ids)]


def empty_caption(tokens: torch.Tensor) -> torch.Tensor:
    """The empty caption ([BOS] and padding) in ``tokens``' shape: the unconditional input."""
    empty = torch.zeros_like(tokens)
    empty[:, 0] = BOS
    return empty


class TextEncoder(nn.Module):
    """Token and position embeddings, ``depth`` pre-norm transformer encoder layers (Vaswani et al.
    2017) over the non-padding tokens, a final LayerNorm: ``(B, L)`` ids -> ``(B, L, dim)`` features
    and the padding mask ``(B, L)`` (True where padded)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(len(config.vocab) + 2, config.dim)
        self.positions = nn.Parameter(torch.zeros(1 + config.max_words, config.dim))
        nn.init.normal_(self.positions, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.dim, config.num_heads, 4 * config.dim, dropout=0.0, batch_first=True,
                                       norm_first=True, activation="gelu")
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids.to(self.tokens.weight.device).long()
        pad = ids == PAD
        h = self.tokens(ids) + self.positions[: ids.shape[1]]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad)
        return self.norm(h), pad


class CrossAttention(nn.Module):
    """``proj(MultiHead(q(x), k(context), v(context)))`` with padded context tokens masked out;
    ``proj`` zero-initialised, so a residual cross-attention starts as the identity."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{dim} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = zero_init(nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim), context (B, L, context_dim), pad (B, L) -> (B, N, dim)."""
        b, n, d = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, d // heads).transpose(1, 2)
        k, v = self.kv(context.to(x.dtype)).reshape(b, -1, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        return self.proj(h.transpose(1, 2).reshape(b, n, d))
