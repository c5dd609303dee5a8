"""Diffusion Transformer ``F(x, c_noise, y, w, text)`` (Peebles & Xie 2023, "Scalable Diffusion
Models with Transformers").

Patchify: the image (B, C, H, W) becomes (H/p)(W/p) tokens by a p x p convolution of stride p, plus
fixed 2-D sine-cosine position embeddings (their sec. 3.2). Each block is self-attention and an MLP,
both conditioned by adaLN-Zero on c = embedding of the noise level (+ class, + guidance scale):
an MLP of c gives shift, scale and gate per sub-layer, x + gate * f(LN(x) (1 + scale) + shift), with
the MLP zero-initialised so every block starts as the identity (their Fig. 3). With a text
encoder, a cross-attention to the caption's tokens follows the self-attention (zero-initialised
output, so also the identity at first). The final layer (adaLN, then a zero-initialised linear map
to p * p * C_out per token) and unpatchify give (B, C_out, H, W), exactly zero at initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConditionEmbedding, JSONConfig, zero_init
from .text import CrossAttention, TextConfig, TextEncoder

__all__ = ["DiTConfig", "DiT", "DiTBlock", "patchify", "unpatchify", "sincos_position_embedding"]


@dataclass(frozen=True)
class DiTConfig(JSONConfig):
    """``patch_size`` p divides ``resolution``; ``hidden`` width, ``depth`` blocks of ``num_heads``
    heads with MLPs of ``mlp_ratio`` x hidden; outputs ``out_channels`` (default ``in_channels``,
    doubled with ``learn_sigma``); ``num_classes`` / ``guidance_embedding`` / ``text`` (a
    :class:`~difflab.nets.text.TextConfig` dict) add the conditionings."""

    in_channels: int = 4
    resolution: int = 32
    patch_size: int = 2
    hidden: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    out_channels: int | None = None
    num_classes: int | None = None
    learn_sigma: bool = False
    guidance_embedding: bool = False
    text: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.resolution % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide the resolution {self.resolution}")
        if self.hidden % self.num_heads or self.hidden % 4:
            raise ValueError(f"hidden {self.hidden} must divide into {self.num_heads} heads and by 4")

    @property
    def output_channels(self) -> int:
        return (self.out_channels or self.in_channels) * (2 if self.learn_sigma else 1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p p C): the non-overlapping p x p patches, row by row."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, (H/p)(W/p), p p C) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h, w)


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings (grid^2, dim): half the channels encode the row, half the
    column, each as [sin(pos w_i), cos(pos w_i)] with w_i = 10000^(-i / (dim/4)) (Vaswani et al.
    2017, sec. 3.5, per axis, as MAE and DiT do)."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def axis(p):
        args = p.reshape(-1, 1) * freqs
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP (and zero-initialised cross-attention to text)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
            self.cross = CrossAttention(hidden, context_dim, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(hidden, 6 * hidden)))

    def forward(self, x, c, context=None, pad=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        b, n, d = x.shape
        qkv = self.qkv(_modulate(self.norm1(x), shift1, scale1)).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + gate1 * self.attn_out(h)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context, pad)
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """The Diffusion Transformer of Peebles & Xie (2023), conditioned by adaLN-Zero; see the module
    docstring."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        cfg = self.config = config
        p, d = cfg.patch_size, cfg.hidden
        self.patch = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        grid = cfg.resolution // p
        self.register_buffer("positions", sincos_position_embedding(d, grid), persistent=False)
        self.embed = ConditionEmbedding(256, d, cfg.num_classes, cfg.guidance_embedding)
        self.text = None if cfg.text is None else TextEncoder(TextConfig.from_dict(cfg.text))
        context_dim = None if self.text is None else self.text.config.dim
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, context_dim) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(d, 2 * d)))
        self.out = zero_init(nn.Linear(d, p * p * cfg.output_channels))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None, w=None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.resolution, cfg.resolution):
            raise ValueError(f"expected images of shape (B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}), "
                             f"got {tuple(x.shape)}")
        if (text is None) != (self.text is None):
            raise ValueError("a text-conditional network needs text tokens, and only such a network takes them")
        c = self.embed(c_noise, y, x.shape[0], w)
        h = self.patch(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)
        context, pad = self.text(text) if self.text is not None else (None, None)
        for block in self.blocks:
            h = block(h, c, context, pad)
        shift, scale = self.ada_out(c)[:, None].chunk(2, dim=-1)
        h = self.out(_modulate(self.norm_out(h), shift, scale))
        return unpatchify(h, cfg.patch_size, cfg.output_channels, cfg.resolution, cfg.resolution)

